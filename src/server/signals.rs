//! SIGINT and SIGTERM → graceful stop. The one place in the crate that
//! touches signal handlers (WAMR's own SIGUSR1 handler is described in
//! `wamr/runtime.rs`).
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::ServerHandle;

/// Blocks the calling thread until SIGINT or SIGTERM arrives, or until the
/// server is stopped some other way (checked every 100 ms). Returns the
/// signal number, if one arrived; the caller then calls `stop`. The handlers
/// are removed again before returning.
pub fn stop_on_signal(server: &Arc<ServerHandle>) -> std::io::Result<Option<i32>> {
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let handle = signals.handle();
    let mut got = None;
    loop {
        if let Some(sig) = signals.pending().next() {
            got = Some(sig);
            break;
        }
        if server.is_stopping() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    handle.close();
    Ok(got)
}
