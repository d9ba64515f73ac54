#!/usr/bin/env bash
# Builds WAMR with AddressSanitizer from the same source tree, defines
# (wamr/config.rs) and patches as build.rs, and runs tests/cve/*.wasm
# through wamr/asan/driver.c. With --unpatched, the CVE patches are left
# out (to see the bugs they fix). Needs gcc (or clang) with ASan, and patch.
#
#   bash wamr/asan/run.sh [--unpatched] [MODULE.wasm [EXPORT]]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
unpatched=0
if [ "${1:-}" = "--unpatched" ]; then unpatched=1; shift; fi

src="${WAMR_SRC_DIR:-}"
if [ -z "$src" ]; then
  manifest="$(cargo metadata --format-version 1 --manifest-path "$root/Cargo.toml" \
    | python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="wamrx-sys"))')"
  src="$(dirname "$manifest")/wasm-micro-runtime"
fi
work="${ASAN_WORK:-$root/target/asan}/$([ $unpatched = 1 ] && echo unpatched || echo patched)"
# Rebuilt only when the patches, config, sources list or driver change.
stamp="$(cat "$root"/wamr/patches/*.patch "$root/wamr/config.rs" "$root/build.rs" "$root/wamr/asan/driver.c" \
  2>/dev/null | md5sum | cut -d' ' -f1)-$unpatched"
if [ -x "$work/driver" ] && [ "$(cat "$work/stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "reusing $work/driver"
else
rm -rf "$work" && mkdir -p "$work"
cp -r "$src/core" "$work/core" && chmod -R u+w "$work/core"
for p in "$root"/wamr/patches/*.patch; do
  [ -e "$p" ] || continue
  if [ $unpatched = 1 ] && grep -q '^CVE:' "$p"; then continue; fi
  patch -s -d "$work" -p1 < "$p"
done

defs=(-DBH_PLATFORM_LINUX -DBUILD_TARGET_X86_64 -DBH_DEBUG=1)
while read -r name value; do defs+=("-D$name=$value"); done < <(
  sed -n 's/^ *d("\([A-Za-z_0-9]*\)", "\([^"]*\)".*/\1 \2/p' "$root/wamr/config.rs" | grep -v '^BH_VPRINTF ')
defs+=(-DBH_VPRINTF=wamr_coro_vprintf)
incs=()
for d in core/iwasm/interpreter core/iwasm/aot core/iwasm/libraries/thread-mgr core/iwasm/include \
         core/shared/platform/linux core/shared/platform/include core/shared/mem-alloc \
         core/iwasm/common core/shared/utils core/shared/utils/uncommon; do
  incs+=("-I$work/$d")
done
srcs=$(sed -n 's/^ *"\(core\/[^"]*\.c\)",$/\1/p' "$root/build.rs" | grep -v /arch/)
objs=()
for s in $srcs core/iwasm/aot/arch/aot_reloc_x86_64.c; do
  o="$work/obj/$(echo "$s" | tr / _).o"; mkdir -p "$work/obj"
  echo "cc $s"
  ${CC:-gcc} -std=gnu99 -g -O1 -fsanitize=address -fno-omit-frame-pointer "${defs[@]}" "${incs[@]}" \
    -c "$work/$s" -o "$o" &
  objs+=("$o")
  while [ "$(jobs -r | wc -l)" -ge "${JOBS:-2}" ]; do wait -n; done
done
wait
${CC:-gcc} -c "$work/core/iwasm/common/arch/invokeNative_em64.s" -o "$work/obj/invoke.o"
${CC:-gcc} -std=gnu99 -g -O1 -fsanitize=address "${incs[@]}" "$root/wamr/asan/driver.c" \
  "${objs[@]}" "$work/obj/invoke.o" -o "$work/driver" -lm -lpthread -ldl
echo "$stamp" > "$work/stamp"
fi

# Inputs: tests/cve/*.wasm as they are, *.wat converted, and the
# CVE-2026-54912 module (36,000 constants) generated here.
mods="$work/modules"; mkdir -p "$mods"
cp "$root"/tests/cve/*.wasm "$mods"/ 2>/dev/null || true
python3 - "$mods/cve-2026-54912.wat" <<'PY'
import sys
b = ["(local i32 i64)"]
b += [f"(local.set 0 (i32.add (local.get 0) (i32.const {k})))" for k in range(33000)]
for k in range(3000):
    b.append(f"(local.set 0 (i32.add (local.get 0) (i32.const {k % 50})))")
    b.append(f"(local.set 1 (i64.add (local.get 1) (i64.const {k * 3})))")
b.append("(i32.add (local.get 0) (i32.wrap_i64 (local.get 1)))")
open(sys.argv[1], "w").write('(module (func (export "run") (result i32)\n' + "\n".join(b) + "))")
PY
pairs=()
for w in "$root"/tests/cve/*.wat "$mods/cve-2026-54912.wat"; do pairs+=("$w" "$mods/$(basename "${w%.wat}").wasm"); done
(cd "$root" && cargo run --quiet --example wat2wasm -- "${pairs[@]}")

run() { echo "== $1 ${2:-}"; ASAN_OPTIONS=detect_leaks=0 "$work/driver" "$@" 2>&1 | tail -n 30 || true; }
if [ $# -gt 0 ]; then run "$@"; exit 0; fi
for m in "$mods"/*.wasm; do
  [ -e "$m" ] || continue
  run "$m" run
done
