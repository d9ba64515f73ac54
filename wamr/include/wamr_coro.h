/*
 * wamr_coro.h — the wamr-coro guest SDK for C (guest ABI version 1.1).
 *
 * This header is the one source of the ABI's constants: the host's build.rs
 * runs bindgen on it, the Rust guest SDK (guest-sdk/) checks its constants
 * against it at build time, and C guests include it. The contract itself is
 * docs/guest-abi.md; this file states it in C.
 *
 * A complete direct-mode guest:
 *
 *     #include "wamr_coro.h"
 *     WCORO_DECLARE_ABI_VERSION();
 *     WCORO_EXPORT("on_recv") int32_t on_recv(int32_t conn, const uint8_t *p, int32_t n) {
 *         return wcoro_send(conn, p, n) < 0 ? -1 : 0;   // echo
 *     }
 *
 * Build (see guests/build.sh):
 *     clang --target=wasm32-unknown-unknown -O2 -nostdlib -ffreestanding \
 *           -mbulk-memory -Wl,--no-entry -Wl,--export=__heap_base \
 *           -Wl,--export=__data_end -I wamr/include -o guest.wasm guest.c
 *
 * Everything is freestanding: no libc is needed. The SDK uses only
 * <stdint.h>/<stddef.h>, which clang provides for wasm32 without a sysroot,
 * and offers the few helpers a guest without libc misses (wcoro_memcpy,
 * wcoro_memset, wcoro_strlen, a bump allocator for `alloc`).
 */
#ifndef WAMR_CORO_H
#define WAMR_CORO_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- ABI version -------------------------------------------------------- */
/* Encoded major << 8 | minor. The host accepts major 1, minor 0 or 1. */
#define WCORO_ABI_VERSION_MAJOR 1
#define WCORO_ABI_VERSION_MINOR 1
#define WCORO_ABI_VERSION 0x0101
/* The 8 bytes that start the record WCORO_DECLARE_ABI_VERSION exports. */
#define WCORO_ABI_MAGIC "wcoroabi"
#define WCORO_ABI_MAGIC_LEN 8

/* ---- Event kinds, written by wait_msg into wcoro_event.kind ------------- */
#define WCORO_EVENT_DATA 0  /* payload bytes for conn (return value = count) */
#define WCORO_EVENT_OPEN 1  /* a new connection                             */
#define WCORO_EVENT_CLOSE 2 /* conn is gone; called once per opened conn    */

/* ---- Errors: negative returns of the imports ---------------------------- */
#define WCORO_ERR_UNKNOWN_CONN (-1)      /* never existed or already closed */
#define WCORO_ERR_BAD_POINTER (-2)       /* range not inside linear memory  */
#define WCORO_ERR_WOULD_EXCEED_LIMIT (-3) /* per-connection output limit    */
#define WCORO_ERR_SHUTDOWN (-4)          /* server stops; wait_msg's stop   */
#define WCORO_ERR_NOT_IN_THIS_MODE (-5)  /* wait_msg outside a run loop     */

/* ---- Log levels for wcoro_log -------------------------------------------- */
#define WCORO_LOG_ERROR 0
#define WCORO_LOG_WARN 1
#define WCORO_LOG_INFO 2
#define WCORO_LOG_DEBUG 3

/* ---- The record wait_msg writes at `info` (8 bytes, little-endian) ------- */
typedef struct wcoro_event {
    int32_t conn;
    int32_t kind;
} wcoro_event;

/* Sizes the host relies on. */
#define WCORO_EVENT_SIZE 8
/* Default limits (all configurable on the host; see docs/guest-abi.md). */
#define WCORO_DEFAULT_CHUNK_SIZE 65536

/*
 * The record WCORO_DECLARE_ABI_VERSION exports as `wcoro_abi_version`.
 * clang and rustc export a static as an immutable i32 global holding its
 * *address*, so the host accepts either form: the global's value is the
 * version itself (WAT: `(global (export "wcoro_abi_version") i32
 * (i32.const 0x0101))`), or the address of this record in the module's
 * initial data, recognised by its magic (docs/guest-abi.md).
 */
typedef struct wcoro_abi_version_record {
    char magic[WCORO_ABI_MAGIC_LEN]; /* "wcoroabi", no NUL */
    int32_t version;                 /* WCORO_ABI_VERSION */
} wcoro_abi_version_record;

#if defined(__wasm__)

#define WCORO_IMPORT(name) \
    __attribute__((import_module("env"), import_name(name)))
#define WCORO_EXPORT(name) __attribute__((export_name(name)))

/*
 * WCORO_DECLARE_ABI_VERSION(): at file scope, exports `wcoro_abi_version`
 * (version 1.1) so the host can refuse this guest cleanly if it does not
 * speak that version. No linker flag needed: the `.export_name` directive
 * exports the data symbol.
 */
#define WCORO_DECLARE_ABI_VERSION()                                          \
    __attribute__((used)) const wcoro_abi_version_record wcoro_abi_version = \
        {{'w', 'c', 'o', 'r', 'o', 'a', 'b', 'i'}, WCORO_ABI_VERSION};       \
    __asm__(".export_name wcoro_abi_version, wcoro_abi_version")

/* ---- Imports the host provides (module "env") --------------------------- */

/* Queue len bytes at ptr for conn (copied before it returns). Returns len,
 * or WCORO_ERR_UNKNOWN_CONN / _BAD_POINTER / _WOULD_EXCEED_LIMIT, checked
 * in that order. Never blocks. */
WCORO_IMPORT("send")
int32_t wcoro_send(int32_t conn, const void *ptr, int32_t len);

/* Close conn after the bytes already sent are flushed. 0, or
 * WCORO_ERR_UNKNOWN_CONN (also after an earlier close). */
WCORO_IMPORT("close") int32_t wcoro_close(int32_t conn);

/* Queue mode only: block until the next event and write {conn, kind} at
 * info. DATA: copies at most cap bytes to buf and returns the count; OPEN and
 * CLOSE: returns 0. WCORO_ERR_SHUTDOWN: return from `run`.
 * WCORO_ERR_NOT_IN_THIS_MODE outside a queue guest's own `run` (direct mode,
 * or a handler the host's loop calls); WCORO_ERR_BAD_POINTER if buf/cap or
 * info is outside memory (no event is consumed). See docs/guest-abi.md. */
WCORO_IMPORT("wait_msg")
int32_t wcoro_wait_msg(void *buf, int32_t cap, wcoro_event *info);

/* Log UTF-8 text at a WCORO_LOG_* level. A bad pointer is ignored. */
WCORO_IMPORT("log") void wcoro_log(int32_t level, const char *ptr, int32_t len);

/* Monotonic milliseconds since the server started. */
WCORO_IMPORT("now_ms") int64_t wcoro_now_ms(void);

/* ---- Exports the guest provides ----------------------------------------
 *
 * Define them with WCORO_EXPORT("name"). The typedefs give their exact
 * signatures: `wcoro_on_recv_fn on_recv;` before the definition makes the
 * compiler check it. The host checks them again at start-up.
 *
 * memory                       always (the linker exports it)
 * int32_t on_recv(int32_t conn, const uint8_t *ptr, int32_t len)
 *     Required in direct mode, and in queue mode without `run`. Bytes
 *     received on conn; ptr..ptr+len is valid only during the call (copy what
 *     you keep). Return >= 0 to keep the connection, < 0 to close it.
 * int32_t on_open(int32_t conn)                                   optional
 *     A new connection. Return < 0 to refuse it (on_close is then not
 *     called for it, except by a guest's own `run` loop: see below).
 * void on_close(int32_t conn)                                     optional
 *     conn is gone (peer closed, guest closed, error, timeout, shutdown).
 *     Not called after a fault (trap or budget overrun) in that env.
 * int32_t run(void)                                               optional
 *     Queue mode: the guest's own loop over wcoro_wait_msg (see
 *     WCORO_QUEUE_LOOP). Return 0 on WCORO_ERR_SHUTDOWN; returning earlier
 *     is a fault. Without it the host runs the loop and calls the handlers.
 * int32_t alloc(int32_t size)                    optional (spawn: required)
 *     Called once per env, before any callback, with the chunk size: return
 *     the address of `size` bytes for the host's receive buffer, or 0 to fail
 *     env creation. Must lie below __heap_base (see WCORO_BUMP_ALLOC).
 * wcoro_abi_version (global)                                      optional
 *     WCORO_DECLARE_ABI_VERSION().
 * __heap_base, __data_end (globals)         --source spawn: required
 *     -Wl,--export=__heap_base -Wl,--export=__data_end
 */
typedef int32_t wcoro_on_recv_fn(int32_t conn, const uint8_t *ptr, int32_t len);
typedef int32_t wcoro_on_open_fn(int32_t conn);
typedef void wcoro_on_close_fn(int32_t conn);
typedef int32_t wcoro_run_fn(void);
typedef int32_t wcoro_alloc_fn(int32_t size);

/* ---- Freestanding helpers (no libc) ------------------------------------- */

/* Copies n bytes (non-overlapping). With -mbulk-memory this is one
 * memory.copy instruction; otherwise a byte loop. */
static inline void *wcoro_memcpy(void *dst, const void *src, size_t n) {
#if defined(__wasm_bulk_memory__)
    return __builtin_memcpy(dst, src, n);
#else
    uint8_t *d = (uint8_t *)dst;
    const uint8_t *s = (const uint8_t *)src;
    /* volatile keeps clang from turning the loop back into a memcpy call,
     * which has no definition without libc. */
    for (size_t i = 0; i < n; i++) ((volatile uint8_t *)d)[i] = s[i];
    return dst;
#endif
}

/* Sets n bytes to (uint8_t)c. memory.fill with -mbulk-memory. */
static inline void *wcoro_memset(void *dst, int c, size_t n) {
#if defined(__wasm_bulk_memory__)
    return __builtin_memset(dst, c, n);
#else
    for (size_t i = 0; i < n; i++) ((volatile uint8_t *)dst)[i] = (uint8_t)c;
    return dst;
#endif
}

/* Length of a NUL-terminated string. */
static inline size_t wcoro_strlen(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

/* Hands out the next 16-byte-aligned block of `size` bytes from
 * arena[0..cap], advancing *used; NULL when size < 0 or it does not fit. */
static inline void *wcoro_bump_alloc(uint8_t *arena, size_t cap, size_t *used, int32_t size) {
    if (size < 0) return NULL;
    size_t start = (*used + 15u) & ~(size_t)15u;
    if (start > cap || (size_t)size > cap - start) return NULL;
    *used = start + (size_t)size;
    return arena + start;
}

/*
 * WCORO_BUMP_ALLOC(bytes): at file scope, defines the `alloc` export over a
 * static arena of `bytes` bytes (it lies below __heap_base, as the host
 * needs). Each call returns a fresh block; 0 when the arena is exhausted.
 * Size it for the chunk size (WCORO_DEFAULT_CHUNK_SIZE) plus 16.
 */
#define WCORO_BUMP_ALLOC(size_)                                             \
    static struct {                                                         \
        size_t used; /* beside the first block: no page of its own */       \
        uint8_t bytes[(size_)] __attribute__((aligned(16)));                \
    } wcoro_arena_;                                                         \
    WCORO_EXPORT("alloc") int32_t wcoro_alloc_(int32_t size) {              \
        return (int32_t)(uintptr_t)wcoro_bump_alloc(wcoro_arena_.bytes,     \
            sizeof wcoro_arena_.bytes, &wcoro_arena_.used, size);           \
    }                                                                       \
    typedef int wcoro_bump_alloc_defined_

/* Log a NUL-terminated string. */
static inline void wcoro_log_str(int32_t level, const char *s) {
    int32_t n = 0;
    while (s[n]) n++;
    wcoro_log(level, s, n);
}

/* Send a NUL-terminated string. */
static inline int32_t wcoro_send_str(int32_t conn, const char *s) {
    int32_t n = 0;
    while (s[n]) n++;
    return wcoro_send(conn, s, n);
}

/*
 * WCORO_QUEUE_LOOP(buf, cap, on_open, on_recv, on_close): the body of a
 * queue-mode `run` export. It waits for events and dispatches them to the
 * guest's own handlers (the same ones direct mode calls), and returns 0 when
 * the host says SHUTDOWN. on_open's refusal (< 0) and on_recv's (< 0) close
 * the connection, as in direct mode. One difference: the host delivers a
 * CLOSE event for every OPEN it delivered, so this loop also calls on_close
 * for a connection its on_open refused; keep on_close harmless for unknown
 * connections, or omit `run` and let the host run the loop (which skips
 * on_close for refused connections, exactly as direct mode does).
 *
 *     static uint8_t rx[WCORO_DEFAULT_CHUNK_SIZE];
 *     WCORO_EXPORT("run") int32_t run(void) {
 *         WCORO_QUEUE_LOOP(rx, sizeof rx, on_open, on_recv, on_close);
 *     }
 *
 * `buf` and `cap` are evaluated once. `cap` must be between 1 and INT32_MAX:
 * a wait_msg with no room only peeks at the next event without taking it,
 * so the loop would be handed the same event for ever (and on_recv bytes it
 * never received). With any other `cap` the loop returns
 * WCORO_ERR_BAD_POINTER at once, which the host reports as the guest's
 * fault, before any event.
 */
#define WCORO_QUEUE_LOOP(buf, cap, on_open_fn, on_recv_fn, on_close_fn)      \
    do {                                                                     \
        uint8_t *const buf_ = (uint8_t *)(buf);                              \
        const int32_t cap_ = (int32_t)(cap);                                 \
        wcoro_event ev_;                                                     \
        if (cap_ <= 0) return WCORO_ERR_BAD_POINTER;                         \
        for (;;) {                                                           \
            int32_t n_ = wcoro_wait_msg(buf_, cap_, &ev_);                   \
            if (n_ == WCORO_ERR_SHUTDOWN) return 0;                          \
            if (n_ < 0) return n_;                                           \
            switch (ev_.kind) {                                              \
            case WCORO_EVENT_OPEN:                                           \
                if ((on_open_fn)(ev_.conn) < 0) wcoro_close(ev_.conn);       \
                break;                                                       \
            case WCORO_EVENT_DATA:                                           \
                if ((on_recv_fn)(ev_.conn, buf_, n_) < 0)                    \
                    wcoro_close(ev_.conn);                                   \
                break;                                                       \
            case WCORO_EVENT_CLOSE:                                          \
                (on_close_fn)(ev_.conn);                                     \
                break;                                                       \
            default:                                                         \
                break;                                                       \
            }                                                                \
        }                                                                    \
    } while (0)

#endif /* __wasm__ */

#ifdef __cplusplus
}
#endif

#endif /* WAMR_CORO_H */
