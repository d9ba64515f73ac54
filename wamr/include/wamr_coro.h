/*
 * wamr_coro.h — the wamr-coro guest SDK (guest ABI version 1).
 *
 * This header is the one source of the ABI's constants: the host's build.rs
 * runs bindgen on it, so the Rust host and every C guest read the same
 * numbers. The contract itself is docs/guest-abi.md; this file states it in C.
 *
 * Guests include it and compile to wasm32 (see guests/build.sh):
 *
 *     #include "wamr_coro.h"
 *     WCORO_EXPORT("on_recv") int32_t on_recv(int32_t conn, const uint8_t *p, int32_t n) {
 *         wcoro_send(conn, p, n);           // echo
 *         return 0;
 *     }
 *
 * Everything is freestanding: no libc is needed (the SDK uses only
 * <stdint.h>/<stddef.h>, which clang provides for wasm32 without a sysroot).
 */
#ifndef WAMR_CORO_H
#define WAMR_CORO_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- ABI version -------------------------------------------------------- */
#define WCORO_ABI_VERSION 1

/* ---- Event kinds, written by wait_msg into wcoro_event.kind ------------- */
#define WCORO_EVENT_DATA 0  /* payload bytes for conn (return value = count) */
#define WCORO_EVENT_OPEN 1  /* a new connection                             */
#define WCORO_EVENT_CLOSE 2 /* conn is gone; called once per opened conn    */

/* ---- Errors: negative returns of the imports ---------------------------- */
#define WCORO_ERR_UNKNOWN_CONN (-1)      /* never existed or already closed */
#define WCORO_ERR_BAD_POINTER (-2)       /* range not inside linear memory  */
#define WCORO_ERR_WOULD_EXCEED_LIMIT (-3) /* per-connection output limit    */
#define WCORO_ERR_SHUTDOWN (-4)          /* server stops; wait_msg's stop   */
#define WCORO_ERR_NOT_IN_THIS_MODE (-5)  /* wait_msg called in direct mode  */

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
/* Default limits (all configurable on the host; see the server's Limits). */
#define WCORO_DEFAULT_CHUNK_SIZE 65536

#if defined(__wasm__)

#define WCORO_IMPORT(name) \
    __attribute__((import_module("env"), import_name(name)))
#define WCORO_EXPORT(name) __attribute__((export_name(name)))

/* Queue len bytes at ptr for conn. Returns len, or a negative WCORO_ERR_*. */
WCORO_IMPORT("send")
int32_t wcoro_send(int32_t conn, const void *ptr, int32_t len);

/* Close conn after bytes already sent are flushed. 0, or negative error. */
WCORO_IMPORT("close") int32_t wcoro_close(int32_t conn);

/* Queue mode only: block until the next event (see docs/guest-abi.md). */
WCORO_IMPORT("wait_msg")
int32_t wcoro_wait_msg(void *buf, int32_t cap, wcoro_event *info);

/* Log UTF-8 text at WCORO_LOG_* level. */
WCORO_IMPORT("log") void wcoro_log(int32_t level, const char *ptr, int32_t len);

/* Monotonic milliseconds since the server started. */
WCORO_IMPORT("now_ms") int64_t wcoro_now_ms(void);

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
 */
#define WCORO_QUEUE_LOOP(buf, cap, on_open_fn, on_recv_fn, on_close_fn)      \
    do {                                                                     \
        wcoro_event ev_;                                                     \
        for (;;) {                                                           \
            int32_t n_ = wcoro_wait_msg((buf), (int32_t)(cap), &ev_);        \
            if (n_ == WCORO_ERR_SHUTDOWN) return 0;                          \
            if (n_ < 0) return n_;                                           \
            switch (ev_.kind) {                                              \
            case WCORO_EVENT_OPEN:                                           \
                if ((on_open_fn)(ev_.conn) < 0) wcoro_close(ev_.conn);       \
                break;                                                       \
            case WCORO_EVENT_DATA:                                           \
                if ((on_recv_fn)(ev_.conn, (buf), n_) < 0)                   \
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
