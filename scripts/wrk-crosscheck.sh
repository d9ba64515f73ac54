#!/usr/bin/env bash
# Cross-checks the bench's load generator against wrk on the same server:
# same connections, threads and duration, alternating wrk / ours ROUNDS times
# per server so that drift on a shared machine hits both alike.
#   scripts/wrk-crosscheck.sh [CONNS] [SECS] [ROUNDS]
# Needs wrk and a release build (cargo build --release).
set -euo pipefail
CONNS=${1:-100}; SECS=${2:-5}; ROUNDS=${3:-2}
BIN=${BIN:-target/release/wamr-coro}
RESP='[72,84,84,80,47,49,46,49,32,50,48,48,32,79,75,13,10,67,111,110,116,101,110,116,45,84,121,112,101,58,32,116,101,120,116,47,112,108,97,105,110,13,10,67,111,110,116,101,110,116,45,76,101,110,103,116,104,58,32,50,49,13,10,13,10,72,101,108,108,111,32,102,114,111,109,32,119,97,109,114,45,99,111,114,111,10]'
start() { # sets ADDR and SERVER; the server's stdin is a fifo we hold open (EOF stops it)
  local fifo; fifo=$(mktemp -u); mkfifo "$fifo"
  "$@" <"$fifo" >/tmp/xcheck.out 2>/dev/null & SERVER=$!
  exec 9>"$fifo"; rm -f "$fifo"
  for _ in $(seq 100); do grep -q '^listening on' /tmp/xcheck.out 2>/dev/null && break; sleep 0.1; done
  ADDR=$(sed -n 's/^listening on //p' /tmp/xcheck.out)
}
stop() { kill -INT "$SERVER"; wait "$SERVER" || true; exec 9>&-; }
ours() {
  "$BIN" bench-client --spec "{\"addr\":\"$1\",\"conns\":$CONNS,\"protocol\":\"http\",\"expected\":$RESP,\"pipeline\":1,\"duration_s\":$SECS,\"workers\":2,\"hold\":false,\"open_threads\":0}" \
    | sed -n 's/^result //p' | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.0f req/s, %d errors" % (r["requests"]/r["elapsed_s"], r["errors"]))'
}
for server in native direct queue; do
  if [ "$server" = native ]; then
    start "$BIN" bench-native --spec '{"listen":"127.0.0.1:0","protocol":"http","workers":2,"reuse_port":false}'
  else
    start "$BIN" serve --listen 127.0.0.1:0 --mode "$server" --workers 2 --quiet-wamr --control-stdin
  fi
  for r in $(seq "$ROUNDS"); do
    W=$(wrk -t2 -c"$CONNS" -d"${SECS}s" "http://$ADDR/" | awk '/Requests\/sec/ {print $2}')
    O=$(ours "$ADDR")
    echo "$server round $r: wrk $W req/s; bench client $O"
  done
  stop
done
