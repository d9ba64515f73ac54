/* Contract violation: on_recv takes two parameters instead of three. */
#include "wamr_coro.h"
WCORO_EXPORT("on_recv") int32_t on_recv(int32_t conn, int32_t len) { return conn + len; }
