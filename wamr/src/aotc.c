/*
 * wamr-coro-aotc: the AOT compiler driver `wamr-coro compile` runs.
 *
 * A separate executable, not part of the crate: WAMR's compiler
 * (core/iwasm/compilation, WASM_ENABLE_WAMR_COMPILER=1) is built with defines
 * that change WAMR's internal struct layouts, so it cannot share a binary
 * with the runtime build (the binary links exactly one WAMR). build.rs
 * compiles this file, a compiler-configured copy of WAMR and links them
 * against LLVM; the wamr-coro binary embeds the result (src/wamr/aot.rs).
 *
 *   wamr-coro-aotc IN.wasm OUT.aot [--cpu=NAME] [--arch=NAME]
 *                  [--emit-section=NAME]...
 *
 * The options are fixed to what the runtime build needs (wamr/config.rs):
 * software bound checks and native stack bound checks on (the runtime has no
 * hardware bound checks; the stack check is what makes deep recursion a
 * clean trap on a coroutine stack), bulk memory, reference types, thread
 * manager (shared memory atomics; with wamr/patches/0200 also the terminate
 * check in loops of every module, which the host's time budget needs), no
 * SIMD. Without --cpu the code is for
 * the host CPU (its name and features, as LLVM detects them).
 *
 * Exit status 0 on success; otherwise 1 with one line on stderr.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wasm_export.h"
#include "aot_export.h"

#define MAX_SECTIONS 16

static int
fail(const char *what, const char *detail)
{
    fprintf(stderr, "wamr-coro-aotc: %s%s%s\n", what, detail ? ": " : "",
            detail ? detail : "");
    return 1;
}

static unsigned char *
read_file(const char *path, unsigned *size)
{
    FILE *f = fopen(path, "rb");
    long len;
    unsigned char *buf;
    if (!f)
        return NULL;
    if (fseek(f, 0, SEEK_END) != 0 || (len = ftell(f)) < 0
        || len > 0x7fffffff || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return NULL;
    }
    buf = malloc(len ? (size_t)len : 1);
    if (buf && fread(buf, 1, (size_t)len, f) != (size_t)len) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *size = (unsigned)len;
    return buf;
}

int
main(int argc, char **argv)
{
    const char *in = NULL, *out = NULL;
    char *sections[MAX_SECTIONS];
    unsigned n_sections = 0, size = 0;
    char error_buf[256];
    AOTCompOption option;
    RuntimeInitArgs init_args;
    unsigned char *wasm;
    wasm_module_t module;
    aot_comp_data_t comp_data;
    aot_comp_context_t comp_ctx;
    int status = 1, i;

    memset(&option, 0, sizeof(option));
    option.opt_level = 3;
    option.size_level = 3;
    option.output_format = AOT_FORMAT_FILE;
    option.bounds_checks = 1;
    option.stack_bounds_checks = 1;
    option.enable_aux_stack_check = true;
    option.enable_bulk_memory = true;
    option.enable_bulk_memory_opt = true;
    option.enable_call_indirect_overlong = true;
    option.enable_ref_types = true;
    option.enable_thread_mgr = true;
    option.enable_simd = false;
    aot_call_stack_features_init_default(&option.call_stack_features);

    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strncmp(a, "--cpu=", 6))
            option.target_cpu = (char *)a + 6;
        else if (!strncmp(a, "--arch=", 7))
            option.target_arch = (char *)a + 7;
        else if (!strncmp(a, "--emit-section=", 15)) {
            if (n_sections == MAX_SECTIONS)
                return fail("too many --emit-section options", NULL);
            sections[n_sections++] = (char *)a + 15;
        }
        else if (a[0] == '-' && a[1] == '-')
            return fail("unknown option", a);
        else if (!in)
            in = a;
        else if (!out)
            out = a;
        else
            return fail("unexpected argument", a);
    }
    if (!in || !out)
        return fail("usage: wamr-coro-aotc IN.wasm OUT.aot [--cpu=NAME] "
                    "[--arch=NAME] [--emit-section=NAME]...",
                    NULL);
    if (n_sections) {
        option.custom_sections = sections;
        option.custom_sections_count = n_sections;
    }

    memset(&init_args, 0, sizeof(init_args));
    init_args.mem_alloc_type = Alloc_With_Allocator;
    init_args.mem_alloc_option.allocator.malloc_func = malloc;
    init_args.mem_alloc_option.allocator.realloc_func = realloc;
    init_args.mem_alloc_option.allocator.free_func = free;
    if (!wasm_runtime_full_init(&init_args))
        return fail("initialising WAMR failed", NULL);

    if (!(wasm = read_file(in, &size))) {
        fail("cannot read", in);
        goto out_runtime;
    }
    if (size < 4 || memcmp(wasm, "\0asm", 4) != 0) {
        fail("not a wasm binary", in);
        goto out_file;
    }
    if (!(module = wasm_runtime_load(wasm, size, error_buf,
                                     sizeof(error_buf)))) {
        fail("loading the module failed", error_buf);
        goto out_file;
    }
    if (!(comp_data = aot_create_comp_data(module, option.target_arch,
                                           false))) {
        fail("creating compile data failed", aot_get_last_error());
        goto out_module;
    }
    if (!(comp_ctx = aot_create_comp_context(comp_data, &option))) {
        fail("creating the compile context failed", aot_get_last_error());
        goto out_data;
    }
    if (!aot_compile_wasm(comp_ctx)) {
        fail("compiling failed", aot_get_last_error());
        goto out_ctx;
    }
    if (!aot_emit_aot_file(comp_ctx, comp_data, out)) {
        fail("writing the AOT file failed", aot_get_last_error());
        goto out_ctx;
    }
    status = 0;

out_ctx:
    aot_destroy_comp_context(comp_ctx);
out_data:
    aot_destroy_comp_data(comp_data);
out_module:
    wasm_runtime_unload(module);
out_file:
    free(wasm);
out_runtime:
    wasm_runtime_destroy();
    return status;
}
