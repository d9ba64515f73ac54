/* natives_demo.c — a C guest calling host natives written in C
 * (wamr/src/natives.c, import module "wcoro_c"). For each message it
 * replies "<checksum> <count>\n": the host-computed FNV-1a of the bytes and
 * the new value of host counter 7 after adding the message length. */
#include "wamr_coro.h"

__attribute__((import_module("wcoro_c"), import_name("checksum")))
int32_t host_checksum(const void *ptr, int32_t len);
__attribute__((import_module("wcoro_c"), import_name("counter_add")))
int64_t host_counter_add(int32_t key, int32_t delta);

static uint8_t rx[WCORO_DEFAULT_CHUNK_SIZE];

WCORO_EXPORT("alloc") int32_t guest_alloc(int32_t size) {
    return size <= (int32_t)sizeof rx ? (int32_t)(uintptr_t)rx : 0;
}

static int32_t put_u64(char *out, uint64_t v) {
    char tmp[24];
    int32_t n = 0, k = 0;
    do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (n) out[k++] = tmp[--n];
    return k;
}

WCORO_EXPORT("on_recv") int32_t on_recv(int32_t conn, const uint8_t *p, int32_t n) {
    char line[64];
    int32_t k = put_u64(line, (uint32_t)host_checksum(p, n));
    line[k++] = ' ';
    k += put_u64(line + k, (uint64_t)host_counter_add(7, n));
    line[k++] = '\n';
    return wcoro_send(conn, line, k) < 0 ? -1 : 0;
}
