//! `wamr-coro bench`, run as a user runs it: short runs, real servers in
//! child processes, the JSON checked field by field.
mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

fn bench(args: &[&str]) -> (Value, String) {
    static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("wamr-coro-bench-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("bench.json");
    let out = common::wamr_coro().arg("bench").args(args).args(["--json", json.to_str().unwrap()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "bench failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (v, stdout)
}

fn run<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["runs"].as_array().unwrap().iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("no {name} run in {v}"))
}

#[test]
fn short_bench_of_every_mode_reports_a_valid_json() {
    let (v, table) = bench(&["--mode", "all", "--conns", "4", "--duration", "1"]);
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3, "{v}");
    assert_eq!(runs[0]["name"], "native", "native is reported first");
    for name in ["native", "direct", "queue"] {
        let r = run(&v, name);
        for key in ["req_s", "p50_us", "p99_us", "p999_us", "errors", "ratio_to_native", "rss_per_conn_kib", "cpu_s"] {
            assert!(r[key].is_number(), "{name}.{key} missing or not a number: {r}");
        }
        assert!(r["req_s"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["errors"], 0, "{r}");
        assert_eq!(r["protocol"], "http");
        assert!(r["p50_us"].as_u64().unwrap() <= r["p99_us"].as_u64().unwrap());
        assert!(r["p99_us"].as_u64().unwrap() <= r["p999_us"].as_u64().unwrap());
        assert!(r["cpu_s"].as_f64().unwrap() > 0.0, "the server did work: {r}");
        assert!(table.contains(name), "{table}");
    }
    assert_eq!(run(&v, "native")["ratio_to_native"], 1.0);
    assert_eq!(run(&v, "native")["live_envs_end"], 0);
    // Direct mode: one env per connection, kept by the pool afterwards.
    assert!(run(&v, "direct")["live_envs_end"].as_u64().unwrap() >= 1);
    assert!(v["machine"].is_string() && v["date"].is_string());
}

#[test]
fn echo_guest_is_probed_and_pipelined_requests_are_checked() {
    let echo = common::guest_path("echo.wat");
    let (v, _) =
        bench(&[echo.to_str().unwrap(), "--mode", "queue", "--conns", "3", "--duration", "1", "--pipeline", "4"]);
    for name in ["native", "queue"] {
        let r = run(&v, name);
        assert_eq!(r["protocol"], "echo", "{r}");
        assert_eq!(r["pipeline"], 4);
        assert_eq!(r["errors"], 0, "{r}");
        assert!(r["requests"].as_u64().unwrap() > 0, "{r}");
    }
}

#[test]
fn hold_reports_every_connection_held() {
    // A bound far above what a connection keeps passes.
    let (v, _) = bench(&["--mode", "direct", "--hold", "200", "--max-kib-per-conn", "1024"]);
    let holds = v["holds"].as_array().unwrap();
    assert_eq!(holds.len(), 2, "{v}");
    for h in holds {
        assert_eq!(h["held"], 200, "{h}");
        assert_eq!(h["errors"], 0, "{h}");
        let per_server: u64 = h["open_per_server"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).sum();
        assert_eq!(per_server, 200, "the servers see every held connection: {h}");
        assert!(h["rss_per_conn_kib"].as_f64().unwrap() > 0.0, "{h}");
    }
    let direct = holds.iter().find(|h| h["name"] == "direct").unwrap();
    assert_eq!(direct["live_envs"], 200, "one env per held connection: {direct}");
}

/// The load generator compares every response byte: told to expect other
/// bytes than the server sends, it counts errors instead of requests.
#[test]
fn wrong_response_bytes_are_counted_as_errors() {
    let mut server = common::wamr_coro()
        .args([
            "bench-native",
            "--spec",
            r#"{"listen":"127.0.0.1:0","protocol":"http","workers":1,"reuse_port":false}"#,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").unwrap().to_string();
    // Same length as the real response, one byte different.
    let mut expected = common::HTTP_RESPONSE.to_vec();
    *expected.last_mut().unwrap() = b'?';
    let spec = serde_json::json!({
        "addr": addr, "conns": 2, "protocol": "http", "expected": expected, "pipeline": 1,
        "duration_s": 0.3, "workers": 1, "hold": false, "open_threads": 0
    });
    let out = common::wamr_coro().args(["bench-client", "--spec", &spec.to_string()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: Value = serde_json::from_str(stdout.lines().find_map(|l| l.strip_prefix("result ")).unwrap()).unwrap();
    assert_eq!(result["requests"], 0, "{result}");
    assert!(result["wrong_bytes"].as_u64().unwrap() > 0, "{result}");
    assert_eq!(result["errors"], result["wrong_bytes"], "{result}");
    // Closing its stdin stops the native server.
    drop(server.stdin.take());
    common::wait_exit(&mut server, Duration::from_secs(20), "native server did not stop when stdin closed");
}

/// `bench --engine` reaches the servers it starts: their logs (shown with
/// --verbose) say how each ran the guest.
#[test]
fn the_engine_is_passed_to_the_servers() {
    let engine_log = |engine: Option<&str>| {
        let mut c = common::wamr_coro();
        c.args(["bench", "--mode", "direct", "--conns", "2", "--duration", "1", "--verbose"]);
        if let Some(e) = engine {
            c.args(["--engine", e]);
        }
        let out = c.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "bench failed: {stderr}");
        stderr
    };
    let log = engine_log(Some("interp"));
    assert!(log.contains("guest interpreted") && !log.contains("guest AOT-compiled"), "{log}");
    if wamr_coro::aot::compiler_available() {
        let log = engine_log(None);
        assert!(log.contains("guest AOT-compiled") && !log.contains("guest interpreted"), "{log}");
    }
}

/// A bench of nothing (no connections, no requests in flight, no time) is
/// an error naming the flag: it used to print a row of zeros, with 10,000 µs
/// of CPU per request, and exit 0 as if it had measured something.
#[test]
fn a_bench_of_nothing_is_refused_by_name() {
    for (args, want) in [
        (&["--conns", "0", "--duration", "1"][..], "--conns and --pipeline must be at least 1"),
        (&["--pipeline", "0", "--duration", "1"][..], "--conns and --pipeline must be at least 1"),
        (&["--duration", "0"][..], "--duration must be a positive number of seconds"),
        (&["--hold", "0"][..], "--hold needs at least 1 connection"),
        (&["--hold", "10", "--max-kib-per-conn", "0"][..], "--max-kib-per-conn must be a positive number of KiB"),
    ] {
        let (status, out, err) = common::run_to_exit(
            common::wamr_coro().args(["bench", "--mode", "direct"]).args(args),
            Duration::from_secs(60),
            "bench of nothing did not end",
        );
        assert_eq!(status.code(), Some(1), "{args:?}: {out}{err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!out.contains("native"), "{args:?} printed a result: {out}");
    }
}

/// `--duration 1e300` passed the check (positive and finite) and panicked
/// making it a `Duration` (exit 101, a backtrace); past a year it is
/// refused by name now.
#[test]
fn a_bench_duration_too_long_to_represent_is_refused_not_a_panic() {
    for d in ["1e300", "1e8"] {
        let (status, out, err) = common::run_to_exit(
            common::wamr_coro().args(["bench", "--mode", "direct", "--conns", "1", "--duration", d]),
            Duration::from_secs(60),
            "bench of an endless duration did not end",
        );
        assert_eq!(status.code(), Some(1), "{d}: {out}{err}");
        assert!(err.contains("--duration must be a positive number of seconds, at most 31536000"), "{d}: {err}");
        assert!(!err.contains("panicked"), "{d}: {err}");
    }
}

/// A server that ends before it listens: the bench says why, from the
/// server's own stderr. It used to say only that it "ended before printing
/// `listening on` (run it by hand to see why)": the server's stderr went
/// to /dev/null.
#[test]
fn a_server_that_cannot_start_is_explained_by_its_own_words() {
    for (args, want) in [
        (&["/nonexistent/guest.wasm"][..], "cannot read module /nonexistent/guest.wasm"),
        (&["--server-workers", "0"][..], "workers must be at least 1"),
    ] {
        let (status, out, err) = common::run_to_exit(
            common::wamr_coro().args(["bench", "--mode", "direct", "--duration", "1"]).args(args),
            Duration::from_secs(60),
            "bench of a server that cannot start did not end",
        );
        assert_eq!(status.code(), Some(1), "{args:?}: {out}{err}");
        assert!(
            err.contains("ended (exit status: 1) before printing `listening on `; its stderr ended with:"),
            "{args:?}: {err}"
        );
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// `--max-kib-per-conn` fails the run, after printing its table, when a
/// WebAssembly server keeps more per held connection (CI's memory guard).
#[test]
fn hold_over_max_kib_per_conn_fails_naming_the_server() {
    let (status, out, err) = common::run_to_exit(
        common::wamr_coro().args(["bench", "--mode", "direct", "--hold", "200", "--max-kib-per-conn", "0.5"]),
        Duration::from_secs(120),
        "hold bench did not end",
    );
    assert_eq!(status.code(), Some(1), "{out}{err}");
    assert!(err.contains("over --max-kib-per-conn 0.5: direct keeps"), "{err}");
    assert!(!err.contains("native keeps"), "the native baseline is not judged: {err}");
    assert!(out.contains("direct"), "the table is printed first: {out}");
}

/// The bench is one client spread over a few source addresses: its servers
/// must not apply the per-address limit (2,500 by default), which refused
/// the connections of a hold past it as errors.
#[test]
fn a_hold_past_the_per_address_limit_is_held_whole() {
    let (v, _) = bench(&["--mode", "direct", "--hold", "2600"]);
    for h in v["holds"].as_array().unwrap() {
        assert_eq!(h["errors"], 0, "{h}");
        assert_eq!(h["held"], 2600, "{h}");
    }
}
