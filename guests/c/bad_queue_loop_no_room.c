/* Contract violation: a queue-mode run loop given no room for events.
 * wait_msg with a zero-length buffer only peeks, so WCORO_QUEUE_LOOP used to
 * be handed the same event for ever (spinning until the call budget, or for
 * good without one); it now returns WCORO_ERR_BAD_POINTER at once. */
#include "wamr_coro.h"

WCORO_BUMP_ALLOC(WCORO_DEFAULT_CHUNK_SIZE + 16); /* direct mode's buffer */

static uint8_t qbuf[16];
static volatile int32_t room = 0; /* a size the compiler cannot see */

static int32_t on_open(int32_t conn) { (void)conn; return 0; }
static void on_close(int32_t conn) { (void)conn; }

wcoro_on_recv_fn on_recv;
WCORO_EXPORT("on_recv") int32_t on_recv(int32_t conn, const uint8_t *p, int32_t n) {
    return wcoro_send(conn, p, n) < 0 ? -1 : 0;
}

WCORO_EXPORT("run") int32_t run(void) {
    WCORO_QUEUE_LOOP(qbuf, room, on_open, on_recv, on_close);
}
