;; grow.wat — grows its memory by 64 pages (4 MiB) on every message and touches each
;; new 4 KiB page; answers memory.grow's result (4 bytes LE). For measuring the
;; guest-memory budget: scripts/guest_memory_rss.py.
(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "on_recv") (param $conn i32) (param $ptr i32) (param $len i32) (result i32)
    (local $old i32) (local $at i32) (local $end i32)
    (local.set $old (memory.grow (i32.const 64)))
    (if (i32.ge_s (local.get $old) (i32.const 0))
      (then
        (local.set $at (i32.mul (local.get $old) (i32.const 65536)))
        (local.set $end (i32.add (local.get $at) (i32.const 4194304)))
        (loop $touch
          (i32.store8 (local.get $at) (i32.const 1))
          (local.set $at (i32.add (local.get $at) (i32.const 4096)))
          (br_if $touch (i32.lt_u (local.get $at) (local.get $end))))))
    (i32.store (i32.const 0) (local.get $old))
    (drop (call $send (local.get $conn) (i32.const 0) (i32.const 4)))
    (i32.const 0)))
