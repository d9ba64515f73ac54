#!/usr/bin/env bash
# Is the load generator the limit? Runs wrk -t1 against a server and prints the requests/s and
# the share of a core that wrk and the server each used (utime + stime from /proc/PID/stat, over
# the middle DURATION-2 s of the run), and the requests served per core of server CPU. When wrk
# is near 100 %, requests/s measures wrk, and comparing servers needs the last column. (wrk reports
# requests/s over its whole run, after a 2 s warm-up; the CPU shares cover its middle seconds:
# at steady load the two agree.)
#
# usage: scripts/cpu_share.sh CONNS DURATION_S COMMAND...   ({PORT} in COMMAND: a free port)
#   e.g. scripts/cpu_share.sh 100 6 target/release/wamr-coro serve guests/http.wat \
#            --listen 127.0.0.1:{PORT}
set -u
[ $# -ge 3 ] || { sed -n '2,11p' "$0"; exit 2; }
conns=$1; dur=$2; shift 2
[ "$dur" -ge 4 ] || { echo "DURATION_S must be at least 4"; exit 2; }
. "$(dirname "$0")/under_load.sh"
out=$(mktemp)
under_load_cleanup() { rm -f "$out"; }
under_load_start "$conns" "$@"
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
wrk -t1 -c"$conns" -d"${dur}s" "http://127.0.0.1:$port/" >"$out" 2>&1 & w=$!
sleep 1
w0=$(ticks "$w"); s0=$(ticks "$pid")
sleep $((dur - 2))
w1=$(ticks "$w"); s1=$(ticks "$pid")
wait "$w"
hz=$(getconf CLK_TCK); secs=$((dur - 2))
rps=$(awk '/Requests\/sec/ {print $2}' "$out")
awk -v r="$rps" -v w=$((w1 - w0)) -v s=$((s1 - s0)) -v hz="$hz" -v t="$secs" 'BEGIN {
  ws = w / hz / t; ss = s / hz / t
  printf "req/s %s  wrk %.0f%%  server %.0f%%  req/s per server core %.1fk\n", r, ws * 100, ss * 100, (ss > 0 ? r / ss / 1000 : 0) }'
