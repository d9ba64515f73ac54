//! A tiny HTTP/1.1 responder on the SDK: answers every request head (ended
//! by CRLF CRLF) with a fixed 200 response and keeps the connection open.
//! Requests may be split across reads and pipelined several per read: the
//! guest keeps, per connection, how much of "\r\n\r\n" it has matched, in a
//! table keyed by connection id — one entry in direct mode, many in queue
//! mode. Request bodies are not supported (GET/HEAD style).
//!
//! cargo build --release --target wasm32-unknown-unknown --example http
#![cfg_attr(target_arch = "wasm32", no_std)]

#[cfg(target_arch = "wasm32")]
mod guest {
    use wamr_coro_guest::{export_guest, log, Conn, Guest, Level, DEFAULT_CHUNK_SIZE};

    const RESPONSE: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n\r\nHello from wamr-coro\n";
    const SLOTS: usize = 4096;

    /// Per-connection progress through "\r\n\r\n", by `conn % SLOTS`.
    pub struct Http {
        slots: [(i32, u8); SLOTS],
    }

    impl Http {
        fn slot(&mut self, conn: Conn) -> &mut (i32, u8) {
            let s = &mut self.slots[conn.id() as usize % SLOTS];
            if s.0 != conn.id() {
                *s = (conn.id(), 0);
            }
            s
        }
    }

    impl Guest for Http {
        fn on_open(&mut self, conn: Conn) -> bool {
            *self.slot(conn) = (conn.id(), 0);
            true
        }

        fn on_recv(&mut self, conn: Conn, data: &[u8]) -> bool {
            let mut matched = self.slot(conn).1;
            for &b in data {
                // Expect '\r' after an even count, '\n' after an odd one.
                let want = if matched % 2 == 0 { b'\r' } else { b'\n' };
                matched = if b == want { matched + 1 } else { (b == b'\r') as u8 };
                if matched == 4 {
                    matched = 0;
                    if let Err(e) = conn.send(RESPONSE) {
                        let _ = e;
                        log(Level::Warn, "http: send refused; closing");
                        return false;
                    }
                }
            }
            self.slot(conn).1 = matched;
            true
        }

        fn on_close(&mut self, conn: Conn) {
            *self.slot(conn) = (0, 0);
        }
    }

    export_guest! {
        guest: Http = Http { slots: [(0, 0); SLOTS] },
        alloc: DEFAULT_CHUNK_SIZE + 16,
    }
}
