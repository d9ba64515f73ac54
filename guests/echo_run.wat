;; echo_run.wat — echo with its own queue-mode loop: `run` waits in
;; wait_msg and answers DATA events; it also exports on_recv, so the same
;; module runs unchanged in direct mode.
(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (import "env" "wait_msg" (func $wait_msg (param i32 i32 i32) (result i32)))
  (memory (export "memory") 3)
  (global $__stack_pointer (mut i32) (i32.const 65536))
  (global (export "__data_end") i32 (i32.const 2048))
  (global (export "__heap_base") i32 (i32.const 196608))
  ;; Event record at 1024, queue buffer at 65536, direct-mode buffer at 131072.
  (func (export "alloc") (param $size i32) (result i32)
    (if (result i32) (i32.le_u (local.get $size) (i32.const 65536))
      (then (i32.const 131072))
      (else (i32.const 0))))
  (func (export "on_recv") (param $conn i32) (param $ptr i32) (param $len i32) (result i32)
    (call $send (local.get $conn) (local.get $ptr) (local.get $len)))
  (func (export "run") (result i32)
    (local $n i32)
    (loop $next
      (local.set $n (call $wait_msg (i32.const 65536) (i32.const 65536) (i32.const 1024)))
      ;; SHUTDOWN (-4): the server stops; any other error is ours to return.
      (if (i32.eq (local.get $n) (i32.const -4)) (then (return (i32.const 0))))
      (if (i32.lt_s (local.get $n) (i32.const 0)) (then (return (local.get $n))))
      ;; kind == DATA (0): echo the payload to conn.
      (if (i32.eqz (i32.load offset=4 (i32.const 1024)))
        (then (drop (call $send (i32.load (i32.const 1024)) (i32.const 65536) (local.get $n)))))
      (br $next))
    (i32.const 0)))
