/* Contract violation for spawned envs: built without exporting __heap_base
 * and __data_end (guests/build.sh links files named bad_no_heap_base* so). */
#include "wamr_coro.h"
static uint8_t rx[1024];
WCORO_EXPORT("alloc") int32_t guest_alloc(int32_t size) {
    return size <= (int32_t)sizeof rx ? (int32_t)(uintptr_t)rx : 0;
}
WCORO_EXPORT("on_recv") int32_t on_recv(int32_t conn, const uint8_t *p, int32_t n) {
    return wcoro_send(conn, p, n);
}
