//! SIGINT and SIGTERM → graceful stop; a second one → exit now; SIGHUP →
//! reload the guest. The one place in the crate that touches signal
//! handlers (WAMR's own SIGUSR1 handler is described in `wamr/runtime.rs`),
//! and only while the caller waits in these functions.
use std::sync::Arc;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::ServerHandle;

/// Blocks the calling thread until SIGINT or SIGTERM arrives, or until the
/// server is stopped some other way (checked every 100 ms). Returns the
/// signal number, if one arrived; the caller then calls `stop`. SIGHUP is
/// caught and ignored meanwhile (see [`serve_signals`] to reload on it).
/// The handlers are removed again before returning.
pub fn stop_on_signal(server: &Arc<ServerHandle>) -> std::io::Result<Option<i32>> {
    serve_signals(server, || {})
}

/// Like [`stop_on_signal`], and calls `on_reload` on every SIGHUP (the
/// command line reloads the guest module from disk there, see
/// [`ServerHandle::reload`]).
pub fn serve_signals(server: &Arc<ServerHandle>, on_reload: impl FnMut() + Send) -> std::io::Result<Option<i32>> {
    Ok(SignalWatch::install()?.wait(server, on_reload))
}

/// SIGINT, SIGTERM and SIGHUP caught from [`install`](Self::install) on, so
/// that a process can take them over *before* it announces that it is
/// ready (a signal arriving in between would otherwise take its default
/// action: end the process).
pub struct SignalWatch {
    signals: Signals,
}

/// How often [`SignalWatch::wait`] looks for signals and a stopped server.
const POLL: std::time::Duration = std::time::Duration::from_millis(100);

impl SignalWatch {
    /// Catches SIGINT, SIGTERM and SIGHUP from now on.
    pub fn install() -> std::io::Result<SignalWatch> {
        Ok(SignalWatch { signals: Signals::new([SIGINT, SIGTERM, SIGHUP])? })
    }

    /// Blocks until SIGINT or SIGTERM (returned), or until `server` stops
    /// some other way (checked every 100 ms); calls `on_reload` on every
    /// SIGHUP meanwhile. The handlers are removed before returning.
    ///
    /// `on_reload` runs on a thread of its own, and this one goes on
    /// watching: a reload can take long (compiling a large guest: up to the
    /// compile time limit), and it used to keep SIGINT and SIGTERM unseen
    /// for all that time, the second one too. A stop signal during a reload
    /// is returned once the reload has ended; a second one meanwhile ends
    /// the process at once (status 130), as a second one does while the
    /// server stops. SIGHUPs during a reload make one more reload after it
    /// (the file may have changed again).
    pub fn wait(mut self, server: &Arc<ServerHandle>, on_reload: impl FnMut() + Send) -> Option<i32> {
        let handle = self.signals.handle();
        let on_reload = std::sync::Mutex::new(on_reload);
        let reload = || (on_reload.lock().unwrap_or_else(|e| e.into_inner()))();
        let got = std::thread::scope(|scope| {
            let start = || std::thread::Builder::new().name("wamr-coro-reload".into()).spawn_scoped(scope, reload);
            let mut running: Option<std::thread::ScopedJoinHandle<'_, ()>> = None;
            let mut again = false;
            let mut got = None;
            'wait: loop {
                for sig in self.signals.pending() {
                    if sig != SIGHUP {
                        got = Some(sig);
                        break 'wait;
                    }
                    if running.is_some() {
                        again = true;
                    } else {
                        match start() {
                            Ok(h) => running = Some(h),
                            // No thread to spare: reload here, as before.
                            Err(_) => reload(),
                        }
                    }
                }
                if running.as_ref().is_some_and(|h| h.is_finished()) {
                    let _ = running.take().map(|h| h.join());
                    if std::mem::take(&mut again) {
                        match start() {
                            Ok(h) => running = Some(h),
                            Err(_) => reload(),
                        }
                    }
                }
                if server.is_stopping() {
                    break;
                }
                std::thread::sleep(POLL);
            }
            // A reload still running ends before the caller stops the
            // server (it cannot be abandoned); meanwhile a stop signal ends
            // the process.
            if let Some(h) = running {
                if !h.is_finished() {
                    tracing::warn!(
                        "stopping once the guest reload in progress has ended; \
                         a second SIGINT/SIGTERM exits now"
                    );
                }
                while !h.is_finished() {
                    for sig in self.signals.pending() {
                        if sig != SIGHUP {
                            eprintln!("second signal ({sig}) while a reload delays the stop: exiting now");
                            std::process::exit(130);
                        }
                    }
                    std::thread::sleep(POLL.min(std::time::Duration::from_millis(20)));
                }
                let _ = h.join();
            }
            got
        });
        handle.close();
        got
    }
}

/// While the returned guard lives, a SIGINT or SIGTERM ends the process at
/// once (exit status 130), for an operator who does not want to wait for a
/// graceful stop. Dropping the guard removes the handlers.
pub fn exit_on_second_signal() -> std::io::Result<SecondSignal> {
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let handle = signals.handle();
    let thread = std::thread::Builder::new().name("wamr-coro-signals".into()).spawn(move || {
        if let Some(sig) = signals.forever().next() {
            eprintln!("second signal ({sig}) while stopping: exiting now");
            std::process::exit(130);
        }
    })?;
    Ok(SecondSignal { handle, thread: Some(thread) })
}

/// See [`exit_on_second_signal`].
pub struct SecondSignal {
    handle: signal_hook::iterator::Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for SecondSignal {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
