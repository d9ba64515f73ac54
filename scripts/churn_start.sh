# Sourced by the scripts that measure a server under connection churn (churn_cpu.sh,
# churn_syscalls.sh). Needs cc (to build scripts/churn.c once), curl and python3.
#
# churn_start COMMAND
#   builds scripts/churn.c into $CHURN (default /tmp/churn-UID) if it is not there, starts
#   COMMAND (one string, run by bash) with {PORT} replaced by a free port, waits until it
#   answers HTTP, and warms it up with 1 s of churn; sets `churn`, `port` and `pid`. Exits 2 if
#   the server does not answer within 5 s.
churn_start() {
  local here
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  churn=${CHURN:-/tmp/churn-$(id -u)}
  [ -x "$churn" ] || cc -O2 -o "$churn" "$here/churn.c" -lpthread || exit 2
  port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  bash -c "exec ${1//\{PORT\}/$port}" >/dev/null 2>&1 & pid=$!
  local up=
  for _ in $(seq 50); do
    curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/" && { up=1; break; }
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$up" ]; then
    kill "$pid" 2>/dev/null
    echo "the server did not answer on port $port: $1" >&2
    exit 2
  fi
  "$churn" "$port" 8 1 >/dev/null
}
