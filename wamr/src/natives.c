/*
 * natives.c — host natives written in C, for C (and any) guests.
 *
 * Module "wcoro_c":
 *   checksum(ptr, len) -> i32   FNV-1a of guest bytes; -2 on a bad range.
 *   counter_add(key, delta) -> i64
 *                               a process-wide counter table held by the host
 *                               (64 keys, key taken modulo 64), returns the
 *                               new value. Atomic, so concurrent guests agree.
 *
 * Registered by wcoro_register_c_natives(), which the Rust side calls from
 * wamr_coro::natives::register_c_natives().
 */
#include "wamr_coro.h"
#include "wamr_coro_host.h"

#include <stdatomic.h>

static int checksum(wcoro_caller *caller, const uint64_t *args,
                    uint64_t *result, void *attachment) {
    (void)attachment;
    uint32_t ptr = (uint32_t)args[0];
    int32_t len = (int32_t)args[1];
    if (len < 0) {
        *result = (uint32_t)WCORO_ERR_BAD_POINTER;
        return 0;
    }
    const uint8_t *p = wcoro_caller_mem(caller, ptr, (uint32_t)len);
    if (!p) {
        *result = (uint32_t)WCORO_ERR_BAD_POINTER;
        return 0;
    }
    uint32_t h = 2166136261u;
    for (int32_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 16777619u;
    }
    /* Keep the result non-negative so it never looks like an error. */
    *result = h & 0x7fffffffu;
    return 0;
}

static _Atomic int64_t counters[64];

static int counter_add(wcoro_caller *caller, const uint64_t *args,
                       uint64_t *result, void *attachment) {
    (void)caller;
    (void)attachment;
    uint32_t key = (uint32_t)args[0] % 64u;
    int64_t delta = (int64_t)(int32_t)(uint32_t)args[1];
    int64_t now = atomic_fetch_add(&counters[key], delta) + delta;
    *result = (uint64_t)now;
    return 0;
}

int wcoro_register_c_natives(void) {
    if (wcoro_register_native("wcoro_c", "checksum", "(ii)i", checksum, 0) != 0)
        return -1;
    if (wcoro_register_native("wcoro_c", "counter_add", "(ii)I", counter_add,
                              0) != 0)
        return -1;
    return 0;
}
