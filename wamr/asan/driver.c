/*
 * driver.c — loads (and optionally instantiates and runs) one module with
 * WAMR built under AddressSanitizer; used by wamr/asan/run.sh to check the
 * CVE regression modules in tests/cve/ against the patched and unpatched
 * WAMR trees. Prints "loaded", "load failed: <WAMR's error>", or the result
 * of calling the export named on the command line.
 *
 *   driver MODULE.wasm [EXPORT]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "wasm_export.h"

int wamr_coro_vprintf(const char *format, va_list ap) { return vfprintf(stderr, format, ap); }

static unsigned char *read_file(const char *path, uint32_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc(n > 0 ? (size_t)n : 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) { free(buf); buf = NULL; }
    fclose(f);
    *size = (uint32_t)n;
    return buf;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s MODULE.wasm [EXPORT]\n", argv[0]); return 2; }
    uint32_t size;
    unsigned char *bytes = read_file(argv[1], &size);
    if (!bytes) { perror(argv[1]); return 2; }
    RuntimeInitArgs init;
    memset(&init, 0, sizeof init);
    init.mem_alloc_type = Alloc_With_System_Allocator;
    if (!wasm_runtime_full_init(&init)) return 2;
    char err[256] = {0};
    wasm_module_t m = wasm_runtime_load(bytes, size, err, sizeof err);
    if (!m) { printf("load failed: %s\n", err); return 0; }
    printf("loaded\n");
    if (argc > 2) {
        wasm_module_inst_t inst = wasm_runtime_instantiate(m, 1 << 20, 0, err, sizeof err);
        if (!inst) { printf("instantiate failed: %s\n", err); return 0; }
        wasm_exec_env_t env = wasm_runtime_create_exec_env(inst, 1 << 20);
        wasm_function_inst_t f = wasm_runtime_lookup_function(inst, argv[2]);
        if (!f) { printf("no export %s\n", argv[2]); return 0; }
        uint32_t cells[4] = {0};
        if (wasm_runtime_call_wasm(env, f, 0, cells))
            printf("result %d\n", (int)cells[0]);
        else
            printf("trap: %s\n", wasm_runtime_get_exception(inst));
        wasm_runtime_destroy_exec_env(env);
        wasm_runtime_deinstantiate(inst);
    }
    wasm_runtime_unload(m);
    wasm_runtime_destroy();
    free(bytes);
    return 0;
}
