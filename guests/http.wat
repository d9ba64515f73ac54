;; http.wat — the embedded default guest: a tiny HTTP/1.1 responder.
;;
;; Answers every request head (terminated by CRLF CRLF) with a fixed 200
;; response, keeping the connection open (HTTP/1.1 keep-alive). Requests may
;; be split across reads and pipelined several per read. It serves many
;; connections from one instance (queue mode) or one per instance (direct
;; mode) alike. Request bodies are not supported (GET/HEAD style).
;;
;; Per connection it keeps how much of "\r\n\r\n" it has matched so far, in a
;; hash table keyed by the connection id: 16,384 slots of {conn, matched} at
;; 64 KiB (conn 0 marks an empty slot: ids are positive). Open addressing:
;; a connection's entry is in the first slot from its home slot, conn &
;; 16383, that holds it, before any empty one; deletion shifts the entries
;; behind back, so no tombstones pile up. The host hands ids out counting
;; up, so without a collision the first probe hits, and consecutive
;; connections write the same page (512 slots a page): a pooled env that
;; serves one connection after another keeps its few resident pages, which
;; its reset reads. (A hash that spread the ids, tried first, made a pooled
;; env touch a new page per connection: 40 % more server CPU per connection
;; under churn.) Two connections whose ids differ by 16,384 get entries of
;; their own. (A table indexed by conn & 16383 alone lost a pending split
;; request when a connection 16,384 ids later opened; tests/guest_state.rs.)
;; The price of the identity home slot: while a long run of consecutive ids
;; stays open, a connection whose home slot falls in the run probes to its
;; end (at most the capacity, a few microseconds a callback).
;;
;; Capacity: 12,288 connections per instance (three quarters of the slots,
;; so that probes stay short). on_open enters each connection and on_close
;; removes it; on_open refuses a connection past that (returns -1: the host
;; closes it without on_close), so an accepted connection's state is never
;; dropped. One entry is all direct mode's private envs ever use.
;;
;; Envs shared between connections (direct mode, --policy message) lease an
;; env per callback: an env sees callbacks of connections it never opened
;; and keeps entries of ones that closed on another env. The first on_recv
;; or on_close of a connection without an entry (in queue mode and with
;; private envs there is none) marks the env shared; a full shared env makes
;; room by dropping an entry near the new one's home slot instead of refusing:
;; its per-connection state is unreliable anyway (docs/guest-abi.md, section
;; 5), and refusals would never end.
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
  ;; Per-connection state: 16384 slots x {conn i32, matched i32} at 64 KiB,
  ;; up to 192 KiB; $cap entries at most, $used now.
  (global $state i32 (i32.const 65536))
  (global $state_end i32 (i32.const 196608))
  (global $cap i32 (i32.const 12288))
  (global $used (mut i32) (i32.const 0))
  ;; 1 once a callback came for a connection this env never opened.
  (global $shared (mut i32) (i32.const 0))
  ;; Receive buffer: 64 KiB at 192 KiB.
  (func (export "alloc") (param $size i32) (result i32)
    (if (result i32) (i32.le_u (local.get $size) (i32.const 65536))
      (then (i32.const 196608))
      (else (i32.const 0))))
  ;; The home slot of $conn (its address).
  (func $home (param $conn i32) (result i32)
    (i32.add (global.get $state)
      (i32.and (i32.shl (local.get $conn) (i32.const 3)) (i32.const 0x1fff8))))
  ;; The slot after $a, round the end of the table.
  (func $after (param $a i32) (result i32)
    (local.set $a (i32.add (local.get $a) (i32.const 8)))
    (select (global.get $state) (local.get $a) (i32.eq (local.get $a) (global.get $state_end))))
  ;; The slot holding $conn's entry, or else the empty slot that ends its
  ;; probe (where it would go). Ends: $used <= $cap leaves a slot empty.
  (func $probe (param $conn i32) (result i32)
    (local $a i32) (local $c i32)
    ;; $home, inlined: every callback probes.
    (local.set $a (i32.add (global.get $state)
      (i32.and (i32.shl (local.get $conn) (i32.const 3)) (i32.const 0x1fff8))))
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
        ;; Distances forward, in bytes, round the 128 KiB table.
        (if (i32.ge_u (i32.and (i32.sub (local.get $i) (call $home (local.get $c))) (i32.const 0x1ffff))
                      (i32.and (i32.sub (local.get $i) (local.get $hole)) (i32.const 0x1ffff)))
          (then
            (i64.store (local.get $hole) (i64.load (local.get $i)))
            (local.set $hole (local.get $i))))
        (br $next)))
    (i32.store (local.get $hole) (i32.const 0))
    (global.set $used (i32.sub (global.get $used) (i32.const 1))))
  ;; Enters $conn, which has no entry and whose probe ends at the empty slot
  ;; $a: the entry's address, or 0 if the table is full and not shared. A
  ;; full shared env drops an entry first.
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
    (global.set $used (i32.add (global.get $used) (i32.const 1)))
    (local.get $a))
  (func (export "on_open") (param $conn i32) (result i32)
    (local $s i32)
    (local.set $s (call $probe (local.get $conn)))
    (if (i32.ne (i32.load (local.get $s)) (local.get $conn))
      (then
        (local.set $s (call $enter (local.get $conn) (local.get $s)))
        ;; Full: refused.
        (if (i32.eqz (local.get $s)) (then (return (i32.const -1))))))
    (i32.store offset=4 (local.get $s) (i32.const 0))
    (i32.const 0))
  (func (export "on_close") (param $conn i32)
    (local $s i32)
    (local.set $s (call $probe (local.get $conn)))
    (if (i32.eq (i32.load (local.get $s)) (local.get $conn))
      (then (call $delete (local.get $s)))
      (else (global.set $shared (i32.const 1)))))
  (func (export "on_recv") (param $conn i32) (param $ptr i32) (param $len i32) (result i32)
    (local $s i32) (local $m i32) (local $i i32) (local $end i32) (local $b i32)
    (local.set $s (call $probe (local.get $conn)))
    (if (i32.eq (i32.load (local.get $s)) (local.get $conn))
      (then (local.set $m (i32.load offset=4 (local.get $s))))
      (else (global.set $shared (i32.const 1))))
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
    (if (i32.ne (i32.load (local.get $s)) (local.get $conn))
      (then
        ;; No entry (a shared env): one only for a request in progress.
        (if (i32.eqz (local.get $m)) (then (return (i32.const 0))))
        (local.set $s (call $enter (local.get $conn) (local.get $s)))))
    (i32.store offset=4 (local.get $s) (local.get $m))
    (i32.const 0)))
