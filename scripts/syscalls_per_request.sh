#!/usr/bin/env bash
# Counts the system calls a server makes per HTTP request under wrk load, from the kernel's
# syscall tracepoints (perf stat; needs perf and permission to read tracepoints, e.g. root).
# What it answers: how many reads, writes and polls one request costs, e.g. before and after
# a change to the read path, or against a peer server.
#
# usage: scripts/syscalls_per_request.sh CONNS DURATION_S COMMAND...
#   COMMAND starts the server; {PORT} in it is replaced by a free port. Example:
#   scripts/syscalls_per_request.sh 100 5 target/release/wamr-coro serve guests/http.wat --listen 127.0.0.1:{PORT}
# prints: req/s, then each syscall (and context switches) per request
set -u
[ $# -ge 3 ] || { sed -n '2,10p' "$0"; exit 2; }
conns=$1; dur=$2; shift 2
command -v perf >/dev/null || { echo "install perf (apt-get install linux-perf)"; exit 2; }
. "$(dirname "$0")/under_load.sh"
under_load_start "$conns" "$@"
events=context-switches
for s in read recvfrom readv write sendto writev sendmsg epoll_wait epoll_ctl sched_yield futex getpeername; do
  events="$events,syscalls:sys_enter_$s"
done
out=$(mktemp)
under_load_cleanup() { rm -f "$out" "$out.wrk"; }
under_load_measure "$conns" "$dur" "$out.wrk" perf stat -x, -e "$events" -p "$pid" -- sleep "$((dur - 1))" 2>"$out"
echo "req/s $rps"
awk -F, -v rps="$rps" -v secs="$((dur - 1))" '$1 ~ /^[0-9]+$/ {
  name = $3; sub(/^syscalls:sys_enter_/, "", name); printf "  %-18s %6.3f per request\n", name, $1 / (rps * secs) }' "$out"
