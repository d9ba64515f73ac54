//! How a bench parent talks to a server child: over its stdin and stdout.
//!
//! The child prints `listening on ADDR` once bound. Each `stats` line the
//! parent writes to its stdin is answered with one `stats {JSON}` line on
//! stdout (the server's figures at that moment: open connections, live
//! envs, ...). When stdin closes — the parent stopped it, or died — the
//! child stops as on SIGTERM, so no server outlives its bench.
use std::io::{BufRead, Write};

/// Starts the thread that answers `stats` on stdin with `stats` lines from
/// `stats()`, and calls `on_eof` when stdin closes.
pub fn spawn(
    stats: impl Fn() -> serde_json::Value + Send + 'static,
    on_eof: impl FnOnce() + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new().name("bench-control".into()).spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(l) if l.trim() == "stats" => {
                    if writeln!(std::io::stdout(), "stats {}", stats()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        on_eof();
    })?;
    Ok(())
}

/// `on_eof` for a process that stops on SIGTERM: raise it.
pub fn raise_sigterm() {
    let _ = signal_hook::low_level::raise(signal_hook::consts::SIGTERM);
}
