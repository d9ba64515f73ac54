#!/usr/bin/env bash
# System calls per connection under connection churn: starts a server, runs scripts/churn.c
# against it (8 threads, 1 s of warm-up, then 3 s under `perf stat` of the server's syscall
# tracepoints), and prints each call's count divided by the connections served. Counts do not
# depend on this machine's noise, unlike CPU time: the way to compare what two builds do per
# connection. Needs perf and permission to read tracepoints (root).
#
# usage: scripts/churn_syscalls.sh COMMAND-WITH-{PORT}
#   e.g. scripts/churn_syscalls.sh "target/release/wamr-coro serve guests/http.wat --listen 127.0.0.1:{PORT}"
set -u
[ $# -eq 1 ] || { sed -n '2,9p' "$0"; exit 2; }
command -v perf >/dev/null || { echo "install perf (apt-get install linux-perf)"; exit 2; }
. "$(dirname "$0")/churn_start.sh"
churn_start "$1"
out=$(mktemp)
trap 'kill "$pid" 2>/dev/null; rm -f "$out"' EXIT
events=context-switches
for s in accept accept4 read recvfrom write sendto writev epoll_wait epoll_ctl sched_yield futex \
  close shutdown setsockopt getsockopt ioctl fcntl pread64 madvise mmap munmap mprotect mincore \
  clock_nanosleep getpeername getsockname; do
  events="$events,syscalls:sys_enter_$s"
done
perf stat -x, -e "$events" -p "$pid" -o "$out" -- sleep 4 &
stat=$!
sleep 0.2
result=$("$churn" "$port" 8 3)
wait "$stat" 2>/dev/null
echo "$result"
rate=$(echo "$result" | awk '{print $1}')
# perf counts for 4 s; churn ran 3 of them: calls in the idle rest are few (a poll timeout's).
awk -F, -v r="$rate" '$1 ~ /^[0-9]+$/ {n = $3; sub(/syscalls:sys_enter_/, "", n); if ($1 > 0) printf "  %-16s %6.3f per connection\n", n, $1 / (r * 3)}' "$out"
