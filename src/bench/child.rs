//! Child processes as the bench parent sees them: servers (`serve` or
//! `bench-native`) and load clients (`bench-client`), each the same binary.
//!
//! A thread per child turns its stdout into a channel of lines; every wait
//! on a child is bounded. Dropping a [`Child`] kills the process if it is
//! still running, so nothing outlives the bench.
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Lines of a quiet child's stderr kept, the last ones, to say why it
/// ended early; and the most of each line kept.
const STDERR_TAIL_LINES: usize = 20;
const STDERR_LINE_MAX: usize = 1000;

/// A child process with line-wise stdout.
pub struct Child {
    what: String,
    child: std::process::Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// The last lines of its stderr, when it is not shown as it comes, and
    /// the thread that reads them.
    stderr_tail: Option<(Arc<Mutex<VecDeque<String>>>, std::thread::JoinHandle<()>)>,
}

impl Child {
    /// Starts this binary with `args`; stderr goes to the bench's stderr
    /// only if `show_stderr` (otherwise its last lines are kept, for the
    /// error should it end before it is ready).
    pub fn spawn(what: impl Into<String>, args: &[String], show_stderr: bool) -> Result<Child> {
        Child::spawn_wrapped(what, &[], args, show_stderr)
    }

    /// Like [`Child::spawn`], but runs this binary under `wrapper` (a
    /// program and its arguments, e.g. valgrind) when it is not empty.
    pub fn spawn_wrapped(
        what: impl Into<String>,
        wrapper: &[String],
        args: &[String],
        show_stderr: bool,
    ) -> Result<Child> {
        let what = what.into();
        let exe = std::env::current_exe().map_err(|e| Error::io("locating the wamr-coro binary", e))?;
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        let mut child = cmd
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(if show_stderr { Stdio::inherit() } else { Stdio::piped() })
            .spawn()
            .map_err(|e| Error::io(format!("starting {what}"), e))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // A quiet child's stderr is drained by a thread that keeps its last
        // lines: the child never blocks on a full pipe, and the memory is
        // bounded however much it writes.
        let stderr_tail = child.stderr.take().map(|stderr| {
            let tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL_LINES)));
            let keep = Arc::clone(&tail);
            let reader = std::thread::spawn(move || {
                for line in BufReader::new(stderr).split(b'\n') {
                    let Ok(line) = line else { break };
                    let mut line = String::from_utf8_lossy(&line[..line.len().min(STDERR_LINE_MAX)]).into_owned();
                    line.truncate(line.trim_end().len());
                    let mut t = keep.lock().unwrap_or_else(|e| e.into_inner());
                    if t.len() == STDERR_TAIL_LINES {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            });
            (tail, reader)
        });
        let stdin = child.stdin.take();
        Ok(Child { what, child, stdin, lines, stderr_tail })
    }

    /// The last lines its stderr had written, indented, after a colon; or
    /// how to see them, if its stderr was shown already or said nothing.
    fn stderr_says(&self) -> String {
        // Its reader ends with the pipe, soon after the child (unless a
        // process the child started holds the pipe: then what came so far).
        if let Some((_, reader)) = &self.stderr_tail {
            let deadline = Instant::now() + Duration::from_secs(1);
            while !reader.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let tail = self.stderr_tail.as_ref().map(|(t, _)| t.lock().unwrap_or_else(|e| e.into_inner()).clone());
        match tail {
            Some(t) if !t.is_empty() => {
                let lines: Vec<String> = t.iter().map(|l| format!("    {l}")).collect();
                format!("; its stderr ended with:\n{}", lines.join("\n"))
            }
            Some(_) => " (it wrote nothing to stderr)".into(),
            None => " (its stderr is above)".into(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next stdout line starting with `prefix` (others are skipped),
    /// without the prefix; an error past `timeout` or if the child ends.
    pub fn expect_line(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok(rest.trim().to_string());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(Error::Bench(format!("{}: no `{prefix}` line within {timeout:?}", self.what)))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
                    return Err(Error::Bench(format!(
                        "{} ended ({status}) before printing `{prefix}`{}",
                        self.what,
                        self.stderr_says()
                    )));
                }
            }
        }
    }

    /// Every line available now, without waiting.
    pub fn pending_lines(&mut self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// Whether the process has ended.
    pub fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Writes one line to its stdin.
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        let what = &self.what;
        let stdin = self.stdin.as_mut().ok_or_else(|| Error::Bench(format!("{what}: stdin closed")))?;
        writeln!(stdin, "{line}").and_then(|_| stdin.flush()).map_err(|e| Error::io(format!("writing to {what}"), e))
    }

    /// Closes its stdin (a server stops, a hold client lets go).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Sends `sig` and waits up to `timeout` for the exit; kills it past
    /// that. Returns whether it exited by itself with status 0.
    pub fn stop(mut self, sig: i32, timeout: Duration) -> bool {
        self.signal(sig);
        self.wait(timeout)
    }

    /// Sends `sig` (if the process has not been reaped yet).
    pub fn signal(&mut self, sig: i32) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on our own child's pid, which has not been
            // reaped (try_wait just saw it running), so it is not reused.
            unsafe { libc::kill(self.child.id() as i32, sig) };
        }
    }

    /// Waits up to `timeout` for the exit; kills it past that. Returns
    /// whether it exited by itself with status 0.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) => return s.success(),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return false;
                }
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A server child: its address, and its `stats` answers.
pub struct Server {
    /// The process.
    pub child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Server {
    /// Starts a server child and waits for its `listening on` line.
    pub fn start(what: impl Into<String>, args: &[String], show_stderr: bool) -> Result<Server> {
        Server::start_wrapped(what, &[], args, show_stderr)
    }

    /// Like [`Server::start`], under `wrapper` (see [`Child::spawn_wrapped`]).
    pub fn start_wrapped(
        what: impl Into<String>,
        wrapper: &[String],
        args: &[String],
        show_stderr: bool,
    ) -> Result<Server> {
        let mut child = Child::spawn_wrapped(what, wrapper, args, show_stderr)?;
        let line = child.expect_line("listening on ", Duration::from_secs(60))?;
        let addr = line.parse().map_err(|_| Error::Bench(format!("{}: bad address {line:?}", child.what)))?;
        Ok(Server { child, addr })
    }

    /// Its figures now (`stats` over stdin), as JSON.
    pub fn stats(&mut self) -> Result<serde_json::Value> {
        self.child.send_line("stats")?;
        let line = self.child.expect_line("stats ", Duration::from_secs(10))?;
        serde_json::from_str(&line).map_err(|e| Error::Bench(format!("{}: bad stats line: {e}", self.child.what)))
    }

    /// Graceful stop (SIGINT), bounded. Returns whether it exited cleanly.
    pub fn stop(self) -> bool {
        self.stop_within(Duration::from_secs(20))
    }

    /// Graceful stop (SIGINT), waiting up to `timeout` (a server under
    /// valgrind checks for leaks as it exits). Returns whether it exited
    /// cleanly.
    pub fn stop_within(self, timeout: Duration) -> bool {
        self.child.stop(libc::SIGINT, timeout)
    }

    /// Stops several servers at once (each destroys its envs in parallel
    /// with the others), bounded. Returns how many exited cleanly.
    pub fn stop_all(servers: Vec<Server>) -> usize {
        let mut servers = servers;
        for s in &mut servers {
            s.child.signal(libc::SIGINT);
        }
        let mut clean = 0;
        for s in &mut servers {
            clean += usize::from(s.child.wait(Duration::from_secs(30)));
        }
        clean
    }
}
