//! Build script: WAMR and the project's own C side.
//!
//! * **WAMR** (the WebAssembly Micro Runtime) is compiled here, with the `cc`
//!   crate, from the WAMR 2.4.3 source tree that the `wamrx-sys` package
//!   carries. `wamrx-sys` is declared under `[target.'cfg(any())'.dependencies]`
//!   so cargo downloads it but never compiles it; `cargo metadata` tells this
//!   script where it is (or set `WAMR_SRC_DIR` to a WAMR checkout). The tree is
//!   copied into `$OUT_DIR`, the project's patches in `wamr/patches/` (the CVE
//!   fixes) are applied to the copy, and the copy is compiled with the defines
//!   in `wamr/config.rs` (one table, also printed by `wamr-coro --version`).
//!   Hardware bound checks are off there, and why is said there.
//! * bindgen binds WAMR's `wasm_export.h` into `$OUT_DIR/wamr_sys.rs`
//!   (`src/wamr/sys.rs`), and reads `wamr/include/wamr_coro.h` (the guest SDK
//!   header) for its `WCORO_*` constants (`$OUT_DIR/abi_consts.rs`, used by
//!   `src/abi.rs`), so host and C guests share one definition of the ABI.
//! * Besides WAMR, the `wamr` archive holds the log bridge
//!   (`wamr/src/log_bridge.c`, WAMR's `BH_VPRINTF`) and `wamr/src/inst_access.c`
//!   (two accessors compiled against WAMR's internal headers with the same
//!   defines, so they see the same struct layout). `wamr/src/natives.c`, the C
//!   host natives, is compiled on its own: it does not include WAMR's headers
//!   but registers through `wamr/include/wamr_coro_host.h`, implemented in Rust.
//!
//! `$OUT_DIR/wamr_build_info.rs` records the WAMR version and the CVE ids of
//! the patches applied, for `--version`.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

include!("wamr/config.rs");

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=wamr/config.rs");
    println!("cargo:rerun-if-changed=wamr/patches");
    println!("cargo:rerun-if-changed=wamr/src");
    println!("cargo:rerun-if-changed=wamr/include");
    println!("cargo:rerun-if-env-changed=WAMR_SRC_DIR");

    let upstream = locate_wamr();
    let wamr = out.join("wasm-micro-runtime");
    copy_tree(&upstream.join("core"), &wamr.join("core"));
    let (patches, cves) = apply_patches(Path::new("wamr/patches"), &wamr);
    let version = wamr_version(&wamr);
    write_build_info(&out, &version, &patches, &cves, &upstream);

    build_wamr(&wamr);
    bind_wamr(&wamr, &out);
    bind_abi(&out);
    build_natives();
    build_compiler(&wamr, &out);
}

/// Where WAMR's source is: `$WAMR_SRC_DIR`, else the `wasm-micro-runtime`
/// directory of the `wamrx-sys` package that `cargo metadata` reports.
fn locate_wamr() -> PathBuf {
    if let Some(dir) = env::var_os("WAMR_SRC_DIR") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("core/iwasm/include/wasm_export.h").exists(),
            "WAMR_SRC_DIR={} is not a WAMR source tree",
            dir.display()
        );
        return dir;
    }
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("Cargo.toml");
    let mut cmd = Command::new(&cargo);
    cmd.args(["metadata", "--format-version", "1", "--manifest-path"]).arg(&manifest);
    if env::var_os("CARGO_NET_OFFLINE").is_some_and(|v| v == "true") {
        cmd.arg("--offline");
    }
    let output = cmd.output().unwrap_or_else(|e| panic!("running `{cargo} metadata`: {e}"));
    assert!(
        output.status.success(),
        "`cargo metadata` failed (needed to find WAMR's source in the wamrx-sys package; \
         `cargo fetch` first when offline, or set WAMR_SRC_DIR):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&output.stdout).expect("cargo metadata printed invalid JSON");
    let pkg = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "wamrx-sys")
        .expect("cargo metadata lists no wamrx-sys package (Cargo.toml must declare it)");
    let manifest_path = PathBuf::from(pkg["manifest_path"].as_str().expect("manifest_path"));
    let dir = manifest_path.parent().unwrap().join("wasm-micro-runtime");
    assert!(dir.join("core/iwasm/include/wasm_export.h").exists(), "{} holds no WAMR source tree", dir.display());
    dir
}

/// Copies `from` to `to` (files and directories; replaces what was there).
fn copy_tree(from: &Path, to: &Path) {
    if to.exists() {
        fs::remove_dir_all(to).expect("clearing the old WAMR copy");
    }
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap_or_else(|e| panic!("reading {}: {e}", from.display())) {
        let entry = entry.unwrap();
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&src, &dst);
        } else {
            fs::copy(&src, &dst).unwrap_or_else(|e| panic!("copying {}: {e}", src.display()));
            // The registry copy is read-only; ours gets patched.
            let mut perm = fs::metadata(&dst).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perm.set_readonly(false);
            fs::set_permissions(&dst, perm).unwrap();
        }
    }
}

/// Applies every `wamr/patches/*.patch` (sorted by name) to the copy in
/// `wamr`. Each patch is a unified diff of one file, paths relative to WAMR's
/// root (`a/core/...`), and names the CVE it fixes in a `CVE: <id>` line of
/// its preamble (other patches name none). Returns the patch names and the
/// CVE ids, in order. Panics if one does not apply.
fn apply_patches(dir: &Path, wamr: &Path) -> (Vec<String>, Vec<String>) {
    let mut patches: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "patch")).collect(),
        Err(_) => Vec::new(),
    };
    patches.sort();
    let mut cves = Vec::new();
    let names = patches.iter().map(|p| p.file_stem().unwrap().to_string_lossy().into_owned()).collect();
    for path in patches {
        let text = fs::read_to_string(&path).unwrap();
        let start =
            text.find("\n--- ").map(|i| i + 1).unwrap_or_else(|| panic!("{}: no unified diff found", path.display()));
        let preamble = &text[..start];
        for line in preamble.lines() {
            if let Some(id) = line.trim().strip_prefix("CVE:") {
                cves.push(id.trim().to_string());
            }
        }
        let patch = diffy::Patch::from_str(&text[start..]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let target = patch
            .original()
            .unwrap_or_else(|| panic!("{}: no file name", path.display()))
            .trim_start_matches("a/")
            .to_string();
        let file = wamr.join(&target);
        let base = fs::read_to_string(&file).unwrap_or_else(|e| panic!("{target}: {e}"));
        let patched = diffy::apply(&base, &patch)
            .unwrap_or_else(|e| panic!("{} does not apply to {target}: {e}", path.display()));
        fs::write(&file, patched).unwrap();
    }
    (names, cves)
}

/// "2.4.3", from the tree's `core/version.h`.
fn wamr_version(wamr: &Path) -> String {
    let text = fs::read_to_string(wamr.join("core/version.h")).expect("core/version.h");
    let num = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("#define {name} ")))
            .unwrap_or_else(|| panic!("{name} missing from version.h"))
            .trim()
            .to_string()
    };
    format!("{}.{}.{}", num("WAMR_VERSION_MAJOR"), num("WAMR_VERSION_MINOR"), num("WAMR_VERSION_PATCH"))
}

fn write_build_info(out: &Path, version: &str, patches: &[String], cves: &[String], upstream: &Path) {
    let quote = |v: &[String]| v.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(", ");
    let (list, patch_list) = (quote(cves), quote(patches));
    let text = format!(
        "/// WAMR's version, from the compiled tree's `core/version.h`.\n\
         pub const WAMR_VERSION: &str = {version:?};\n\
         /// CVE ids fixed by the patches in `wamr/patches/` applied to this build.\n\
         pub const WAMR_CVE_FIXES: &[&str] = &[{list}];\n\
         /// Every patch in `wamr/patches/` applied to this build, by file stem.\n\
         pub const WAMR_PATCHES: &[&str] = &[{patch_list}];\n\
         /// Where the WAMR source tree was taken from.\n\
         pub const WAMR_SOURCE: &str = {:?};\n",
        upstream.display().to_string()
    );
    fs::write(out.join("wamr_build_info.rs"), text).unwrap();
}

/// Target-specific platform define, arch define, and arch files.
fn target_parts() -> (&'static str, &'static str, &'static str, &'static str) {
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap();
    assert_eq!(os, "linux", "wamr-coro builds WAMR for Linux only (target os {os})");
    match env::var("CARGO_CFG_TARGET_ARCH").unwrap().as_str() {
        "x86_64" => (
            "BH_PLATFORM_LINUX",
            "BUILD_TARGET_X86_64",
            "core/iwasm/common/arch/invokeNative_em64.s",
            "core/iwasm/aot/arch/aot_reloc_x86_64.c",
        ),
        "aarch64" => (
            "BH_PLATFORM_LINUX",
            "BUILD_TARGET_AARCH64",
            "core/iwasm/common/arch/invokeNative_aarch64.s",
            "core/iwasm/aot/arch/aot_reloc_aarch64.c",
        ),
        other => panic!("wamr-coro builds WAMR for x86_64 and aarch64 only (target arch {other})"),
    }
}

/// WAMR's sources for this configuration: what its CMake build (runtime_lib.cmake)
/// compiles for the `vmlib` target with the settings in `wamr/config.rs`.
const WAMR_SOURCES: &[&str] = &[
    "core/shared/platform/linux/platform_init.c",
    "core/shared/platform/common/posix/posix_blocking_op.c",
    "core/shared/platform/common/posix/posix_malloc.c",
    "core/shared/platform/common/posix/posix_memmap.c",
    "core/shared/platform/common/posix/posix_sleep.c",
    "core/shared/platform/common/posix/posix_thread.c",
    "core/shared/platform/common/posix/posix_time.c",
    "core/shared/mem-alloc/ems/ems_alloc.c",
    "core/shared/mem-alloc/ems/ems_gc.c",
    "core/shared/mem-alloc/ems/ems_hmu.c",
    "core/shared/mem-alloc/ems/ems_kfc.c",
    "core/shared/mem-alloc/mem_alloc.c",
    "core/shared/utils/bh_assert.c",
    "core/shared/utils/bh_bitmap.c",
    "core/shared/utils/bh_common.c",
    "core/shared/utils/bh_hashmap.c",
    "core/shared/utils/bh_leb128.c",
    "core/shared/utils/bh_list.c",
    "core/shared/utils/bh_log.c",
    "core/shared/utils/bh_queue.c",
    "core/shared/utils/bh_vector.c",
    "core/shared/utils/runtime_timer.c",
    "core/iwasm/common/wasm_application.c",
    "core/iwasm/common/wasm_blocking_op.c",
    "core/iwasm/common/wasm_c_api.c",
    "core/iwasm/common/wasm_exec_env.c",
    "core/iwasm/common/wasm_loader_common.c",
    "core/iwasm/common/wasm_memory.c",
    "core/iwasm/common/wasm_native.c",
    "core/iwasm/common/wasm_runtime_common.c",
    "core/iwasm/common/wasm_shared_memory.c",
    "core/iwasm/interpreter/wasm_interp_fast.c",
    "core/iwasm/interpreter/wasm_loader.c",
    "core/iwasm/interpreter/wasm_runtime.c",
    "core/iwasm/aot/aot_intrinsic.c",
    "core/iwasm/aot/aot_loader.c",
    "core/iwasm/aot/aot_runtime.c",
    "core/iwasm/libraries/thread-mgr/thread_manager.c",
];

/// Include directories, relative to WAMR's root.
const WAMR_INCLUDES: &[&str] = &[
    "core/iwasm/interpreter",
    "core/iwasm/aot",
    "core/iwasm/libraries/thread-mgr",
    "core/iwasm/include",
    "core/shared/platform/linux",
    "core/shared/platform/include",
    "core/shared/mem-alloc",
    "core/iwasm/common",
    "core/shared/utils",
    "core/shared/utils/uncommon",
];

/// Compiles WAMR, the log bridge and inst_access.c into `libwamr.a`. One
/// archive: the linker rescans it until WAMR's reference to the bridge's
/// `wamr_coro_vprintf` is resolved, whatever the order of its members.
fn build_wamr(wamr: &Path) {
    let (platform, arch, invoke, reloc) = target_parts();
    let mut b = cc::Build::new();
    b.define(platform, None).define(arch, None);
    for def in WAMR_DEFINES {
        b.define(def.name, Some(def.value));
    }
    // Debug builds keep WAMR's assertions (BH_DEBUG), as CMake's Debug type did.
    if env::var("PROFILE").as_deref() == Ok("debug") {
        b.define("BH_DEBUG", Some("1"));
    } else {
        b.define("NDEBUG", None);
    }
    for inc in WAMR_INCLUDES {
        b.include(wamr.join(inc));
    }
    for src in WAMR_SOURCES.iter().copied().chain([invoke, reloc]) {
        b.file(wamr.join(src));
    }
    b.file("wamr/src/log_bridge.c").file("wamr/src/inst_access.c");
    b.flag("-std=gnu99")
        .flag("-ffunction-sections")
        .flag("-fdata-sections")
        .flag("-fvisibility=hidden")
        .flag_if_supported("-mindirect-branch-register")
        // WAMR's own code is not ours to lint; its CMake silences the same.
        .warnings(false)
        .flag_if_supported("-Wno-unused-parameter")
        .compile("wamr");

    for lib in ["m", "dl", "pthread"] {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
}

/// bindgen over `wasm_export.h`, with the options wamrx-sys used, so the
/// names in `sys::` stay the same.
fn bind_wamr(wamr: &Path, out: &Path) {
    let include = wamr.join("core/iwasm/include");
    bindgen::Builder::default()
        .header(include.join("wasm_export.h").to_str().unwrap())
        .clang_arg(format!("-I{}", include.display()))
        .use_core()
        .ctypes_prefix("::core::ffi")
        // WAMR's Doxygen comments are not valid rustdoc; see the C headers.
        .generate_comments(false)
        .derive_default(true)
        .derive_debug(true)
        .allowlist_function("wasm_.*")
        .allowlist_type("wasm_.*")
        .allowlist_type("NativeSymbol")
        .allowlist_type("RuntimeInitArgs")
        .allowlist_type("RunningMode")
        .allowlist_type("mem_alloc_type_t")
        .allowlist_type("package_type_t")
        .allowlist_var("WASM_.*")
        .prepend_enum_name(false)
        .generate()
        .expect("bindgen failed on wasm_export.h: bindgen needs libclang (Debian: apt-get install libclang-dev; ./x installs it)")
        .write_to_file(out.join("wamr_sys.rs"))
        .expect("writing wamr_sys.rs");
}

fn bind_abi(out: &Path) {
    let header = "wamr/include/wamr_coro.h";
    bindgen::Builder::default()
        .header(header)
        .allowlist_var("WCORO_.*")
        .allowlist_type("wcoro_event")
        .use_core()
        .generate()
        .expect("bindgen failed on wamr/include/wamr_coro.h: bindgen needs libclang (Debian: apt-get install libclang-dev; ./x installs it)")
        .write_to_file(out.join("abi_consts.rs"))
        .expect("writing abi_consts.rs");
}

fn build_natives() {
    cc::Build::new()
        .file("wamr/src/natives.c")
        .include("wamr/include")
        .warnings(true)
        .extra_warnings(true)
        .flag_if_supported("-std=c11")
        .compile("wamr_coro_c");
}

/// WAMR's sources the AOT compiler driver links, besides the runtime ones:
/// its copy of the runtime is the one WAMR's own `wamr-compiler` CMake
/// builds (classic interpreter's loader, the AOT loader with a dummy
/// relocator, no fast interpreter).
const COMPILER_DEFINES: &[(&str, &str)] = &[
    ("WASM_ENABLE_WAMR_COMPILER", "1"),
    ("WASM_ENABLE_INTERP", "1"),
    ("WASM_ENABLE_FAST_INTERP", "0"),
    ("WASM_ENABLE_AOT", "1"),
    ("WASM_ENABLE_JIT", "0"),
    ("WASM_ENABLE_FAST_JIT", "0"),
    // The proposals the runtime build (wamr/config.rs) runs, no more: an AOT
    // file compiled for a feature the runtime lacks would fail at load.
    ("WASM_ENABLE_BULK_MEMORY", "1"),
    ("WASM_ENABLE_BULK_MEMORY_OPT", "1"),
    ("WASM_ENABLE_CALL_INDIRECT_OVERLONG", "1"),
    ("WASM_ENABLE_REF_TYPES", "1"),
    ("WASM_ENABLE_SHARED_MEMORY", "1"),
    ("WASM_ENABLE_THREAD_MGR", "1"),
    ("WASM_ENABLE_SIMD", "0"),
    ("WASM_ENABLE_GC", "0"),
    ("WASM_ENABLE_MEMORY64", "0"),
    ("WASM_ENABLE_TAIL_CALL", "0"),
    ("WASM_ENABLE_EXTENDED_CONST_EXPR", "0"),
    ("WASM_ENABLE_MULTI_MODULE", "0"),
    ("WASM_ENABLE_SHRUNK_MEMORY", "1"),
    // `compile` carries the original module's facts in a custom section
    // (src/wamr/aot.rs); the compiler's loader must keep it to emit it.
    ("WASM_ENABLE_LOAD_CUSTOM_SECTION", "1"),
    ("WASM_DISABLE_HW_BOUND_CHECK", "1"),
    ("WASM_DISABLE_STACK_HW_BOUND_CHECK", "1"),
    ("WASM_DISABLE_WRITE_GS_BASE", "1"),
    ("WASM_HAVE_MREMAP", "1"),
    ("BH_MALLOC", "wasm_runtime_malloc"),
    ("BH_FREE", "wasm_runtime_free"),
    ("_GNU_SOURCE", "1"),
    ("NDEBUG", "1"),
];

/// The LLVM `llvm-config` to build the AOT compiler with:
/// `$WAMR_CORO_LLVM_CONFIG`, else `llvm-config-14`, else `llvm-config`,
/// with its major version; `None` when there is none.
fn find_llvm_config() -> Option<(String, String)> {
    println!("cargo:rerun-if-env-changed=WAMR_CORO_LLVM_CONFIG");
    let candidates = match env::var("WAMR_CORO_LLVM_CONFIG") {
        Ok(c) => vec![c],
        Err(_) => vec!["llvm-config-14".to_string(), "llvm-config".to_string()],
    };
    candidates.into_iter().find_map(|c| {
        let out = Command::new(&c).arg("--version").output().ok()?;
        if !out.status.success() {
            return None;
        }
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let major: u32 = version.split('.').next()?.parse().ok()?;
        // WAMR 2.4.3's compiler has LLVM_VERSION_MAJOR conditionals from 14 up.
        (major >= 14).then_some((c, version))
    })
}

fn llvm_config(cfg: &str, args: &[&str]) -> Vec<String> {
    let out = Command::new(cfg).args(args).output().unwrap_or_else(|e| panic!("{cfg}: {e}"));
    assert!(out.status.success(), "{cfg} {args:?} failed");
    String::from_utf8(out.stdout).unwrap().split_whitespace().map(str::to_string).collect()
}

/// Builds `$OUT_DIR/wamr-coro-aotc`, the AOT compiler driver
/// (`wamr/src/aotc.c` with WAMR's compiler and a compiler-configured copy
/// of WAMR, linked against LLVM), which `wamr-coro compile` runs. It is a
/// separate executable because WAMR's compiler defines change the layout of
/// WAMR's internal structs: it cannot be linked with the runtime build.
///
/// Without LLVM (no `llvm-config-14`/`llvm-config`), the build goes on
/// without it and `compile` says what to install. With LLVM present, a
/// failure here fails the build (set `WAMR_CORO_NO_AOT_COMPILER=1` to skip).
fn build_compiler(wamr: &Path, out: &Path) {
    println!("cargo::rustc-check-cfg=cfg(wamr_aotc)");
    println!("cargo:rerun-if-env-changed=WAMR_CORO_NO_AOT_COMPILER");
    if env::var("WAMR_CORO_NO_AOT_COMPILER").is_ok_and(|v| v == "1") {
        println!("cargo:warning=WAMR_CORO_NO_AOT_COMPILER=1: building without the AOT compiler");
        return;
    }
    let Some((cfg, version)) = find_llvm_config() else {
        println!(
            "cargo:warning=LLVM (llvm-config-14) not found: building without the AOT compiler \
             (`wamr-coro compile` will say what to install; Debian: apt-get install llvm-14-dev)"
        );
        return;
    };
    let (platform, arch, invoke, _) = target_parts();
    let objdir = out.join("aotc");
    fs::create_dir_all(&objdir).unwrap();
    let llvm_inc = llvm_config(&cfg, &["--includedir"]).remove(0);
    let base = |cpp: bool| {
        let mut b = cc::Build::new();
        b.cargo_metadata(false)
            .out_dir(&objdir)
            .opt_level(2)
            .debug(false)
            .warnings(false)
            .define(platform, None)
            .define(arch, None)
            .include(&llvm_inc)
            .include(wamr.join("core/iwasm/compilation"))
            .define("__STDC_CONSTANT_MACROS", None)
            .define("__STDC_FORMAT_MACROS", None)
            .define("__STDC_LIMIT_MACROS", None);
        for (name, value) in COMPILER_DEFINES {
            b.define(name, Some(*value));
        }
        for inc in WAMR_INCLUDES {
            b.include(wamr.join(inc));
        }
        if cpp {
            b.cpp(true).flag("-std=c++17").flag("-fno-rtti").flag("-fno-exceptions");
        } else {
            b.flag("-std=gnu99");
        }
        b
    };
    let list = |dir: &str, ext: &str| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(wamr.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == ext))
            .collect();
        v.sort();
        v
    };
    let mut c = base(false);
    for src in WAMR_SOURCES {
        let src = match *src {
            "core/iwasm/interpreter/wasm_interp_fast.c" => "core/iwasm/interpreter/wasm_interp_classic.c",
            s => s,
        };
        c.file(wamr.join(src));
    }
    c.file(wamr.join(invoke)).file(wamr.join("core/iwasm/aot/arch/aot_reloc_dummy.c")).file("wamr/src/aotc.c");
    for f in list("core/iwasm/compilation", "c").into_iter().chain(list("core/iwasm/compilation/simd", "c")) {
        c.file(f);
    }
    let mut objects = c.compile_intermediates();
    let mut cpp = base(true);
    for f in list("core/iwasm/compilation", "cpp") {
        cpp.file(f);
    }
    objects.extend(cpp.compile_intermediates());

    let exe = out.join("wamr-coro-aotc");
    let cxx = cpp.get_compiler();
    let mut link = Command::new(cxx.path());
    link.args(&objects).arg("-o").arg(&exe).arg("-Wl,--gc-sections");
    let libdir = llvm_config(&cfg, &["--libdir"]).remove(0);
    link.args(llvm_config(&cfg, &["--ldflags"]))
        .args(llvm_config(&cfg, &["--libs"]))
        .args(llvm_config(&cfg, &["--system-libs"]))
        .arg(format!("-Wl,-rpath,{libdir}"))
        .args(["-lm", "-ldl", "-lpthread"]);
    let status = link.status().unwrap_or_else(|e| panic!("running the linker {:?}: {e}", cxx.path()));
    assert!(status.success(), "linking wamr-coro-aotc against LLVM {version} failed ({link:?})");
    println!("cargo:rustc-cfg=wamr_aotc");
    println!("cargo:rustc-env=WAMR_CORO_AOTC={}", exe.display());
    println!("cargo:rustc-env=WAMR_CORO_AOTC_LLVM={version}");
}
