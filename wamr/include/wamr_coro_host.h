/*
 * wamr_coro_host.h — writing host natives (imports for guests) in C.
 *
 * C natives are registered through the same path as Rust ones
 * (wamr_coro::HostFunc): the Rust side implements every function declared
 * here. A native receives its arguments as 64-bit slots (an i32 in the low
 * half), writes its result (if any) to *result, and returns 0; a non-zero
 * return traps the calling guest with the message given to
 * wcoro_caller_trap() (or "C native failed").
 *
 * Guest memory is reached only through wcoro_caller_mem(), which checks that
 * ptr..ptr+len lies wholly inside the guest's linear memory and returns NULL
 * otherwise. The pointer is valid until the native returns.
 */
#ifndef WAMR_CORO_HOST_H
#define WAMR_CORO_HOST_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The calling guest, valid only during the native call. */
typedef struct wcoro_caller wcoro_caller;

/* A C native. args[i] holds parameter i; *result receives the return value. */
typedef int (*wcoro_native_fn)(wcoro_caller *caller, const uint64_t *args,
                               uint64_t *result, void *attachment);

/*
 * Register `module.name` with WAMR's signature letters for params and result
 * ("(ii)i", "(i)", "()I": i = i32, I = i64). Must happen before the modules
 * that import it are loaded. Returns 0, or -1 (bad signature, duplicate name,
 * runtime not initialised); the reason is logged.
 */
int wcoro_register_native(const char *module, const char *name,
                          const char *signature, wcoro_native_fn fn,
                          void *attachment);

/* Checked view of guest memory [ptr, ptr+len): NULL when out of bounds. */
uint8_t *wcoro_caller_mem(wcoro_caller *caller, uint32_t ptr, uint32_t len);

/* Set the trap message for a native that returns non-zero. */
void wcoro_caller_trap(wcoro_caller *caller, const char *message);

/* Registers the natives in wamr/src/natives.c (module "wcoro_c"). */
int wcoro_register_c_natives(void);

#ifdef __cplusplus
}
#endif

#endif /* WAMR_CORO_HOST_H */
