#!/usr/bin/env bash
# CPU time of each thread of a server under wrk load, in milliseconds of CPU per second of load
# (from /proc/PID/task/TID/schedstat, nanosecond counts), grouped by thread name. Shows what a
# helper thread (the watchdog, the idle sweeper, queue runners) costs beside the workers.
#
# usage: scripts/thread_cpu.sh CONNS DURATION_S COMMAND...
#   COMMAND starts the server; {PORT} in it is replaced by a free port. Example:
#   scripts/thread_cpu.sh 1000 6 target/release/wamr-coro serve guests/http.wat --listen 127.0.0.1:{PORT}
set -u
[ $# -ge 3 ] || { sed -n '2,9p' "$0"; exit 2; }
conns=$1; dur=$2; shift 2
. "$(dirname "$0")/under_load.sh"
out=$(mktemp)
under_load_cleanup() { rm -f "$out" "$out.a" "$out.b"; }
under_load_start "$conns" "$@"
snap() { for t in /proc/"$pid"/task/*; do printf '%s %s %s\n' "${t##*/}" "$(tr ' ' '_' <"$t/comm")" "$(awk '{print $1}' "$t/schedstat")"; done; }
secs=$((dur - 1))
under_load_measure "$conns" "$dur" "$out" bash -c "$(declare -f snap); pid=$pid; snap >'$out.a'; sleep $secs; snap >'$out.b'"
echo "req/s $rps; ms of CPU per second, by thread name (threads):"
join <(sort "$out.a") <(sort "$out.b") |
  awk -v s="$secs" '{ ms[$2] += ($5 - $3) / 1e6 / s; n[$2]++ } END { for (k in ms) printf "%10.2f  %s (%d)\n", ms[k], k, n[k] }' |
  sort -rn
