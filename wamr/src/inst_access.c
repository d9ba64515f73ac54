/*
 * inst_access.c — accessors WAMR's public API lacks.
 *
 * Compiled by build.rs into the same archive as WAMR, against WAMR's internal
 * headers and with the same defines (wamr/config.rs), so the struct layouts
 * below are exactly those of the runtime it is linked with. Interpreter and
 * AOT instances share the layout used here: AOTModuleInstance is
 * `struct WASMModuleInstance`, and both kinds of memory instance are
 * WASMMemoryInstance (core/iwasm/aot/aot_runtime.h, interpreter/wasm_runtime.h
 * of WAMR 2.4.3). The Rust side is src/wamr/inst_access.rs.
 */
#include "wasm_runtime.h"
#include "aot_runtime.h"
#include <string.h>

/*
 * The instance's globals area (`global_data`, `global_data_size` bytes): the
 * values of its defined globals (WASMModuleInstance.global_data). Returns
 * NULL and *size = 0 for an instance without globals or a NULL instance.
 */
uint8_t *
wcoro_inst_global_data(wasm_module_inst_t inst, uint32_t *size)
{
    WASMModuleInstance *mi = (WASMModuleInstance *)inst;
    if (size)
        *size = 0;
    if (!mi || !mi->global_data || mi->global_data_size == 0)
        return NULL;
    if (size)
        *size = mi->global_data_size;
    return mi->global_data;
}

/* The module's declared maximum for its first memory, in pages, as WAMR's
 * loader left it (its default maximum when the module declares none; 1 for a
 * memory it shrank to one page of __heap_base bytes). */
static bool
module_max_pages(WASMModuleCommon *module, uint32 *max)
{
#if WASM_ENABLE_INTERP != 0
    if (module->module_type == Wasm_Module_Bytecode) {
        WASMModule *m = (WASMModule *)module;
        if (m->import_memory_count > 0) {
            *max = m->import_memories[0].u.memory.mem_type.max_page_count;
            return true;
        }
        if (m->memory_count > 0) {
            *max = m->memories[0].max_page_count;
            return true;
        }
        return false;
    }
#endif
#if WASM_ENABLE_AOT != 0
    if (module->module_type == Wasm_Module_AoT) {
        AOTModule *m = (AOTModule *)module;
        if (m->import_memory_count > 0) {
            *max = m->import_memories[0].mem_type.max_page_count;
            return true;
        }
        if (m->memory_count > 0) {
            *max = m->memories[0].max_page_count;
            return true;
        }
        return false;
    }
#endif
    return false;
}

/*
 * Sets how many pages the instance's default memory may grow to
 * (WASMMemoryInstance.max_page_count, which `memory.grow` checks).
 * Returns false and changes nothing if the instance has no memory, if its
 * memory is shared (it was mapped at its maximum once, for every sharer), or
 * if max_pages is below the current size or above the module's declared
 * maximum. Must not race a call running on the instance.
 */
bool
wcoro_memory_set_max_pages(wasm_module_inst_t inst, uint32_t max_pages)
{
    WASMModuleInstance *mi = (WASMModuleInstance *)inst;
    WASMMemoryInstance *mem;
    uint32 declared;

    if (!mi || mi->memory_count == 0 || !mi->memories)
        return false;
    mem = mi->memories[0];
    if (!mem || !module_max_pages((WASMModuleCommon *)mi->module, &declared))
        return false;
#if WASM_ENABLE_SHARED_MEMORY != 0
    if (mem->is_shared_memory)
        return false;
#endif
    if (max_pages < mem->cur_page_count || max_pages > declared)
        return false;
    mem->max_page_count = max_pages;
    return true;
}

/*
 * The bytes of the instance's first memory the guest can reach
 * (WASMMemoryInstance.memory_data_size): its pages times their size,
 * rounded up to the OS page size by wasm_allocate_linear_memory. For a
 * memory WAMR shrank to __heap_base that is more than cur_page_count *
 * num_bytes_per_page. Returns false for an instance without memory.
 */
bool
wcoro_memory_data_size(wasm_module_inst_t inst, uint64_t *size)
{
    WASMModuleInstance *mi = (WASMModuleInstance *)inst;
    if (!mi || mi->memory_count == 0 || !mi->memories || !mi->memories[0])
        return false;
    *size = mi->memories[0]->memory_data_size;
    return true;
}

/*
 * The module's maximum for its first memory as WAMR will clamp an
 * instantiation's `max_memory_pages` to (see module_max_pages). Returns false
 * for a module without memory.
 */
bool
wcoro_module_max_pages(wasm_module_t module, uint32_t *max_pages)
{
    uint32 max;
    if (!module || !module_max_pages((WASMModuleCommon *)module, &max))
        return false;
    *max_pages = max;
    return true;
}

/*
 * The exec env's wasm operand stack: [*bottom, *top_boundary). WAMR zeroes
 * it (memset) when it creates the env, which makes every page of it
 * resident although a call uses only its start.
 */
void
wcoro_exec_env_operand_stack(wasm_exec_env_t env, uint8_t **bottom,
                             uint8_t **top_boundary)
{
    WASMExecEnv *e = (WASMExecEnv *)env;
    *bottom = e->wasm_stack.bottom;
    *top_boundary = e->wasm_stack.top_boundary;
}

/*
 * Where the instance's aux stack pointer (the global WAMR gives each spawned
 * env's own slot of the shadow stack, wasm_set_aux_stack/aot_set_aux_stack)
 * lies in its globals area: *offset bytes in, 4 bytes long. Returns false
 * when the module has none. Looked up exactly as those two functions do.
 */
bool
wcoro_inst_aux_stack_global(wasm_module_inst_t inst, uint32_t *offset)
{
    WASMModuleInstance *mi = (WASMModuleInstance *)inst;
    if (!mi || !mi->global_data)
        return false;
#if WASM_ENABLE_INTERP != 0
    if (mi->module_type == Wasm_Module_Bytecode) {
        uint32 idx = mi->module->aux_stack_top_global_index;
        if (idx == (uint32)-1)
            return false;
        *offset = mi->e->globals[idx].data_offset;
        return true;
    }
#endif
#if WASM_ENABLE_AOT != 0
    if (mi->module_type == Wasm_Module_AoT) {
        AOTModule *m = (AOTModule *)mi->module;
        uint32 idx = m->aux_stack_top_global_index;
        if (idx == (uint32)-1)
            return false;
        *offset = m->globals[idx].data_offset;
        return true;
    }
#endif
    return false;
}

/*
 * Copies the instance's exception text into buf (buf_len bytes, always
 * NUL-terminated when buf_len > 0) under WAMR's exception lock, the lock
 * wasm_set_exception writes it under, from whichever thread (a watchdog's
 * wasm_runtime_terminate, a sibling's trap spread by the cluster). Returns
 * whether there is an exception. wasm_runtime_get_exception instead returns a
 * pointer into the instance, read without that lock. wasm_copy_exception
 * copies all EXCEPTION_BUF_LEN bytes, hence the local buffer of that size.
 */
bool
wcoro_inst_copy_exception(wasm_module_inst_t inst, char *buf, uint32_t buf_len)
{
    char text[EXCEPTION_BUF_LEN];
    uint32_t n;
    if (buf && buf_len > 0)
        buf[0] = '\0';
    if (!inst)
        return false;
    text[0] = '\0';
    if (!wasm_copy_exception((WASMModuleInstance *)inst, text))
        return false;
    text[EXCEPTION_BUF_LEN - 1] = '\0';
    if (buf && buf_len > 0) {
        n = (uint32_t)strlen(text);
        if (n >= buf_len)
            n = buf_len - 1;
        memcpy(buf, text, n);
        buf[n] = '\0';
    }
    return true;
}
