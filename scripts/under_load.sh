# Sourced by the scripts that measure a server under wrk load (compare_builds.sh,
# syscalls_per_request.sh, cpu_per_request.sh). Needs wrk, curl and python3 (for a free port).
#
# under_load_start CONNS COMMAND...
#   starts COMMAND with {PORT} replaced by a free port, waits until it answers HTTP, and warms
#   it up with 2 s of wrk at CONNS connections; sets `port` and `pid`. The server is stopped by
#   under_load_stop, or when the calling script exits (then under_load_cleanup runs too).
# under_load_stop
#   stops the server (SIGTERM, then waits for it).
# under_load_measure CONNS DURATION_S FILE COMMAND...
#   runs wrk for DURATION+1 s (its output to FILE) and, from its second second on, COMMAND,
#   which should last DURATION-1 s, so that COMMAND sees only full load; sets `rps`.
under_load_start() {
  local conns=$1; shift
  command -v wrk >/dev/null || { echo "install wrk (apt-get install wrk)"; exit 2; }
  port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  local cmd=("${@//\{PORT\}/$port}")
  "${cmd[@]}" >/dev/null 2>&1 & pid=$!
  trap 'under_load_stop; under_load_cleanup' EXIT
  for _ in $(seq 1 100); do curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/" && break; sleep 0.1; done
  wrk -t1 -c"$conns" -d2s "http://127.0.0.1:$port/" >/dev/null 2>&1
}

under_load_stop() {
  [ -n "${pid:-}" ] || return 0
  kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  pid=
}

under_load_measure() {
  local conns=$1 dur=$2 file=$3 w; shift 3
  wrk -t1 -c"$conns" -d"$((dur + 1))s" "http://127.0.0.1:$port/" >"$file" 2>&1 & w=$!
  sleep 1
  "$@"
  wait "$w" 2>/dev/null
  rps=$(awk '/Requests\/sec/ {print $2}' "$file")
}

# What the calling script removes at exit (redefine it to add files).
under_load_cleanup() { :; }
