/* remember.c — the isolation tests' probe in C (guests/remember.wat is the
 * same in WAT): a careless guest that keeps what one client sent and tells
 * the next. Compiled by clang, its state sits where a C guest's does. With
 * wasm-ld's default layout (guests/build.sh) none of it is page-aligned:
 * .data at 1024, .bss (the SDK's allocator arena among it) up to 66664, the
 * shadow stack above that, growing down from 328816 (__heap_base); and it
 * grows pages itself.
 *
 * Every on_recv answers with 8 bytes and then remembers the message:
 *   byte 0  messages this env has handled (.bss)
 *   byte 1  memory.size in pages
 *   byte 2  the first byte the last message left on the shadow stack
 *   byte 3  the first byte the last message left in the last grown page
 *   4..8    the first 4 bytes of the stored message ("none" at first, .data)
 * A message starting with 'G' first grows memory by one page and writes the
 * message there too. Built for direct mode, with both env sources. */
#include "wamr_coro.h"

WCORO_BUMP_ALLOC(WCORO_DEFAULT_CHUNK_SIZE + 16);

static uint8_t count;                /* .bss */
static uint8_t stored[64] = "none";  /* .data */
static uint8_t *grown;               /* .bss: the page the last 'G' grew */

/* A buffer on the shadow stack (volatile keeps it in linear memory, at the
 * same place each call): reports what the previous call left at its start,
 * then leaves this message's first byte there. Reading it before writing is
 * the bug this probe stands for. */
__attribute__((noinline)) static uint8_t stack_leftover(uint8_t first) {
    volatile uint8_t frame[256];
    uint8_t was = frame[0];
    frame[0] = first;
    return was;
}

wcoro_on_recv_fn on_recv;
WCORO_EXPORT("on_recv") int32_t on_recv(int32_t conn, const uint8_t *p, int32_t n) {
    uint8_t out[8];
    out[0] = count;
    out[1] = (uint8_t)__builtin_wasm_memory_size(0);
    out[2] = stack_leftover(n > 0 ? p[0] : 0);
    out[3] = grown ? grown[0] : 0;
    for (int i = 0; i < 4; i++) out[4 + i] = stored[i];
    if (wcoro_send(conn, out, sizeof out) < 0) return -1;
    int32_t keep = n < (int32_t)sizeof stored ? n : (int32_t)sizeof stored;
    for (int32_t i = 0; i < keep; i++) stored[i] = p[i];
    count++;
    if (n > 0 && p[0] == 'G') {
        int32_t page = __builtin_wasm_memory_grow(0, 1);
        if (page >= 0) {
            grown = (uint8_t *)(uintptr_t)((uint32_t)page * 65536u);
            for (int32_t i = 0; i < keep; i++) grown[i] = p[i];
        }
    }
    return 0;
}
