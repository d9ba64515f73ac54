/* echo.c — echo guest in C. Direct mode calls on_recv; queue mode calls
 * `run`, which is the SDK's WCORO_QUEUE_LOOP over the same handlers. It
 * declares its ABI version and takes its receive buffer from the SDK's bump
 * allocator. */
#include "wamr_coro.h"

WCORO_DECLARE_ABI_VERSION();
WCORO_BUMP_ALLOC(WCORO_DEFAULT_CHUNK_SIZE + 16); /* direct mode's buffer */

static uint8_t qbuf[WCORO_DEFAULT_CHUNK_SIZE]; /* queue mode's buffer  */

static wcoro_on_open_fn on_open;
static int32_t on_open(int32_t conn) { (void)conn; return 0; }
static wcoro_on_close_fn on_close;
static void on_close(int32_t conn) { (void)conn; }

wcoro_on_recv_fn on_recv;
WCORO_EXPORT("on_recv") int32_t on_recv(int32_t conn, const uint8_t *p, int32_t n) {
    return wcoro_send(conn, p, n) < 0 ? -1 : 0;
}

WCORO_EXPORT("run") int32_t run(void) {
    WCORO_QUEUE_LOOP(qbuf, sizeof qbuf, on_open, on_recv, on_close);
}
