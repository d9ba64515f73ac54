;; remember.wat — a guest that keeps state across connections if the host
;; lets it: the isolation tests' probe (it is what a careless stateful guest
;; looks like).
;;
;; Every on_recv answers with what the env remembers, then remembers the new
;; message:
;;   byte 0   how many messages this env has handled (a mutable global)
;;   byte 1   memory.size in pages
;;   byte 2.. the last message it stored (initially "none", a data segment)
;; A message starting with "G" first grows memory by 16 pages and writes the
;; message into the new pages too.
;; It works in direct mode with both env sources (it declares what spawning
;; needs) and in queue mode through the host's loop (it keeps one store for
;; every connection, which is exactly what queue-mode guests must not do for
;; per-client data).
(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (memory (export "memory") 3)
  (global $__stack_pointer (mut i32) (i32.const 65536))
  (global $count (mut i32) (i32.const 0))
  (global $stored_len (mut i32) (i32.const 4))
  (global (export "__data_end") i32 (i32.const 4096))
  (global (export "__heap_base") i32 (i32.const 196608))
  ;; The stored message at 256 (at most 64 bytes), the answer built at 512.
  (data (i32.const 256) "none")
  ;; Receive buffer: 64 KiB at 128 KiB.
  (func (export "alloc") (param $size i32) (result i32)
    (if (result i32) (i32.le_u (local.get $size) (i32.const 65536))
      (then (i32.const 131072))
      (else (i32.const 0))))
  (func (export "on_recv") (param $conn i32) (param $ptr i32) (param $len i32) (result i32)
    (local $n i32) (local $old i32)
    ;; Answer: count, memory.size, stored message.
    (i32.store8 (i32.const 512) (global.get $count))
    (i32.store8 (i32.const 513) (memory.size))
    (memory.copy (i32.const 514) (i32.const 256) (global.get $stored_len))
    (drop (call $send (local.get $conn) (i32.const 512) (i32.add (i32.const 2) (global.get $stored_len))))
    ;; Remember this message (at most 64 bytes).
    (local.set $n (select (local.get $len) (i32.const 64) (i32.lt_u (local.get $len) (i32.const 64))))
    (memory.copy (i32.const 256) (local.get $ptr) (local.get $n))
    (global.set $stored_len (local.get $n))
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    ;; "G...": grow and write the message into the new pages.
    (if (i32.and (i32.gt_u (local.get $len) (i32.const 0))
                 (i32.eq (i32.load8_u (local.get $ptr)) (i32.const 71)))
      (then
        (local.set $old (memory.grow (i32.const 16)))
        (if (i32.ge_s (local.get $old) (i32.const 0))
          (then (memory.copy (i32.mul (local.get $old) (i32.const 65536)) (local.get $ptr) (local.get $n))))))
    (i32.const 0)))
