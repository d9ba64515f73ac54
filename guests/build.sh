#!/usr/bin/env bash
# Builds the C guests (guests/c/*.c) and the Rust guests (the examples of the
# guest SDK, guest-sdk/examples: echo and http) into OUT (default
# guests/out). Run by the tests (tests/c_guests.rs); needs clang and wasm-ld
# (Debian: clang, lld) and, for the Rust guests, the
# wasm32-unknown-unknown target (.ci/run installs all three).
#
# C guests are freestanding, without libc: the SDK needs only <stdint.h>,
# the guest ABI gives them all the I/O they may do, and WASI imports (which
# a libc would pull in) are not provided by this host. -mbulk-memory makes
# clang lower memcpy/memset to memory.copy/memory.fill, so no libc or
# compiler-rt is needed for them either.
#
# What WAMR needs from a module (docs/wamr-notes.md): exported memory, and for
# spawned envs exported __heap_base and __data_end. The stack is 256 KiB:
# WAMR divides it among a parent's envs_per_parent + 1 envs.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/out}"
mkdir -p "$out"

CC="${CC_WASM:-clang}"
command -v "$CC" >/dev/null || { echo "build.sh: $CC not found (apt-get install clang lld)" >&2; exit 1; }
command -v wasm-ld >/dev/null || { echo "build.sh: wasm-ld not found (apt-get install lld)" >&2; exit 1; }

cflags=(--target=wasm32-unknown-unknown -O2 -nostdlib -ffreestanding -mbulk-memory
        -Wall -Wextra -Werror -I"$here/../wamr/include")
ldflags=(-Wl,--no-entry -Wl,-z,stack-size=262144)

for src in "$here"/c/*.c; do
  name="$(basename "$src" .c)"
  exports=(-Wl,--export=__heap_base -Wl,--export=__data_end)
  case "$name" in bad_no_heap_base*) exports=() ;; esac
  "$CC" "${cflags[@]}" "${ldflags[@]}" "${exports[@]}" -o "$out/$name.wasm" "$src"
done

# The Rust guests are the guest SDK's examples (guest-sdk/examples); a
# target dir of their own keeps this build off the lock of the cargo that
# runs the tests.
if [ "${SKIP_RUST_GUEST:-}" != 1 ]; then
  # Shipped as .wasm: small, without the host's debug info.
  cargo build --quiet --release --target wasm32-unknown-unknown --examples \
    --config 'profile.release.package.wamr-coro-guest.opt-level="s"' \
    --config 'profile.release.package.wamr-coro-guest.debug=false' \
    --config 'profile.release.package.wamr-coro-guest.strip=true' \
    --manifest-path "$here/../guest-sdk/Cargo.toml" --target-dir "$out/rust-target"
  cp "$out/rust-target/wasm32-unknown-unknown/release/examples/echo.wasm" "$out/rust_echo.wasm"
  cp "$out/rust-target/wasm32-unknown-unknown/release/examples/http.wasm" "$out/rust_http.wasm"
fi
echo "built guests into $out"
