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
;; Per connection it keeps {conn, matched, hash} in a hash table keyed by the
;; connection id, as http.wat keeps {conn, matched} (see there): 16,384 slots
;; of 16 bytes at 64 KiB, open addressing from slot conn & 16383
;; with linear probing, deletion by backward shift. Capacity: 12,288
;; connections per instance; on_open refuses one more (returns -1) unless
;; the env is shared between connections (--policy message), which drops
;; entries instead.
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
  (global $state_end i32 (i32.const 327680))
  (global $cap i32 (i32.const 12288))
  (global $used (mut i32) (i32.const 0))
  ;; 1 once a callback came for a connection this env never opened.
  (global $shared (mut i32) (i32.const 0))
  (func (export "alloc") (param $size i32) (result i32)
    (if (result i32) (i32.le_u (local.get $size) (i32.const 65536))
      (then (i32.const 393216))
      (else (i32.const 0))))
  ;; The home slot of $conn (its address).
  (func $home (param $conn i32) (result i32)
    (i32.add (global.get $state)
      (i32.and (i32.shl (local.get $conn) (i32.const 4)) (i32.const 0x3fff0))))
  ;; The slot after $a, round the end of the table.
  (func $after (param $a i32) (result i32)
    (local.set $a (i32.add (local.get $a) (i32.const 16)))
    (select (global.get $state) (local.get $a) (i32.eq (local.get $a) (global.get $state_end))))
  ;; The slot holding $conn's entry, or else the empty slot that ends its
  ;; probe (where it would go). Ends: $used <= $cap leaves a slot empty.
  (func $probe (param $conn i32) (result i32)
    (local $a i32) (local $c i32)
    (local.set $a (call $home (local.get $conn)))
    (loop $next
      (local.set $c (i32.load (local.get $a)))
      (if (i32.and (i32.ne (local.get $c) (local.get $conn)) (i32.ne (local.get $c) (i32.const 0)))
        (then
          (local.set $a (call $after (local.get $a)))
          (br $next))))
    (local.get $a))
  ;; Empties slot $hole, moving back each entry behind it that may fill the
  ;; hole (its home is not between the hole and it), up to an empty slot.
  (func $delete (param $hole i32)
    (local $i i32) (local $c i32)
    (local.set $i (local.get $hole))
    (block $done
      (loop $next
        (local.set $i (call $after (local.get $i)))
        (local.set $c (i32.load (local.get $i)))
        (br_if $done (i32.eqz (local.get $c)))
        ;; Distances forward, in bytes, round the 256 KiB table.
        (if (i32.ge_u (i32.and (i32.sub (local.get $i) (call $home (local.get $c))) (i32.const 0x3ffff))
                      (i32.and (i32.sub (local.get $i) (local.get $hole)) (i32.const 0x3ffff)))
          (then
            (i64.store (local.get $hole) (i64.load (local.get $i)))
            (i64.store offset=8 (local.get $hole) (i64.load offset=8 (local.get $i)))
            (local.set $hole (local.get $i))))
        (br $next)))
    (i32.store (local.get $hole) (i32.const 0))
    (global.set $used (i32.sub (global.get $used) (i32.const 1))))
  ;; Enters $conn, which has no entry and whose probe ends at the empty slot
  ;; $a, with matched and hash 0: the entry's address, or 0 if the table is
  ;; full and not shared. A full shared env drops an entry first.
  (func $enter (param $conn i32) (param $a i32) (result i32)
    (if (i32.ge_u (global.get $used) (global.get $cap))
      (then
        (if (i32.eqz (global.get $shared)) (then (return (i32.const 0))))
        ;; The first entry from $conn's home slot on: anywhere in the
        ;; table alike, so the load stays even and probes short.
        (local.set $a (call $home (local.get $conn)))
        (loop $find
          (if (i32.eqz (i32.load (local.get $a)))
            (then
              (local.set $a (call $after (local.get $a)))
              (br $find))))
        (call $delete (local.get $a))
        (local.set $a (call $probe (local.get $conn)))))
    (i32.store (local.get $a) (local.get $conn))
    (i32.store offset=4 (local.get $a) (i32.const 0))
    (i32.store offset=8 (local.get $a) (i32.const 0))
    (global.set $used (i32.add (global.get $used) (i32.const 1)))
    (local.get $a))
  (func (export "on_open") (param $conn i32) (result i32)
    (local $s i32)
    (local.set $s (call $probe (local.get $conn)))
    (if (i32.eq (i32.load (local.get $s)) (local.get $conn))
      (then
        (i32.store offset=4 (local.get $s) (i32.const 0))
        (i32.store offset=8 (local.get $s) (i32.const 0))
        (return (i32.const 0))))
    ;; Full: refused.
    (select (i32.const -1) (i32.const 0)
      (i32.eqz (call $enter (local.get $conn) (local.get $s)))))
  (func (export "on_close") (param $conn i32)
    (local $s i32)
    (local.set $s (call $probe (local.get $conn)))
    (if (i32.eq (i32.load (local.get $s)) (local.get $conn))
      (then (call $delete (local.get $s)))
      (else (global.set $shared (i32.const 1)))))
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
    (local.set $s (call $probe (local.get $conn)))
    (if (i32.eq (i32.load (local.get $s)) (local.get $conn))
      (then
        (local.set $m (i32.load offset=4 (local.get $s)))
        (local.set $h (i32.load offset=8 (local.get $s))))
      (else (global.set $shared (i32.const 1))))
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
    (if (i32.ne (i32.load (local.get $s)) (local.get $conn))
      (then
        ;; No entry (a shared env): one only for a request in progress.
        (if (i32.eqz (i32.or (local.get $m) (local.get $h))) (then (return (i32.const 0))))
        (local.set $s (call $enter (local.get $conn) (local.get $s)))))
    (i32.store offset=4 (local.get $s) (local.get $m))
    (i32.store offset=8 (local.get $s) (local.get $h))
    (i32.const 0)))
