;; soak.wat — the guest of `wamr-coro bench --soak`: an echo that misbehaves
;; on request, so that one server serves healthy and hostile clients at once.
;; The first byte of each message (each on_recv chunk) selects the behaviour:
;;   'T'  trap (unreachable)
;;   'S'  spin forever (the host's call budget stops it)
;;   'B'  send from an out-of-bounds pointer; reply with send's result (4 bytes LE)
;;   'O'  send to another connection's id; reply with send's result (4 bytes LE)
;;   'C'  close itself, then try to send; the socket closes
;;   'L'  log from an out-of-bounds pointer, then echo
;;   'X'  send 2048 bytes from offset 0; reply with send's result (4 bytes LE)
;;   'G'  grow memory by one page and write to it; reply with memory.grow's
;;        result (4 bytes LE: the old size in pages, or -1 when refused)
;;   anything else: echo (healthy soak clients send only lowercase letters)
;; Unlike faulty.wat it executes memory.grow, so WAMR keeps its declared
;; memory and an env that grew is destroyed, not reset, when released.
(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (import "env" "close" (func $close (param i32) (result i32)))
  (import "env" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 3)
  (func (export "alloc") (param $size i32) (result i32)
    (if (result i32) (i32.le_u (local.get $size) (i32.const 65536))
      (then (i32.const 131072))
      (else (i32.const 0))))
  (func $reply_i32 (param $conn i32) (param $v i32) (result i32)
    (i32.store (i32.const 512) (local.get $v))
    (drop (call $send (local.get $conn) (i32.const 512) (i32.const 4)))
    (i32.const 0))
  (func $grow (result i32)
    (local $old i32)
    (local.set $old (memory.grow (i32.const 1)))
    (if (i32.ge_s (local.get $old) (i32.const 0))
      (then
        ;; Touch the new page (first and last word) so that it is resident.
        (i32.store (i32.shl (local.get $old) (i32.const 16)) (local.get $old))
        (i32.store (i32.add (i32.shl (local.get $old) (i32.const 16)) (i32.const 65532)) (local.get $old))))
    (local.get $old))
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
    (if (i32.eq (local.get $c) (i32.const 71))
      (then (return (call $reply_i32 (local.get $conn) (call $grow)))))
    (if (i32.eq (local.get $c) (i32.const 76))
      (then (call $log (i32.const 2) (i32.const 0x7ffffff0) (i32.const 64))))
    (drop (call $send (local.get $conn) (local.get $ptr) (local.get $len)))
    (i32.const 0)))
