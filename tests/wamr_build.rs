//! The WAMR that build.rs compiles: its configuration, the accessors in
//! `wamr/src/inst_access.c`, instruction metering, and the CVE regressions.
use wamr_coro::wamr::MemoryPages;
use wamr_coro::*;

fn setup() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        Runtime::init(RuntimeConfig::default()).unwrap();
    });
}

/// Three globals in a known layout: i32 at 0, i64 at 4 (WAMR packs them),
/// and a counter that `bump` increments.
const GLOBALS_WAT: &str = r#"
(module
  (memory (export "memory") 2 5)
  (global $a (mut i32) (i32.const 0x11223344))
  (global $b (mut i64) (i64.const 0x0102030405060708))
  (global $n (mut i32) (i32.const 7))
  (func (export "bump") (result i32)
    (global.set $n (i32.add (global.get $n) (i32.const 1)))
    (global.get $n))
  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
)"#;

#[test]
fn global_data_shows_and_restores_the_globals() {
    setup();
    let m = Module::from_wat(GLOBALS_WAT).unwrap();
    let mut env = ExecEnv::new(&m, InstanceConfig::default()).unwrap();
    let fresh = env.global_data().to_vec();
    assert!(fresh.len() >= 16, "global area of {} bytes", fresh.len());
    // The initial values are in it, little-endian.
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    assert!(find(&fresh, &0x11223344u32.to_le_bytes()).is_some(), "{fresh:02x?}");
    assert!(find(&fresh, &0x0102030405060708u64.to_le_bytes()).is_some(), "{fresh:02x?}");
    let bump = env.func(&m, "bump").unwrap();
    assert_eq!(env.call_i32(&bump, &[]).unwrap(), Some(8));
    assert_eq!(env.call_i32(&bump, &[]).unwrap(), Some(9));
    assert_ne!(env.global_data(), &fresh[..], "bump changed a global");
    // Writing the snapshot back resets the guest's state.
    env.global_data().copy_from_slice(&fresh);
    assert_eq!(env.call_i32(&bump, &[]).unwrap(), Some(8));
}

#[test]
fn global_data_is_empty_without_globals() {
    setup();
    let m = Module::from_wat(r#"(module (func (export "f")))"#).unwrap();
    let mut env = ExecEnv::new(&m, InstanceConfig::default()).unwrap();
    assert!(env.global_data().is_empty());
}

#[test]
fn memory_max_pages_caps_growth_within_the_declared_range() {
    setup();
    let m = Module::from_wat(GLOBALS_WAT).unwrap();
    let mut env = ExecEnv::new(&m, InstanceConfig::default()).unwrap();
    let grow = env.func(&m, "grow").unwrap();
    assert_eq!(env.memory_pages(), Some(MemoryPages { current: 2, max: 5, page_bytes: 65536, shared: false }));

    env.set_memory_max_pages(3).unwrap();
    assert_eq!(env.memory_pages().unwrap().max, 3);
    assert_eq!(env.call_i32(&grow, &[2]).unwrap(), Some(-1), "past the lowered cap");
    assert_eq!(env.call_i32(&grow, &[1]).unwrap(), Some(2), "up to it");
    assert_eq!(env.memory_pages().unwrap().current, 3);

    // Below the current size, above the declared maximum: refused, unchanged.
    let e = env.set_memory_max_pages(2).unwrap_err().to_string();
    assert!(e.contains("below the current size"), "{e}");
    let e = env.set_memory_max_pages(6).unwrap_err().to_string();
    assert!(e.contains("declared maximum"), "{e}");
    assert_eq!(env.memory_pages().unwrap().max, 3);

    // Raised back to the declared maximum, growth works again.
    env.set_memory_max_pages(5).unwrap();
    assert_eq!(env.call_i32(&grow, &[2]).unwrap(), Some(3));
    assert_eq!(env.call_i32(&grow, &[1]).unwrap(), Some(-1));
}

/// Declares no maximum; has a `memory.grow`, else WAMR folds the memory into
/// one big page that cannot grow (see the next test).
const GROWS_WAT: &str =
    r#"(module (memory 1) (func (export "f") (drop (memory.grow (i32.const 1)))))"#;

#[test]
fn memory_that_never_grows_is_one_page_of_its_whole_size() {
    setup();
    let m = Module::from_wat(r#"(module (memory 3) (func (export "f")))"#).unwrap();
    let mut env = ExecEnv::new(&m, InstanceConfig::default()).unwrap();
    let p = env.memory_pages().unwrap();
    assert_eq!((p.current, p.max, p.page_bytes), (1, 1, 3 * 65536));
    assert!(env.set_memory_max_pages(2).is_err());
    env.set_memory_max_pages(1).unwrap();
}

#[test]
fn memory_max_pages_without_declared_max_uses_wamrs_default() {
    setup();
    let m = Module::from_wat(GROWS_WAT).unwrap();
    let mut env = ExecEnv::new(&m, InstanceConfig::default()).unwrap();
    env.set_memory_max_pages(65536).unwrap();
    assert!(env.set_memory_max_pages(65537).is_err());
    env.set_memory_max_pages(1).unwrap();
}

#[test]
fn memory_max_pages_refuses_shared_and_absent_memory() {
    setup();
    let m = Module::from_wat(
        r#"(module (memory 1 4 shared) (func (export "f") (drop (memory.grow (i32.const 1)))))"#,
    )
    .unwrap();
    let mut env = ExecEnv::new(&m, InstanceConfig::default()).unwrap();
    let e = env.set_memory_max_pages(2).unwrap_err().to_string();
    assert!(e.contains("shared"), "{e}");
    assert_eq!(env.memory_pages().unwrap().max, 4);

    let m = Module::from_wat(r#"(module (func (export "f")))"#).unwrap();
    let mut env = ExecEnv::new(&m, InstanceConfig::default()).unwrap();
    let e = env.set_memory_max_pages(2).unwrap_err().to_string();
    assert!(e.contains("no memory"), "{e}");
}

/// The CVE ids the patch files in `wamr/patches/` name.
fn patched_cves() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("wamr/patches");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| rd.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.retain(|p: &std::path::PathBuf| p.extension().is_some_and(|x| x == "patch"));
    files.sort();
    files
        .iter()
        .flat_map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            let pre = text.split("\n--- ").next().unwrap().to_string();
            pre.lines().filter_map(|l| l.trim().strip_prefix("CVE:").map(|c| c.trim().to_string())).collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn version_flag_prints_wamr_version_fixes_and_features() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wamr-coro")).arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("WAMR 2.4.3"), "{text}");
    let fixes = text.lines().find_map(|l| l.strip_prefix("security fixes: ")).expect(&text);
    let want = patched_cves();
    if want.is_empty() {
        assert_eq!(fixes, "none");
    } else {
        assert_eq!(fixes.split(' ').collect::<Vec<_>>(), want, "{text}");
    }
    let features = text.lines().find_map(|l| l.strip_prefix("features: ")).expect(&text);
    for f in ["fast-interp", "aot-loader", "thread-mgr", "shared-memory", "bulk-memory",
              "reference-types", "instruction-metering", "software-bound-checks"] {
        assert!(features.split(' ').any(|x| x == f), "{f} missing: {text}");
    }
    let off = text.lines().find_map(|l| l.strip_prefix("left out: ")).expect(&text);
    assert!(off.contains("simd") && off.contains("hw-bound-checks"), "{text}");
}
