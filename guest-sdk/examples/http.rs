//! A tiny HTTP/1.1 responder on the SDK: answers every request head (ended
//! by CRLF CRLF) with a fixed 200 response and keeps the connection open.
//! Requests may be split across reads and pipelined several per read: the
//! guest keeps, per connection, how much of "\r\n\r\n" it has matched, in a
//! hash table keyed by connection id — one entry in direct mode, many in
//! queue mode. Request bodies are not supported (GET/HEAD style).
//!
//! The table is `guests/http.wat`'s (see there), smaller: 4,096 slots, open
//! addressing from the slot `id & 4095` with linear probing,
//! deletion by backward shift. Capacity: 3,072 connections per instance;
//! `on_open` refuses one more, so an accepted connection's state is never
//! dropped. An env that sees a callback of a connection it never opened is
//! shared between connections (direct mode, `--policy message`) and keeps
//! entries of connections closed elsewhere: when full it drops entries
//! instead of refusing.
//!
//! cargo build --release --target wasm32-unknown-unknown --example http
#![cfg_attr(target_arch = "wasm32", no_std)]

#[cfg(target_arch = "wasm32")]
mod guest {
    use wamr_coro_guest::{export_guest, log, Conn, Guest, Level, DEFAULT_CHUNK_SIZE};

    const RESPONSE: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n\r\nHello from wamr-coro\n";
    const SLOT_BITS: u32 = 12;
    const SLOTS: usize = 1 << SLOT_BITS;
    /// Three quarters of the slots: probes stay short.
    const CAPACITY: usize = SLOTS / 4 * 3;

    /// Per-connection progress through "\r\n\r\n", keyed by connection id.
    ///
    /// Two arrays rather than one of (id, matched) pairs, and `shared` a
    /// `u8` rather than a `bool`, so that rustc fills the initial value with
    /// zeros in place: with pairs it built two 32 KiB copies on the stack,
    /// which overflowed it; with a `bool`, it copied a 20 KiB data segment of
    /// zeros.
    pub struct Http {
        /// The connection id in each slot; 0 marks an empty one (ids are
        /// positive).
        ids: [i32; SLOTS],
        /// Each slot's progress through "\r\n\r\n".
        matched: [u8; SLOTS],
        /// Slots in use.
        used: usize,
        /// 1 once a callback came for a connection this env never opened.
        shared: u8,
    }

    fn home(id: i32) -> usize {
        (id as u32 as usize) & (SLOTS - 1)
    }

    fn after(i: usize) -> usize {
        (i + 1) % SLOTS
    }

    impl Http {
        /// The slot holding `id`'s entry, or else the empty slot that ends its
        /// probe (where it would go). Ends: `used <= CAPACITY` leaves one empty.
        fn probe(&self, id: i32) -> usize {
            let mut i = home(id);
            while self.ids[i] != id && self.ids[i] != 0 {
                i = after(i);
            }
            i
        }

        /// Empties slot `hole`, moving back each entry behind it that may
        /// fill the hole (its home is not between the hole and it).
        fn delete(&mut self, mut hole: usize) {
            let mut i = after(hole);
            while self.ids[i] != 0 {
                let distance = |from: usize| (i + SLOTS - from) % SLOTS;
                if distance(home(self.ids[i])) >= distance(hole) {
                    self.ids[hole] = self.ids[i];
                    self.matched[hole] = self.matched[i];
                    hole = i;
                }
                i = after(i);
            }
            self.ids[hole] = 0;
            self.used -= 1;
        }

        /// Enters `id`, which has no entry and whose probe ends at the empty
        /// slot `i`, with matched 0: its slot, or `None` if the table is
        /// full and not shared.
        fn enter(&mut self, id: i32, mut i: usize) -> Option<usize> {
            if self.used >= CAPACITY {
                if self.shared == 0 {
                    return None;
                }
                // The first entry from `id`'s home slot on: anywhere in the
                // table alike, so the load stays even and probes short.
                let mut j = home(id);
                while self.ids[j] == 0 {
                    j = after(j);
                }
                self.delete(j);
                i = self.probe(id);
            }
            self.ids[i] = id;
            self.matched[i] = 0;
            self.used += 1;
            Some(i)
        }
    }

    impl Guest for Http {
        fn on_open(&mut self, conn: Conn) -> bool {
            let i = self.probe(conn.id());
            if self.ids[i] == conn.id() {
                self.matched[i] = 0;
                return true;
            }
            // Full: refused.
            self.enter(conn.id(), i).is_some()
        }

        fn on_recv(&mut self, conn: Conn, data: &[u8]) -> bool {
            let i = self.probe(conn.id());
            let found = self.ids[i] == conn.id();
            self.shared |= !found as u8;
            let mut matched = if found { self.matched[i] } else { 0 };
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
            let slot = match (found, matched) {
                (true, _) => Some(i),
                // No entry (a shared env): one only for a request in progress.
                (false, 0) => None,
                (false, _) => self.enter(conn.id(), i),
            };
            if let Some(i) = slot {
                self.matched[i] = matched;
            }
            true
        }

        fn on_close(&mut self, conn: Conn) {
            let i = self.probe(conn.id());
            if self.ids[i] == conn.id() {
                self.delete(i);
            } else {
                self.shared = 1;
            }
        }
    }

    export_guest! {
        guest: Http = Http { ids: [0; SLOTS], matched: [0; SLOTS], used: 0, shared: 0 },
        alloc: DEFAULT_CHUNK_SIZE + 16,
    }
}
