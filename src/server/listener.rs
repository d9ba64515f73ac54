//! The accept loop: one coroutine that accepts TCP connections and starts a
//! coroutine for each (see `connection.rs`).
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{connection, Shared};

pub(super) fn start(shared: Arc<Shared>, listener: may::net::TcpListener) -> may::coroutine::JoinHandle<()> {
    crate::coro::spawn(move || {
        for stream in listener.incoming() {
            if shared.stopping.load(Ordering::Acquire) {
                break;
            }
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: log, back off briefly, go on.
                    tracing::warn!(error = %e, "accept failed");
                    may::coroutine::sleep(std::time::Duration::from_millis(10));
                    continue;
                }
            };
            if shared.conns.lock().len() >= shared.limits.max_connections {
                shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("connection refused: max_connections reached");
                drop(stream);
                continue;
            }
            match &shared.queue {
                Some(q) => super::queue::start_conn(&shared, q, stream),
                None => connection::start(&shared, stream),
            }
        }
    })
}
