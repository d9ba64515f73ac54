/* http.c — the HTTP/1.1 responder in C (the same behaviour as
 * guests/http.wat): answers every request head with a fixed 200, keeps the
 * connection alive, handles pipelined and split requests. Per-connection
 * parse state lives in a table indexed by conn, so one instance can serve
 * many connections (queue mode, where the host runs the loop since there is
 * no `run` export) or one (direct mode). */
#include "wamr_coro.h"

#define SLOTS 16384
static struct { int32_t conn; int32_t matched; } state[SLOTS];
static uint8_t rx[WCORO_DEFAULT_CHUNK_SIZE];
static const char response[] =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n\r\n"
    "Hello from wamr-coro\n";

WCORO_EXPORT("alloc") int32_t guest_alloc(int32_t size) {
    return size <= (int32_t)sizeof rx ? (int32_t)(uintptr_t)rx : 0;
}

WCORO_EXPORT("on_open") int32_t on_open(int32_t conn) {
    state[conn & (SLOTS - 1)].conn = conn;
    state[conn & (SLOTS - 1)].matched = 0;
    return 0;
}

WCORO_EXPORT("on_close") void on_close(int32_t conn) {
    if (state[conn & (SLOTS - 1)].conn == conn) state[conn & (SLOTS - 1)].conn = 0;
}

WCORO_EXPORT("on_recv") int32_t on_recv(int32_t conn, const uint8_t *p, int32_t n) {
    int32_t s = conn & (SLOTS - 1);
    int32_t m = state[s].conn == conn ? state[s].matched : 0;
    for (int32_t i = 0; i < n; i++) {
        uint8_t want = (m & 1) ? '\n' : '\r';
        if (p[i] == want) m++;
        else m = p[i] == '\r';
        if (m == 4) {
            if (wcoro_send(conn, response, (int32_t)sizeof response - 1) < 0) return -1;
            m = 0;
        }
    }
    state[s].conn = conn;
    state[s].matched = m;
    return 0;
}
