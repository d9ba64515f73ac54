#!/usr/bin/env bash
# Compares wamr-coro builds and flags against the Wasmtime peer of ../shared/bench, in one
# invocation: the peer first, then each variant, each under the same wrk load on loopback.
# side_by_side.sh fixes 2 workers and one binary; this takes any number of variants, e.g. the
# code before and after a change, or 1 against 2 workers.
#
# usage: scripts/compare_builds.sh GUEST DURATION_S CONNS VARIANT...
#   VARIANT is "name|BINARY|serve flags", e.g. "before-1w|/tmp/before|--workers 1 --aot"
#   PEER_WORKERS (default 2): the peer's worker threads. KIT (default ../shared/bench): where
#   the peers are built (cd KIT/peers && cargo build --release). ROUNDS (default 1): run the
#   peer and every variant, in turn, this many times and print medians (this machine's
#   requests/s drift by ±10 % between single runs; alternating rounds sees through that).
# prints: name req/s p99 ratio-to-peer (and wrk's error line if any); with ROUNDS > 1, the
#   median req/s and p99 of each, then every round's req/s
set -u
[ $# -ge 4 ] || { sed -n '2,14p' "$0"; exit 2; }
guest=$1; dur=$2; conns=$3; shift 3
kit=${KIT:-$(dirname "$0")/../../shared/bench}
peer="$kit/peers/target/release/wasmtime-host"
[ -x "$peer" ] || { echo "build the peers first: (cd $kit/peers && cargo build --release)"; exit 2; }
command -v wrk >/dev/null || { echo "install wrk (apt-get install wrk)"; exit 2; }
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
run() { # name, command with {PORT}
  local name=$1 cmd=$2 port pid out
  port=$(free_port)
  bash -c "exec ${cmd//\{PORT\}/$port}" >/dev/null 2>&1 & pid=$!
  for _ in $(seq 1 100); do curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/" && break; sleep 0.1; done
  wrk -t1 -c"$conns" -d2s "http://127.0.0.1:$port/" >/dev/null 2>&1
  out=$(wrk -t1 -c"$conns" -d"${dur}s" --latency "http://127.0.0.1:$port/" 2>&1)
  kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null
  echo "$name $(printf '%s\n' "$out" | awk '/Requests\/sec/ {print $2}') $(printf '%s\n' "$out" | awk '$1=="99%" {print $2}') $(printf '%s\n' "$out" | grep -E 'Non-2xx|Socket errors' | tr '\n' ' ')"
}
rounds=${ROUNDS:-1}
if [ "$rounds" -le 1 ]; then
  base=$(run "wasmtime-peer-${PEER_WORKERS:-2}w" "$peer $guest {PORT} ${PEER_WORKERS:-2}")
  echo "$base 1.00"
  b=$(echo "$base" | awk '{print $2}')
  for v in "$@"; do
    IFS='|' read -r name bin flags <<<"$v"
    r=$(run "$name" "$bin serve $guest $flags --listen 127.0.0.1:{PORT}")
    echo "$r $(echo "$r" | awk -v b="$b" '{ if ($2 > 0 && b > 0) printf "%.2f", $2 / b; else print "?" }')"
  done
  exit 0
fi
# Alternating rounds: every line of $all is "index name req/s p99".
all=$(mktemp); trap 'rm -f "$all"' EXIT
for _ in $(seq 1 "$rounds"); do
  echo "0 $(run "wasmtime-peer-${PEER_WORKERS:-2}w" "$peer $guest {PORT} ${PEER_WORKERS:-2}")" >>"$all"
  i=0
  for v in "$@"; do
    i=$((i + 1))
    IFS='|' read -r name bin flags <<<"$v"
    echo "$i $(run "$name" "$bin serve $guest $flags --listen 127.0.0.1:{PORT}")" >>"$all"
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
  runs=$(awk -v i="$i" '$1 == i {printf "%s ", $3}' "$all")
  echo "$name $rps ${p99}us $(awk -v r="$rps" -v b="$b" 'BEGIN { if (r > 0 && b > 0) printf "%.2f", r / b; else print "?" }') (rounds: $runs)"
done
