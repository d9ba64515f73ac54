#!/usr/bin/env bash
# Leak-checked lifecycle (issue #14): the release server runs under
# valgrind's memcheck while `wamr-coro bench --soak` drives healthy and
# hostile clients at it (traps, spins, out-of-bounds pointers, memory growth,
# resets, slow readers, tricklers) in direct and in queue mode, then stops
# it. Fails on any invalid access, use of uninitialised memory, or definite
# or indirect leak in our Rust, our C or WAMR, and on any soak failure (a
# healthy byte lost, descriptors or envs not back at rest).
#
# Why valgrind and not ASan: sanitizers for the Rust side need nightly
# (-Zsanitizer); valgrind checks the whole process, Rust, C and WAMR, on the
# binary we ship. WAMR's C is also built under ASan by wamr/asan/run.sh for
# the CVE modules.
#
# may switches coroutine stacks by moving the stack pointer. Memcheck takes
# a stack-pointer move larger than --max-stackframe for a switch (nothing
# marked); a smaller one for a frame push or pop, and would then mark the
# span between two coroutines' stacks undefined or inaccessible. Coroutine
# stacks are 256 KiB, of which WAMR may use at most 232 KiB, so two stack
# pointers on different stacks are always more than 28 KiB apart: with
# --max-stackframe=16384 every switch is seen as one. (The cost: the locals
# of a single frame over 16 KiB are not checked for definedness.)
#
# Environment: LEAKCHECK_DURATION (default 15s per mode), LEAKCHECK_KEEP=1
# keeps the logs, LEAKCHECK_VALGRIND_ARGS adds memcheck options (e.g.
# --show-leak-kinds=all --track-origins=yes). Suppressions, each justified: scripts/valgrind.supp.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq valgrind
fi

cargo build --release --quiet --bin wamr-coro
out="$(mktemp -d)"
trap '[ "${LEAKCHECK_KEEP:-0}" = 1 ] && echo "logs kept in $out" || rm -rf "$out"' EXIT

# --fair-sched=yes: valgrind runs one thread at a time, and its default lock
# is unfair: a may worker in a spinning guest kept it while the watchdog and
# the metrics thread starved (healthy clients got 5 answers in 15 s, and a
# /metrics scrape timed out). With a fair (ticket) lock: 11,442 answers.
vg="valgrind --error-exitcode=99 --fair-sched=yes --leak-check=full --show-leak-kinds=definite,indirect \
--errors-for-leak-kinds=definite,indirect --max-stackframe=16384 --num-callers=30 \
--suppressions=$PWD/scripts/valgrind.supp --log-file=$out/memcheck-%p.log ${LEAKCHECK_VALGRIND_ARGS:-}"

# RSS under valgrind is valgrind's: the drift limit is lifted, every other
# soak check stays. Twice: the soak guest interpreted, and compiled (serve's
# default where the build has the compiler). The compiled run loads an AOT
# file made for baseline x86-64: code for this machine's CPU may use
# extensions valgrind cannot decode (AVX-512), and would die of SIGILL.
status=0
soak() {
  ./target/release/wamr-coro bench --soak "${LEAKCHECK_DURATION:-15s}" --mode all --conns 6 \
    --hostile-share 0.34 --warmup 2s --max-rss-drift 100000 --server-wrapper "$vg" "$@" || status=$?
}
soak --engine interp --json "$out/soak-interp.json"
# Only a build with the compiler (src/wamr/build_info.rs tests this pattern
# against both forms of the line).
if ./target/release/wamr-coro --version | grep -q "^aot compiler: WAMR's"; then
  ./target/release/wamr-coro compile guests/soak.wat -o "$out/soak.aot" --target portable >/dev/null
  soak "$out/soak.aot" --engine aot --json "$out/soak-aot.json"
else
  echo "leakcheck: this build has no AOT compiler; compiled guests not checked" >&2
fi

logs=("$out"/memcheck-*.log)
if [ ! -e "${logs[0]}" ]; then
  echo "leakcheck: no memcheck log was written" >&2
  exit 1
fi
for log in "${logs[@]}"; do
  summary="$(grep -E 'ERROR SUMMARY' "$log" || true)"
  echo "leakcheck: $(basename "$log"): ${summary#==*== }"
  grep -E 'definitely lost:|indirectly lost:' "$log" | sed 's/^==[0-9]*== */    /' || true
  if ! grep -q 'ERROR SUMMARY: 0 errors' "$log"; then
    echo "leakcheck: memcheck found errors:" >&2
    sed 's/^==[0-9]*== //' "$log" >&2
    status=1
  fi
done
if [ "$status" -ne 0 ]; then
  echo "leakcheck: FAILED" >&2
  exit 1
fi
echo "leakcheck: passed (${#logs[@]} servers under memcheck, no errors, no leaks)"
