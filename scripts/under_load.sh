# Sourced by the scripts that measure a server under wrk load (syscalls_per_request.sh,
# cpu_per_request.sh): starts COMMAND with {PORT} replaced by a free port, waits until it
# answers, warms it up for 2 s, and stops it when the calling script exits.
#
# usage (after `set -u`): under_load_start CONNS COMMAND...
# sets: port, pid; needs wrk, curl and python3 (for the free port).
under_load_start() {
  local conns=$1; shift
  command -v wrk >/dev/null || { echo "install wrk (apt-get install wrk)"; exit 2; }
  port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  local cmd=("${@//\{PORT\}/$port}")
  "${cmd[@]}" >/dev/null 2>&1 & pid=$!
  trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; under_load_cleanup' EXIT
  for _ in $(seq 1 100); do curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/" && break; sleep 0.1; done
  wrk -t1 -c"$conns" -d2s "http://127.0.0.1:$port/" >/dev/null 2>&1
}

# What the calling script removes at exit (redefine it to add files).
under_load_cleanup() { :; }
