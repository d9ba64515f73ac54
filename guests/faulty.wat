;; faulty.wat — a guest that misbehaves on request, for fault-isolation tests.
;; The first byte of each message selects the behaviour:
;;   'T'  trap (unreachable)
;;   'S'  spin forever (needs the host's call budget)
;;   'B'  send from a bad pointer; reply with send's result as 4 bytes LE
;;   'O'  send to another connection; reply with send's result as 4 bytes LE
;;   'C'  close itself, then try to send; the socket closes
;;   'L'  log with a bad pointer, then echo
;;   'X'  send 2048 bytes at once; reply with send's result as 4 bytes LE
;;   anything else: echo
(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (import "env" "close" (func $close (param i32) (result i32)))
  (import "env" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 3)
  (global $__stack_pointer (mut i32) (i32.const 65536))
  (global (export "__data_end") i32 (i32.const 1024))
  (global (export "__heap_base") i32 (i32.const 196608))
  (func (export "alloc") (param $size i32) (result i32)
    (if (result i32) (i32.le_u (local.get $size) (i32.const 65536))
      (then (i32.const 131072))
      (else (i32.const 0))))
  (func $reply_i32 (param $conn i32) (param $v i32) (result i32)
    (i32.store (i32.const 512) (local.get $v))
    (drop (call $send (local.get $conn) (i32.const 512) (i32.const 4)))
    (i32.const 0))
  (func (export "on_recv") (param $conn i32) (param $ptr i32) (param $len i32) (result i32)
    (local $c i32)
    (local.set $c (i32.load8_u (local.get $ptr)))
    (if (i32.eq (local.get $c) (i32.const 84)) (then unreachable))
    (if (i32.eq (local.get $c) (i32.const 83)) (then (loop $l (br $l))))
    (if (i32.eq (local.get $c) (i32.const 66))
      (then (return (call $reply_i32 (local.get $conn)
        (call $send (local.get $conn) (i32.const -16) (i32.const 100))))))
    (if (i32.eq (local.get $c) (i32.const 79))
      (then (return (call $reply_i32 (local.get $conn)
        (call $send (i32.add (local.get $conn) (i32.const 1000)) (local.get $ptr) (i32.const 1))))))
    (if (i32.eq (local.get $c) (i32.const 67))
      (then
        (drop (call $close (local.get $conn)))
        (drop (call $send (local.get $conn) (local.get $ptr) (local.get $len)))
        (return (i32.const 0))))
    (if (i32.eq (local.get $c) (i32.const 88))
      (then (return (call $reply_i32 (local.get $conn)
        (call $send (local.get $conn) (i32.const 0) (i32.const 2048))))))
    (if (i32.eq (local.get $c) (i32.const 76))
      (then (call $log (i32.const 2) (i32.const 0x7ffffff0) (i32.const 64))))
    (drop (call $send (local.get $conn) (local.get $ptr) (local.get $len)))
    (i32.const 0)))
