/*
 * log_bridge.c — the sink for everything WAMR prints.
 *
 * WAMR's platform layer prints through BH_VPRINTF when it is defined; this
 * project defines BH_VPRINTF=wamr_coro_vprintf in CFLAGS (.cargo/config.toml),
 * so WAMR's own messages ("thread manager error: ...", LOG_ERROR, ...) arrive
 * here instead of on stdout. WAMR writes one line in several calls (prefix,
 * message, "\n"), so this file buffers per OS thread until a newline and then
 * hands the whole line to Rust (wamr_coro_log_line, src/wamr/log.rs), which
 * emits it through `tracing` or drops it. No call yields between the pieces
 * of a line, so a per-thread buffer is enough even under `may` coroutines.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Implemented in Rust (src/wamr/log.rs). */
extern void wamr_coro_log_line(const char *line, size_t len);

#define LINE_CAP 1024
static _Thread_local char line_buf[LINE_CAP];
static _Thread_local size_t line_len;

static void flush_line(void) {
    if (line_len > 0) wamr_coro_log_line(line_buf, line_len);
    line_len = 0;
}

int wamr_coro_vprintf(const char *format, va_list ap) {
    char tmp[LINE_CAP];
    int n = vsnprintf(tmp, sizeof tmp, format, ap);
    if (n < 0) return n;
    size_t len = (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1;
    for (size_t i = 0; i < len; i++) {
        if (tmp[i] == '\n') {
            flush_line();
        } else if (line_len < LINE_CAP - 1) {
            line_buf[line_len++] = tmp[i];
        } else {
            flush_line(); /* overlong line: emit in pieces */
            line_buf[line_len++] = tmp[i];
        }
    }
    return n;
}

/* Referenced from Rust so that the linker keeps this object (libiwasm.a,
 * which calls wamr_coro_vprintf, comes later on the link line). Returns 1. */
int wamr_coro_log_bridge_present(void) { return 1; }
