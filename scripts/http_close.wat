;; http_close.wat: answers any input with a fixed HTTP response, then closes
;; the connection (what a server does for "Connection: close"), so that every
;; close is the server's: the guest that measures the lingering close under
;; churn, with and without it:
;;   scripts/churn_syscalls.sh "target/release/wamr-coro serve scripts/http_close.wat \
;;       --linger-ms 2000 --listen 127.0.0.1:{PORT}"      (and --linger-ms 0)
(module
  (import "env" "send" (func $send (param i32 i32 i32) (result i32)))
  (import "env" "close" (func $close (param i32) (result i32)))
  (memory (export "memory") 2)
  (global (export "__heap_base") i32 (i32.const 65536))
  (data (i32.const 0) "HTTP/1.1 200 OK\0d\0aContent-Length: 13\0d\0aConnection: close\0d\0a\0d\0aHello, World!")
  (func (export "alloc") (param i32) (result i32) (i32.const 4096))
  (func (export "on_recv") (param $c i32) (param $p i32) (param $n i32) (result i32)
    (drop (call $send (local.get $c) (i32.const 0) (i32.const 71)))
    (drop (call $close (local.get $c)))
    (i32.const 0)))
