;; http.wat — the embedded default guest: a tiny HTTP/1.1 responder.
;;
;; Answers every request head (terminated by CRLF CRLF) with a fixed 200
;; response, keeping the connection open (HTTP/1.1 keep-alive). Requests may
;; be split across reads and pipelined several per read: the guest keeps, per
;; connection, how much of "\r\n\r\n" it has matched so far, in a table of
;; 16384 slots indexed by conn & 16383 (tagged with the conn id). It serves
;; many connections from one instance (queue mode) or one per instance
;; (direct mode) alike. Request bodies are not supported (GET/HEAD style).
(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (memory (export "memory") 5)
  (global $__stack_pointer (mut i32) (i32.const 65536))
  (global (export "__data_end") i32 (i32.const 2048))
  ;; __heap_base is the end of all static data: WAMR shrinks the memory of a
  ;; module that never runs memory.grow to __heap_base.
  (global (export "__heap_base") i32 (i32.const 262144))
  ;; Response at 1024 (80 bytes).
  (data (i32.const 1024)
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n\r\nHello from wamr-coro\n")
  (global $resp i32 (i32.const 1024))
  (global $resp_len i32 (i32.const 86))
  ;; Per-connection state: 16384 slots x {conn i32, matched i32} at 64 KiB.
  (global $state i32 (i32.const 65536))
  ;; Receive buffer: 64 KiB at 192 KiB.
  (func (export "alloc") (param $size i32) (result i32)
    (if (result i32) (i32.le_u (local.get $size) (i32.const 65536))
      (then (i32.const 196608))
      (else (i32.const 0))))
  (func $slot (param $conn i32) (result i32)
    (i32.add (global.get $state)
      (i32.shl (i32.and (local.get $conn) (i32.const 16383)) (i32.const 3))))
  (func (export "on_open") (param $conn i32) (result i32)
    (local $s i32)
    (local.set $s (call $slot (local.get $conn)))
    (i32.store (local.get $s) (local.get $conn))
    (i32.store offset=4 (local.get $s) (i32.const 0))
    (i32.const 0))
  (func (export "on_close") (param $conn i32)
    (local $s i32)
    (local.set $s (call $slot (local.get $conn)))
    (if (i32.eq (i32.load (local.get $s)) (local.get $conn))
      (then (i32.store (local.get $s) (i32.const 0)))))
  (func (export "on_recv") (param $conn i32) (param $ptr i32) (param $len i32) (result i32)
    (local $s i32) (local $m i32) (local $i i32) (local $end i32) (local $b i32)
    (local.set $s (call $slot (local.get $conn)))
    (if (i32.eq (i32.load (local.get $s)) (local.get $conn))
      (then (local.set $m (i32.load offset=4 (local.get $s)))))
    (local.set $i (local.get $ptr))
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $end)))
        (local.set $b (i32.load8_u (local.get $i)))
        ;; Expect '\r' after an even count, '\n' after an odd one.
        (if (i32.eq (local.get $b)
                    (select (i32.const 10) (i32.const 13) (i32.and (local.get $m) (i32.const 1))))
          (then (local.set $m (i32.add (local.get $m) (i32.const 1))))
          (else (local.set $m (i32.eq (local.get $b) (i32.const 13)))))
        (if (i32.eq (local.get $m) (i32.const 4))
          (then
            (if (i32.lt_s (call $send (local.get $conn) (global.get $resp) (global.get $resp_len))
                          (i32.const 0))
              (then (return (i32.const -1))))
            (local.set $m (i32.const 0))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.store (local.get $s) (local.get $conn))
    (i32.store offset=4 (local.get $s) (local.get $m))
    (i32.const 0)))
