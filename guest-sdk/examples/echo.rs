//! Echo guest on the SDK, for both modes: `on_recv` in direct mode, its own
//! `run` loop in queue mode, an `alloc` for `--source spawn`.
//!
//! cargo build --release --target wasm32-unknown-unknown --example echo
//! → target/wasm32-unknown-unknown/release/examples/echo.wasm
#![cfg_attr(target_arch = "wasm32", no_std)]

#[cfg(target_arch = "wasm32")]
mod guest {
    use wamr_coro_guest::{export_guest, Conn, Guest, DEFAULT_CHUNK_SIZE};

    /// Stateless: everything it needs arrives with each call.
    pub struct Echo;

    impl Guest for Echo {
        fn on_recv(&mut self, conn: Conn, data: &[u8]) -> bool {
            conn.send(data).is_ok()
        }
    }

    export_guest! {
        guest: Echo = Echo,
        alloc: DEFAULT_CHUNK_SIZE + 16,
        run: DEFAULT_CHUNK_SIZE,
    }
}
