;; echo.wat — the smallest complete guest: sends back every byte it gets.
;; Works in both modes: direct mode calls on_recv; in queue mode the host runs
;; its own loop (no `run` export) and calls the same on_recv.
(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (memory (export "memory") 4)
  ;; What wasm_runtime_spawn_exec_env needs (clang/rustc emit these): a
  ;; mutable stack pointer, and __data_end <= __heap_base. Aux stack: 1K..64K.
  ;; __heap_base is the end of all static data (the receive buffer): WAMR
  ;; shrinks the memory of a module that never runs memory.grow to it.
  (global $__stack_pointer (mut i32) (i32.const 65536))
  (global (export "__data_end") i32 (i32.const 1024))
  (global (export "__heap_base") i32 (i32.const 196608))
  ;; The receive buffer: one fixed 64 KiB region at 128 KiB.
  (func (export "alloc") (param $size i32) (result i32)
    (if (result i32) (i32.le_u (local.get $size) (i32.const 65536))
      (then (i32.const 131072))
      (else (i32.const 0))))
  (func (export "on_recv") (param $conn i32) (param $ptr i32) (param $len i32) (result i32)
    (call $send (local.get $conn) (local.get $ptr) (local.get $len))))
