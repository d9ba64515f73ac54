#!/usr/bin/env bash
# Server CPU per connection under connection churn: starts a server, runs scripts/churn.c against
# it (8 threads, 1 s of warm-up, then 5 s), and divides the server's utime + stime over those 5 s
# (/proc/PID/stat) by the connections it served. Prints connections/s and µs of server CPU per
# connection. Steadier than connections/s on a shared or noisy machine.
#
# usage: scripts/churn_cpu.sh NAME COMMAND-WITH-{PORT}
#   e.g. scripts/churn_cpu.sh direct "target/release/wamr-coro serve guests/http.wat --workers 2 --listen 127.0.0.1:{PORT}"
set -u
name=$1; shift
. "$(dirname "$0")/churn_start.sh"
churn_start "$*"
t0=$(awk '{print $14+$15}' "/proc/$pid/stat")
out=$("$churn" "$port" 8 5)
t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
kill "$pid"; wait "$pid" 2>/dev/null
rate=$(echo "$out" | awk '{print $1}')
hz=$(getconf CLK_TCK)
echo "$name $rate conn/s, server CPU $(python3 -c "print(f'{($t1-$t0)/$hz*1e6/($rate*5):.1f}')") us/conn"
