#!/usr/bin/env bash
# Compares wamr-coro builds and flags against the Wasmtime peer of ../shared/bench, in one
# invocation: the peer first, then each variant, each under the same wrk load on loopback.
# side_by_side.sh fixes 2 workers and one binary; this takes any number of variants, e.g. the
# code before and after a change, or 1 against 2 workers.
#
# usage: scripts/compare_builds.sh GUEST DURATION_S CONNS VARIANT...
#   VARIANT is "name|BINARY|serve flags", e.g. "before-1w|/tmp/before|--workers 1 --aot", or
#   "name|=COMMAND|ARGS" for any other server, run as COMMAND ARGS with {PORT} replaced, e.g. the
#   ceiling server: "ceiling|=/tmp/epoll_http|{PORT} 2" (scripts/ceiling/epoll_http.c)
#   PEER_WORKERS (default 2): the peer's worker threads. KIT (default ../shared/bench): where
#   the peers are built (cd KIT/peers && cargo build --release). ROUNDS (default 1): run the
#   peer and every variant, in turn, this many times and print medians (this machine's
#   requests/s drift by ±10 % between single runs; alternating rounds sees through that).
# prints: name, median req/s, median p99 (µs), ratio to the peer's median req/s, every round's
#   req/s when ROUNDS > 1, and wrk's error lines (non-2xx answers, socket errors) if any
set -u
[ $# -ge 4 ] || { sed -n '2,14p' "$0"; exit 2; }
guest=$1; dur=$2; conns=$3; shift 3
kit=${KIT:-$(dirname "$0")/../../shared/bench}
peer="$kit/peers/target/release/wasmtime-host"
[ -x "$peer" ] || { echo "build the peers first: (cd $kit/peers && cargo build --release)"; exit 2; }
. "$(dirname "$0")/under_load.sh"
run() { # name, command with {PORT}: "name req/s p99 [wrk's error lines]"
  local name=$1 cmd=$2 out
  under_load_start "$conns" bash -c "exec $cmd"
  out=$(wrk -t1 -c"$conns" -d"${dur}s" --latency "http://127.0.0.1:$port/" 2>&1)
  under_load_stop
  echo "$name $(printf '%s\n' "$out" | awk '/Requests\/sec/ {print $2}') $(printf '%s\n' "$out" | awk '$1=="99%" {print $2}') $(printf '%s\n' "$out" | grep -E 'Non-2xx|Socket errors' | tr '\n' ' ')"
}
# Every line of $all is "index name req/s p99 [errors]"; index 0 is the peer.
all=$(mktemp)
under_load_cleanup() { rm -f "$all"; }
trap under_load_cleanup EXIT
rounds=${ROUNDS:-1}
for _ in $(seq 1 "$rounds"); do
  # Not in $(...): under_load_start's exit trap would run when that subshell ends.
  { printf '0 '; run "wasmtime-peer-${PEER_WORKERS:-2}w" "$peer $guest {PORT} ${PEER_WORKERS:-2}"; } >>"$all"
  i=0
  for v in "$@"; do
    i=$((i + 1))
    IFS='|' read -r name bin flags <<<"$v"
    case $bin in
      =*) cmd="${bin#=} $flags" ;;
      *) cmd="$bin serve $guest $flags --listen 127.0.0.1:{PORT}" ;;
    esac
    { printf '%s ' "$i"; run "$name" "$cmd"; } >>"$all"
  done
done
# p99 is printed by wrk with its unit: compare in microseconds.
median() { sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
to_us() { awk '{v = $1; if (v ~ /us$/) v += 0; else if (v ~ /ms$/) v *= 1000; else if (v ~ /s$/) v *= 1e6; print v}'; }
b=$(awk '$1 == 0 {print $3}' "$all" | median)
for i in $(seq 0 $#); do
  name=$(awk -v i="$i" '$1 == i {print $2; exit}' "$all")
  rps=$(awk -v i="$i" '$1 == i {print $3}' "$all" | median)
  p99=$(awk -v i="$i" '$1 == i {print $4}' "$all" | to_us | median)
  runs=$([ "$rounds" -gt 1 ] && awk -v i="$i" '$1 == i {printf "%s ", $3}' "$all" | sed 's/^/(rounds: /; s/ $/)/')
  errors=$(awk -v i="$i" '$1 == i && NF > 4 {$1 = $2 = $3 = $4 = ""; sub(/^ +/, ""); print}' "$all" | sort -u | tr '\n' ' ')
  echo "$name $rps ${p99}us $(awk -v r="$rps" -v b="$b" 'BEGIN { if (r > 0 && b > 0) printf "%.2f", r / b; else print "?" }') $runs $errors"
done
