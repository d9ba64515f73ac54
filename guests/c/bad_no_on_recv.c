/* Contract violation: no on_recv (and no run). */
#include "wamr_coro.h"
WCORO_EXPORT("on_open") int32_t on_open(int32_t conn) { (void)conn; return 0; }
