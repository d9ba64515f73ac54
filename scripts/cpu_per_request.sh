#!/usr/bin/env bash
# Where one request's CPU goes: samples a server with `perf record` under wrk load and prints
# microseconds of CPU per request, summed by binary/kernel (--dso) or per symbol (the default,
# the top N). Per request = samples x sample period / requests served in the same window, so a
# server whose CPU per request grows (with connections, say) shows where it grows.
#
# usage: scripts/cpu_per_request.sh [--dso] [--top N] CONNS DURATION_S COMMAND...
#   COMMAND starts the server; {PORT} in it is replaced by a free port. Example:
#   scripts/cpu_per_request.sh --dso 1000 5 target/release/wamr-coro serve guests/http.wat \
#       --workers 1 --listen 127.0.0.1:{PORT}
# Needs perf (apt-get install linux-perf) and permission to profile the server (e.g. root).
set -u
by=symbol; top=30
while [ $# -gt 0 ]; do
  case $1 in
    --dso) by=dso; shift ;;
    --top) top=$2; shift 2 ;;
    *) break ;;
  esac
done
[ $# -ge 3 ] || { sed -n '2,12p' "$0"; exit 2; }
conns=$1; dur=$2; shift 2
command -v perf >/dev/null || { echo "install perf (apt-get install linux-perf)"; exit 2; }
. "$(dirname "$0")/under_load.sh"
data=$(mktemp)
under_load_cleanup() { rm -f "$data" "$data.wrk"; }
under_load_start "$conns" "$@"
hz=4000
under_load_measure "$conns" "$dur" "$data.wrk" perf record -F $hz -g -p "$pid" -o "$data" -- sleep "$((dur - 1))" >/dev/null 2>&1
echo "req/s $rps; microseconds of CPU per request:"
# --no-children: each sample counts once, in the function it hit.
perf report -i "$data" --no-children --sort "$( [ $by = dso ] && echo dso || echo dso,symbol )" \
    --stdio -n 2>/dev/null |
  awk -v r="$rps" -v hz=$hz -v secs="$((dur - 1))" -v top="$top" '
    /^ +[0-9.]+%/ { n = $2; $1 = ""; $2 = ""; sub(/^ +/, ""); sub(/ +- +- *$/, "");
                    total += n; if (shown < top) { printf "%8.3f  %s\n", n * 1e6 / hz / (r * secs), $0; shown++ } }
    END { printf "%8.3f  total\n", total * 1e6 / hz / (r * secs) }'
