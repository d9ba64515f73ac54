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
here=$(cd "$(dirname "$0")" && pwd)
churn=${CHURN:-/tmp/churn-$(id -u)}
[ -x "$churn" ] || cc -O2 -o "$churn" "$here/churn.c" -lpthread || exit 2
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
bash -c "exec ${*//\{PORT\}/$port}" >/dev/null 2>&1 & pid=$!
up=
for _ in $(seq 50); do
  curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/" && { up=1; break; }
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$up" ]; then
  kill "$pid" 2>/dev/null
  echo "$name: the server did not answer on port $port: $*" >&2
  exit 2
fi
"$churn" "$port" 8 1 >/dev/null
t0=$(awk '{print $14+$15}' "/proc/$pid/stat")
out=$("$churn" "$port" 8 5)
t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
kill "$pid"; wait "$pid" 2>/dev/null
rate=$(echo "$out" | awk '{print $1}')
hz=$(getconf CLK_TCK)
echo "$name $rate conn/s, server CPU $(python3 -c "print(f'{($t1-$t0)/$hz*1e6/($rate*5):.1f}')") us/conn"
