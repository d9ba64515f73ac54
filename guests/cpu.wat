;; cpu.wat — a CPU-bound HTTP/1.1 responder, for benchmarking compiled (AOT)
;; guests against the interpreter and other runtimes.
;;
;; Like http.wat it answers every request head (terminated by CRLF CRLF),
;; keep-alive, pipelined or split across reads, but first it runs 5,000
;; rounds of integer mixing (multiply, xor, shift, rotate) seeded with a hash
;; of the request head's bytes, and answers the 32-bit result as 8 hex
;; digits. The same request always gets the same answer; the seed comes from
;; the input so no compiler can fold the work away.
;;
;; Per connection it keeps {conn, matched, hash} in 16,384 slots of 16 bytes
;; indexed by conn & 16383 (tagged with the conn id).
(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (memory (export "memory") 8)
  (global $__stack_pointer (mut i32) (i32.const 65536))
  (global (export "__data_end") i32 (i32.const 2048))
  (global (export "__heap_base") i32 (i32.const 458752))
  ;; Response template at 1024: 64-byte head + 8 hex digits + "\n" = 73 bytes.
  (data (i32.const 1024)
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\n00000000\n")
  (data (i32.const 1200) "0123456789abcdef")
  (global $resp i32 (i32.const 1024))
  (global $resp_len i32 (i32.const 73))
  (global $digits i32 (i32.const 1088))
  (global $rounds i32 (i32.const 5000))
  ;; Per-connection state at 64 KiB (256 KiB); receive buffer at 384 KiB.
  (global $state i32 (i32.const 65536))
  (func (export "alloc") (param $size i32) (result i32)
    (if (result i32) (i32.le_u (local.get $size) (i32.const 65536))
      (then (i32.const 393216))
      (else (i32.const 0))))
  (func $slot (param $conn i32) (result i32)
    (i32.add (global.get $state)
      (i32.shl (i32.and (local.get $conn) (i32.const 16383)) (i32.const 4))))
  (func (export "on_open") (param $conn i32) (result i32)
    (local $s i32)
    (local.set $s (call $slot (local.get $conn)))
    (i32.store (local.get $s) (local.get $conn))
    (i32.store offset=4 (local.get $s) (i32.const 0))
    (i32.store offset=8 (local.get $s) (i32.const 0))
    (i32.const 0))
  (func (export "on_close") (param $conn i32)
    (local $s i32)
    (local.set $s (call $slot (local.get $conn)))
    (if (i32.eq (i32.load (local.get $s)) (local.get $conn))
      (then (i32.store (local.get $s) (i32.const 0)))))
  ;; The work: $rounds rounds of mixing from seed $x.
  (func $work (param $x i32) (result i32)
    (local $i i32)
    (loop $round
      (local.set $x (i32.mul (i32.xor (local.get $x) (i32.shr_u (local.get $x) (i32.const 15)))
                             (i32.const 0x2c1b3c6d)))
      (local.set $x (i32.add (i32.rotl (local.get $x) (i32.const 7)) (local.get $i)))
      (local.set $x (i32.xor (local.get $x) (i32.mul (i32.shr_u (local.get $x) (i32.const 12))
                                                    (i32.const 0x297a2d39))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $round (i32.lt_u (local.get $i) (global.get $rounds))))
    (local.get $x))
  ;; Writes $v as 8 hex digits into the response template.
  (func $hex (param $v i32)
    (local $k i32)
    (loop $digit
      (i32.store8
        (i32.add (global.get $digits) (i32.sub (i32.const 7) (local.get $k)))
        (i32.load8_u (i32.add (i32.const 1200)
          (i32.and (i32.shr_u (local.get $v) (i32.shl (local.get $k) (i32.const 2))) (i32.const 15)))))
      (local.set $k (i32.add (local.get $k) (i32.const 1)))
      (br_if $digit (i32.lt_u (local.get $k) (i32.const 8)))))
  (func (export "on_recv") (param $conn i32) (param $ptr i32) (param $len i32) (result i32)
    (local $s i32) (local $m i32) (local $h i32) (local $i i32) (local $end i32) (local $b i32)
    (local.set $s (call $slot (local.get $conn)))
    (if (i32.eq (i32.load (local.get $s)) (local.get $conn))
      (then
        (local.set $m (i32.load offset=4 (local.get $s)))
        (local.set $h (i32.load offset=8 (local.get $s)))))
    (local.set $i (local.get $ptr))
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $end)))
        (local.set $b (i32.load8_u (local.get $i)))
        (local.set $h (i32.add (i32.mul (local.get $h) (i32.const 31)) (local.get $b)))
        (if (i32.eq (local.get $b)
                    (select (i32.const 10) (i32.const 13) (i32.and (local.get $m) (i32.const 1))))
          (then (local.set $m (i32.add (local.get $m) (i32.const 1))))
          (else (local.set $m (i32.eq (local.get $b) (i32.const 13)))))
        (if (i32.eq (local.get $m) (i32.const 4))
          (then
            (call $hex (call $work (local.get $h)))
            (if (i32.lt_s (call $send (local.get $conn) (global.get $resp) (global.get $resp_len))
                          (i32.const 0))
              (then (return (i32.const -1))))
            (local.set $m (i32.const 0))
            (local.set $h (i32.const 0))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.store (local.get $s) (local.get $conn))
    (i32.store offset=4 (local.get $s) (local.get $m))
    (i32.store offset=8 (local.get $s) (local.get $h))
    (i32.const 0)))
