//! The binary, as the README's first command runs it.
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{connect, read_n, signal, spawn_server, wait_exit, HTTP_RESPONSE};

fn serve(args: &[&str]) -> (common::ServerChild, std::net::SocketAddr, BufReader<std::process::ChildStdout>) {
    let mut cmd = common::wamr_coro();
    cmd.arg("serve").args(["--listen", "127.0.0.1:0", "--workers", "2"]).args(args);
    spawn_server(&mut cmd)
}

fn stop(child: common::ServerChild, out: BufReader<std::process::ChildStdout>) -> (i32, String) {
    stop_with(child, out, libc::SIGINT)
}

fn stop_with(mut child: common::ServerChild, out: BufReader<std::process::ChildStdout>, sig: i32) -> (i32, String) {
    signal(&child, sig);
    let status = wait_exit(&mut child, Duration::from_secs(20), "server did not exit after SIGINT");
    let rest: Vec<String> = out.lines().map_while(Result::ok).collect();
    (status.code().unwrap_or(-1), rest.join("\n"))
}

#[test]
fn serve_default_guest_answers_http_and_exits_cleanly_on_sigint() {
    let (child, addr, out) = serve(&[]);
    let mut s = connect(addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    assert_eq!(read_n(&mut s, HTTP_RESPONSE.len()).unwrap(), HTTP_RESPONSE);
    // curl, as the README says, when it is installed.
    if let Ok(o) = Command::new("curl").args(["-s", "--max-time", "5", &format!("http://{addr}/")]).output() {
        assert_eq!(String::from_utf8_lossy(&o.stdout), "Hello from wamr-coro\n");
    }
    // An open connection at shutdown is closed gracefully.
    let (code, stats) = stop(child, out);
    assert_eq!(code, 0);
    assert!(stats.contains("envs: 0 live"), "{stats}");
}

#[test]
fn serve_module_file_and_clear_error_for_bad_module() {
    let echo = common::guest_path("echo.wat");
    let (child, addr, out) = serve(&[echo.to_str().unwrap(), "--policy", "message", "--source", "spawn"]);
    let mut s = connect(addr);
    common::echo_round(&mut s, b"hello");
    let (code, stats) = stop_with(child, out, libc::SIGTERM);
    assert_eq!(code, 0);
    assert!(stats.contains("envs: 0 live"), "{stats}");

    // Queue mode from the command line.
    let (child, addr, out) = serve(&[echo.to_str().unwrap(), "--mode", "queue"]);
    common::echo_round(&mut connect(addr), b"queued hello");
    let (code, _) = stop(child, out);
    assert_eq!(code, 0);

    let dir = std::env::temp_dir().join(format!("wamr-coro-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.wasm");
    std::fs::write(&bad, b"\0asm\x01\0\0\0\x01\xff").unwrap();
    let o = common::wamr_coro().args(["serve", bad.to_str().unwrap()]).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cannot load the module"), "{err}");
    // The loader's error alone: not first a fallback from compiling to
    // interpreting that then fails.
    assert!(!err.contains("interpreting it"), "{err}");
    // A refusal made before WAMR saw the bytes does not name WAMR.
    let empty = dir.join("empty.wasm");
    std::fs::write(&empty, b"").unwrap();
    let o = common::wamr_coro().args(["serve", empty.to_str().unwrap()]).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cannot load the module") && err.contains("is empty"), "{err}");
    assert!(!err.contains("WAMR"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn out_of_file_descriptors_refuses_and_recovers() {
    // A hard limit of 48 descriptors: the server cannot hold 80 connections.
    let script =
        format!("ulimit -n 48 && exec {} serve --listen 127.0.0.1:0 --workers 2", env!("CARGO_BIN_EXE_wamr-coro"));
    let mut cmd = Command::new("bash");
    cmd.args(["-c", &script]);
    let (child, addr, out) = spawn_server(&mut cmd);
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..80 {
        let mut s = connect(addr);
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        match read_n(&mut s, HTTP_RESPONSE.len()) {
            Ok(got) => {
                assert_eq!(got, HTTP_RESPONSE);
                held.push(s);
            }
            Err(_) => refused += 1,
        }
    }
    assert!(refused > 0, "80 connections fit in 48 descriptors?");
    assert!(held.len() >= 20, "only {} connections served", held.len());
    // When load drops, the server serves again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = connect(addr);
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        if let Ok(got) = read_n(&mut s, HTTP_RESPONSE.len()) {
            assert_eq!(got, HTTP_RESPONSE);
            break;
        }
        assert!(Instant::now() < deadline, "the server did not recover");
    }
    let (code, stats) = stop(child, out);
    assert_eq!(code, 0);
    let n: u64 =
        stats.split("accepted, ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(n >= refused as u64, "refusals not counted: {stats}");
}

#[test]
fn a_second_signal_while_draining_exits_at_once() {
    let faulty = common::guest_path("faulty.wat");
    let (mut child, addr, _out) =
        serve(&[faulty.to_str().unwrap(), "--call-budget-ms", "0", "--shutdown-grace-ms", "30000"]);
    // A guest that never returns keeps the graceful stop waiting 30 s.
    let mut spin = connect(addr);
    spin.write_all(b"S").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    signal(&child, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "the first signal should drain, not exit");
    signal(&child, libc::SIGINT);
    let status = wait_exit(&mut child, Duration::from_secs(5), "the second signal did not end the process");
    assert_eq!(status.code(), Some(130));
}

#[test]
fn sighup_reloads_the_module_from_disk() {
    let dir = std::env::temp_dir().join(format!("wamr-coro-hup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("guest.wat");
    std::fs::copy(common::guest_path("echo.wat"), &path).unwrap();
    let (child, addr, out) = serve(&[path.to_str().unwrap()]);
    let mut before = connect(addr);
    common::echo_round(&mut before, b"v1");
    // The default HTTP guest replaces the echo guest on disk.
    std::fs::copy(common::guest_path("http.wat"), &path).unwrap();
    signal(&child, libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = connect(addr);
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        // 18 bytes either way: the echo of the request, or the start of the
        // HTTP guest's answer.
        let mut got = read_n(&mut s, 18).unwrap();
        if got.starts_with(b"HTTP/1.1 200") {
            got.extend(read_n(&mut s, HTTP_RESPONSE.len() - 18).unwrap());
            assert_eq!(got, HTTP_RESPONSE);
            break;
        }
        // Still the echo guest: the signal has not been handled yet.
        assert_eq!(got, b"GET / HTTP/1.1\r\n\r\n");
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The connection from before keeps echoing.
    common::echo_round(&mut before, b"still v1");
    // A broken file on disk: the reload fails, the server keeps serving.
    std::fs::write(&path, b"(module (func").unwrap();
    signal(&child, libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    let mut s = connect(addr);
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(read_n(&mut s, HTTP_RESPONSE.len()).unwrap(), HTTP_RESPONSE);
    drop(before);
    let (code, stats) = stop(child, out);
    assert_eq!(code, 0);
    assert!(stats.contains("envs: 0 live"), "{stats}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_instruction_budget_stops_a_spinner_without_a_time_budget() {
    let faulty = common::guest_path("faulty.wat");
    let (child, addr, out) =
        serve(&[faulty.to_str().unwrap(), "--instruction-budget", "2000000", "--call-budget-ms", "0"]);
    let mut sp = connect(addr);
    sp.write_all(b"S").unwrap();
    assert!(common::closed_by_peer(&mut sp, Duration::from_secs(10)), "spinner was not stopped");
    common::echo_round(&mut connect(addr), b"still serving");
    let (code, stats) = stop(child, out);
    assert_eq!(code, 0);
    assert!(stats.contains("0 budget overruns, 1 instruction-budget overruns"), "{stats}");
}

#[test]
fn a_signal_right_after_listening_is_handled_not_fatal() {
    // The server must own SIGHUP/SIGTERM before it prints that it listens:
    // a SIGHUP sent the moment the line appears found the default action
    // once (the process died, a client got a reset).
    for _ in 0..20 {
        let (child, addr, out) = serve(&[]);
        signal(&child, libc::SIGHUP);
        let mut s = connect(addr);
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(read_n(&mut s, HTTP_RESPONSE.len()).unwrap(), HTTP_RESPONSE);
        let (code, _) = stop(child, out);
        assert_eq!(code, 0);
    }
}

/// A module file past the 256 MiB module limit is refused by its size,
/// unread. Before, `serve` (and `compile`) read the whole file into memory
/// first and only then compared its length with the limit: a 1 GiB file
/// cost 1 GiB of memory before the error, and `/dev/zero` until the process
/// was killed. Measured by the child's peak resident memory (a sparse file:
/// nothing on disk).
#[test]
fn an_oversized_module_file_is_refused_unread() {
    let dir = std::env::temp_dir().join(format!("wamr-coro-cli-big-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let big = dir.join("big.wasm");
    std::fs::File::create(&big).unwrap().set_len(1 << 30).unwrap();
    for cmd in ["serve", "compile"] {
        let mut args = vec![cmd, big.to_str().unwrap()];
        if cmd == "serve" {
            args.extend(["--listen", "127.0.0.1:0"]);
        } else {
            args.extend(["-o", "/dev/null"]);
        }
        // Reaped below with wait4, which clippy cannot see.
        #[allow(clippy::zombie_processes)]
        let child = common::wamr_coro()
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id() as libc::pid_t;
        // Reaped with wait4 for its resource use (bounded: 60 s).
        let deadline = Instant::now() + Duration::from_secs(60);
        // SAFETY: `rusage` is plain integers and timevals: all-zero is valid.
        let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
        loop {
            // SAFETY: `pid` is our child, not reaped yet; both out-pointers
            // are valid for the call.
            let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
            if r == pid {
                break;
            }
            if Instant::now() > deadline {
                // SAFETY: our child, not reaped.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let _ = std::fs::remove_dir_all(&dir);
                panic!("{cmd}: still running after 60 s on a 1 GiB module file");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.unwrap(), &mut err).unwrap();
        let peak_mib = usage.ru_maxrss as u64 / 1024;
        assert!(peak_mib < 256, "{cmd}: peaked at {peak_mib} MiB resident to refuse a 1 GiB module file");
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) != 0, "{cmd}: {status} {err}");
        assert!(err.contains("1073741824 bytes") && err.contains("module limit"), "{cmd}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--help` states each default twice: clap's `[default: X]`, and the words
/// of a possible value's help ("(default)", "The default"). Both must name
/// the same value: `--call-stack`'s `coroutine` once said "The default"
/// (`CallStack`'s default for a bare `ExecEnv`) while `serve` used `worker`.
#[test]
fn help_names_the_default_each_flag_really_has() {
    let mut checked = 0;
    for sub in ["serve", "bench", "stress", "compile"] {
        let (status, help, err) =
            common::run_to_exit(common::wamr_coro().args([sub, "--help"]), Duration::from_secs(20), "--help");
        assert!(status.success(), "{sub} --help: {err}");
        // Option blocks start at a line whose first word is a flag.
        let mut blocks: Vec<Vec<&str>> = Vec::new();
        for line in help.lines() {
            let t = line.trim_start();
            if t.starts_with("--") || (t.starts_with('-') && t.get(2..4) == Some(", ")) {
                blocks.push(vec![t]);
            } else if let Some(b) = blocks.last_mut() {
                b.push(t);
            }
        }
        for block in blocks {
            let Some(default) = block.iter().find_map(|l| l.strip_prefix("[default: ")?.strip_suffix(']')) else {
                continue;
            };
            for l in &block {
                let Some((value, text)) = l.strip_prefix("- ").and_then(|v| v.split_once(':')) else { continue };
                if text.to_lowercase().contains("default") {
                    checked += 1;
                    assert_eq!(value.trim(), default, "{sub} {}: the value whose help says default", block[0]);
                }
            }
        }
    }
    assert!(checked >= 2, "found only {checked} possible values that name a default");
}

/// A module file replaced by a FIFO: the SIGHUP reload opened it and
/// waited for a writer forever, and with it the loop that handles signals,
/// so SIGTERM no longer stopped the server. Now it reads as empty, the
/// reload fails, the old guest keeps serving and the server stops.
#[test]
fn a_reload_from_a_fifo_nobody_writes_does_not_hang_the_server() {
    let dir = std::env::temp_dir().join(format!("wamr-coro-fifo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("guest.wat");
    std::fs::copy(common::guest_path("echo.wat"), &path).unwrap();
    let mut cmd = common::wamr_coro();
    cmd.args(["serve", path.to_str().unwrap(), "--listen", "127.0.0.1:0", "--workers", "2", "--engine", "interp"]);
    let log = dir.join("stderr");
    cmd.stderr(std::fs::File::create(&log).unwrap()).stdout(std::process::Stdio::piped());
    let mut child = common::ServerChild(cmd.spawn().unwrap());
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line:?}")).parse().unwrap();
    std::fs::remove_file(&path).unwrap();
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path; mkfifo only creates a file.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    signal(&child, libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log).unwrap().contains("reload failed") {
        assert!(Instant::now() < deadline, "the reload from a FIFO did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
    common::echo_round(&mut connect(addr), b"the old guest");
    let (code, _) = stop_with(child, out, libc::SIGTERM);
    assert_eq!(code, 0);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("is empty (or a pipe nobody wrote to)"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A reload that takes long (here: its module file is a FIFO whose writer
/// sends nothing; in life, compiling a large guest, up to the compile time
/// limit) ran on the thread that handles signals, so SIGINT and SIGTERM
/// went unseen until it ended: the second one too, which the README says
/// exits at once. Now the reload runs beside that thread: a stop signal
/// during it stops the server once it ends, and a second one exits now
/// (status 130).
#[test]
fn a_second_stop_signal_during_a_slow_reload_exits_at_once() {
    let dir = std::env::temp_dir().join(format!("wamr-coro-slow-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Starts a server on a copy of echo.wat, then makes that path a FIFO
    // with a writer that writes nothing, and sends SIGHUP: the reload
    // blocks reading it until the writer goes.
    let slow_reload = |name: &str| {
        let path = dir.join(name);
        std::fs::copy(common::guest_path("echo.wat"), &path).unwrap();
        let (child, addr, out) = serve(&[path.to_str().unwrap(), "--engine", "interp"]);
        std::fs::remove_file(&path).unwrap();
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path; mkfifo only creates a file.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Read and write: opening does not wait for a reader, and the
        // server's read waits for this writer.
        let writer = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        signal(&child, libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(500));
        // The old guest serves meanwhile.
        common::echo_round(&mut connect(addr), b"still served");
        (child, out, writer)
    };

    // SIGTERM, SIGTERM: the second exits at once.
    let (mut child, _out, _writer) = slow_reload("twice.wat");
    signal(&child, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "stopped before the reload in progress ended");
    signal(&child, libc::SIGTERM);
    let status = wait_exit(&mut child, Duration::from_secs(5), "a second SIGTERM during a reload did not exit");
    assert_eq!(status.code(), Some(130));

    // One SIGTERM: the server stops once the reload has ended.
    let (mut child, _out, writer) = slow_reload("once.wat");
    signal(&child, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "stopped before the reload in progress ended");
    drop(writer);
    let status = wait_exit(&mut child, Duration::from_secs(20), "SIGTERM during a reload did not stop the server");
    assert_eq!(status.code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--envs-per-parent 4294967295`: WAMR divides each instance's shadow
/// stack by the value plus one in 32 bits, which wrapped to 0, and the
/// process died of SIGFPE at its first env, with no word of why. Now the
/// value is refused, with the bound.
#[test]
fn an_envs_per_parent_past_its_bound_is_refused_not_a_crash() {
    for sub in [&["serve", "--listen", "127.0.0.1:0"][..], &["stress", "--coroutines", "1"][..]] {
        let mut cmd = common::wamr_coro();
        cmd.args(sub).args(["--envs-per-parent", "4294967295"]);
        let (status, _, err) = common::run_to_exit(&mut cmd, Duration::from_secs(20), "did not exit");
        assert_eq!(status.code(), Some(1), "{sub:?}: {status:?} {err}");
        assert!(err.contains("envs_per_parent must be at most 65535"), "{sub:?}: {err}");
    }
}
