//! A shard's runner: the guest instance, its standby, restarts and drain.
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::super::Shared;
use super::dispatch::{Dispatcher, Next};
use super::host::{conn_info, QueueHost};
use super::Shard;
use crate::guest::GuestEnv;

/// Runs one shard's guest until shutdown. A faulted instance is replaced by
/// a standby made in advance; only a crash loop backs off; during shutdown
/// nothing restarts and the shard drains its events without a guest.
pub(in crate::server) fn run(sh: Arc<Shared>, qs: Arc<Shard>, guest: Arc<crate::guest::Guest>) {
    let has_run = guest.exports().run;
    let mut generation = 0u64;
    let mut backoff = Duration::from_millis(10);
    let mut standby: Option<GuestEnv> = None;
    let mut faults: std::collections::VecDeque<Instant> = std::collections::VecDeque::new();
    loop {
        if qs.finished() {
            break;
        }
        generation += 1;
        if sh.stopping.load(Ordering::Acquire) && generation > 1 {
            drain(&qs, generation);
            break;
        }
        let made = match standby.take() {
            Some(env) => Ok(env),
            // Each in a cluster of its own (spawn source): a fault in one
            // shard's instance must not reach another's, or this standby.
            None => guest.create_env_alone(),
        };
        let mut env = match made {
            Ok(env) => env,
            Err(e) => {
                tracing::error!(error = %e, "cannot create the queue guest; retrying");
                pause(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        // The replacement for a fault, made now so that the shard's next
        // connections are served at once after one.
        standby = guest.create_env_alone().inspect_err(|e| tracing::warn!(error = %e, "no standby queue guest")).ok();
        let dispatcher = Arc::new(Mutex::new(Dispatcher::new(&qs, generation)));
        let interrupt = Arc::clone(env.exec_env().interrupt_handle());
        let current = Arc::new(Mutex::new(None));
        env.set_host(Some(Box::new(QueueHost {
            dispatcher: Arc::clone(&dispatcher),
            sh: Arc::clone(&sh),
            interrupt,
            // With the guest's own loop, wait_msg arms the budget per event;
            // the host loop's calls carry the env's per-call budget instead.
            budget: if has_run { sh.limits.call_budget } else { None },
            handed_out: None,
            peeked: None,
            guest_loop: has_run,
            shutdown_deadline: None,
            current: Arc::clone(&current),
            log_limit: super::super::ratelimit::LogLimit::new(),
        })));
        let outcome = if has_run {
            // The call arms the budget for the code `run` executes before
            // its first wait_msg; from there wait_msg disarms it and arms it
            // again per event. An overrun is a fault like any other.
            env.exec_env().set_budget(sh.limits.call_budget);
            match env.run().unwrap_or(Ok(0)) {
                Ok(_) if qs.finished() => Ok(()),
                Ok(r) => Err(format!("run returned {r} before SHUTDOWN")),
                Err(e) => {
                    sh.counters.count_fault(&e);
                    Err(e.to_string())
                }
            }
        } else {
            host_loop(&sh, &dispatcher, &mut env, &current)
        };
        let Err(why) = outcome else { break };
        let closed = dispatcher.lock().abandon_generation();
        // A trap, an overrun, or `run` returning early: the instance is
        // discarded for a fault, counted as direct mode's are (a call cut at
        // shutdown is not one).
        env.note_fault();
        drop(env);
        if sh.stopping.load(Ordering::Acquire) {
            tracing::info!(%why, closed, "queue guest stopped during shutdown; not restarting");
            continue; // drains on the next turn
        }
        qs.restarts.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = sh.log_limits.queue_fault.allow() {
            tracing::warn!(%why, closed, suppressed, "queue guest failed; closed its shard's connections, standby takes over");
        }
        // Back off only in a crash loop, and only this shard.
        let now = Instant::now();
        faults.push_back(now);
        while faults.front().is_some_and(|t| now.duration_since(*t) > Duration::from_secs(1)) {
            faults.pop_front();
        }
        if faults.len() >= 3 {
            tracing::warn!(backoff_ms = backoff.as_millis() as u64, "queue guest crash loop: backing off");
            pause(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(1));
        } else {
            backoff = Duration::from_millis(10);
        }
    }
}

/// Without a guest (a fault during shutdown): closes every connection as
/// its events arrive, until the shard may say SHUTDOWN.
fn drain(qs: &Arc<Shard>, generation: u64) {
    let mut d = Dispatcher::new(qs, generation);
    loop {
        match d.next(usize::MAX) {
            Next::Shutdown => return,
            Next::Open(id) | Next::Data(id, _) => {
                if let Some(c) = qs.conns.lock().get(&id) {
                    c.close_writer();
                }
            }
            Next::Close(_) => {}
        }
    }
}

/// Sleeps without blocking a `may` worker when the runner is a coroutine
/// (and then yields, to leave `may`'s timer thread; see `Dispatcher::next`).
pub(super) fn pause(d: Duration) {
    if may::coroutine::is_coroutine() {
        may::coroutine::sleep(d);
        may::coroutine::yield_now();
    } else {
        std::thread::sleep(d);
    }
}

/// The loop `run` would have run, natively, for guests without `run`.
fn host_loop(
    sh: &Shared,
    dispatcher: &Mutex<Dispatcher>,
    env: &mut GuestEnv,
    current: &Mutex<Option<crate::abi::ConnInfo>>,
) -> Result<(), String> {
    let cap = env.recv_buffer().1 as usize;
    loop {
        let next = dispatcher.lock().next(cap);
        if let Next::Open(id) | Next::Data(id, _) | Next::Close(id) = &next {
            *current.lock() = conn_info(&dispatcher.lock(), *id);
        }
        let started = Instant::now();
        let result = match next {
            Next::Shutdown => return Ok(()),
            Next::Open(id) => env.on_open(id).map(|r| {
                if r < 0 {
                    sh.counters.refused.fetch_add(1, Ordering::Relaxed);
                    let conn = dispatcher.lock().qs.conns.lock().get(&id).cloned();
                    if let Some(c) = conn {
                        c.refused.store(true, Ordering::Release);
                        c.close_writer();
                    }
                }
            }),
            Next::Data(id, data) => env.on_recv(id, &data).map(|r| {
                if r < 0 {
                    let conn = dispatcher.lock().qs.conns.lock().get(&id).cloned();
                    if let Some(c) = conn {
                        c.close_writer();
                    }
                }
            }),
            Next::Close(id) => env.on_close(id),
        };
        sh.metrics.call_seconds.observe(started.elapsed());
        if let Err(e) = result {
            sh.counters.count_fault(&e);
            return Err(e.to_string());
        }
    }
}
