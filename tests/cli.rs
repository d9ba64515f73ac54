//! The binary, as the README's first command runs it.
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{connect, read_n, HTTP_RESPONSE};

fn serve(args: &[&str]) -> (std::process::Child, std::net::SocketAddr, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wamr-coro"))
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--workers", "2"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line:?}")).parse().unwrap();
    (child, addr, out)
}

fn stop(child: std::process::Child, out: BufReader<std::process::ChildStdout>) -> (i32, String) {
    stop_with(child, out, libc::SIGINT)
}

fn stop_with(mut child: std::process::Child, out: BufReader<std::process::ChildStdout>, sig: i32) -> (i32, String) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, sig) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "server did not exit after SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
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
    let o = Command::new(env!("CARGO_BIN_EXE_wamr-coro")).args(["serve", bad.to_str().unwrap()]).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("WAMR could not load the module"), "{err}");
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
