/* echo.c — echo guest in C. Direct mode calls on_recv; queue mode calls
 * `run`, which is the SDK's WCORO_QUEUE_LOOP over the same handlers. */
#include "wamr_coro.h"

static uint8_t rx[WCORO_DEFAULT_CHUNK_SIZE];   /* direct mode's buffer */
static uint8_t qbuf[WCORO_DEFAULT_CHUNK_SIZE]; /* queue mode's buffer  */

WCORO_EXPORT("alloc") int32_t guest_alloc(int32_t size) {
    return size <= (int32_t)sizeof rx ? (int32_t)(uintptr_t)rx : 0;
}

static int32_t on_open(int32_t conn) { (void)conn; return 0; }
static void on_close(int32_t conn) { (void)conn; }

WCORO_EXPORT("on_recv") int32_t on_recv(int32_t conn, const uint8_t *p, int32_t n) {
    return wcoro_send(conn, p, n) < 0 ? -1 : 0;
}

WCORO_EXPORT("run") int32_t run(void) {
    WCORO_QUEUE_LOOP(qbuf, sizeof qbuf, on_open, on_recv, on_close);
}
