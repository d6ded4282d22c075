#!/usr/bin/env bash
# Start or stop a local Apache Kvrocks for imgsim-lab, data under data/kvrocks.
#
#   scripts/kvrocks.sh start [--cluster] [--port P]   # prints the IMGSIM_KV_URL to use
#   scripts/kvrocks.sh stop  [--cluster]
#   scripts/kvrocks.sh status
#
# The binary: $KVROCKS_BIN, else `kvrocks` on PATH, else ../shared/kvrocks/kvrocks.
# --cluster starts three masters (ports P, P+1, P+2) and joins them with CLUSTERX SETNODES.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD/data/kvrocks"
cmd="${1:-}"; shift || true
cluster=0; port=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cluster) cluster=1 ;;
    --port) port="$2"; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

find_bin() {
  if [ -n "${KVROCKS_BIN:-}" ]; then echo "$KVROCKS_BIN"; return; fi
  if command -v kvrocks >/dev/null 2>&1; then command -v kvrocks; return; fi
  if [ -x ../shared/kvrocks/kvrocks ]; then echo "$PWD/../shared/kvrocks/kvrocks"; return; fi
  echo "kvrocks not found: set KVROCKS_BIN, put kvrocks on PATH, or run the apache/kvrocks container" >&2
  echo "  docker run -d --name kvrocks -p 6666:6666 apache/kvrocks" >&2
  exit 2
}

ping() {  # port -> 0 when the server answers PING
  if command -v redis-cli >/dev/null 2>&1; then
    redis-cli -p "$1" ping >/dev/null 2>&1
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1" && printf 'PING\r\n' >&3 && head -c 5 <&3 | grep -q PONG) 2>/dev/null
  fi
}

setnodes() {  # port topology: send the cluster topology (version 1) to one node
  if command -v redis-cli >/dev/null 2>&1; then
    redis-cli -p "$1" CLUSTERX SETNODES "$2" 1 force >/dev/null
  else
    local py=python3; [ -x .venv/bin/python ] && py=.venv/bin/python
    "$py" -c 'import sys, redis; redis.Redis(port=int(sys.argv[1]), protocol=2).execute_command(
        "CLUSTERX", "SETNODES", sys.argv[2], 1, "force")' "$1" "$2"
  fi
}

start_node() {  # dir port [extra...]
  local dir="$1" p="$2"; shift 2
  mkdir -p "$dir"
  if [ -f "$dir/server.pid" ] && kill -0 "$(cat "$dir/server.pid")" 2>/dev/null; then
    echo "already running on port $p (pid $(cat "$dir/server.pid"))" >&2
    return
  fi
  nohup "$BIN" --bind 127.0.0.1 --port "$p" --dir "$dir" --log-dir "$dir" --daemonize no "$@" \
    >"$dir/stdout.log" 2>&1 &
  echo $! >"$dir/server.pid"
  for _ in $(seq 100); do ping "$p" && return; sleep 0.1; done
  echo "kvrocks did not start on port $p; see $dir" >&2
  exit 1
}

stop_dir() {
  local dir="$1"
  if [ -f "$dir/server.pid" ]; then
    local pid; pid="$(cat "$dir/server.pid")"
    if kill -0 "$pid" 2>/dev/null; then kill "$pid"; echo "stopped kvrocks pid $pid ($dir)"; fi
    rm -f "$dir/server.pid"
  fi
}

case "$cmd" in
  start)
    BIN="$(find_bin)"
    if [ "$cluster" = 1 ]; then
      p0="${port:-6671}"; nodes=""; i=0
      for p in "$p0" $((p0 + 1)) $((p0 + 2)); do
        start_node "$ROOT/cluster/node$i" "$p" --cluster-enabled yes
        i=$((i + 1))
      done
      lines=""; i=0; per=$((16384 / 3))
      for p in "$p0" $((p0 + 1)) $((p0 + 2)); do
        first=$((i * per)); last=$(( i == 2 ? 16383 : (i + 1) * per - 1 ))
        id=$(printf '%040x' $((i + 1)))
        lines+="$id 127.0.0.1 $p master - $first-$last"$'\n'
        nodes+="127.0.0.1:$p,"
        i=$((i + 1))
      done
      for p in "$p0" $((p0 + 1)) $((p0 + 2)); do
        setnodes "$p" "${lines%$'\n'}"
      done
      echo "export IMGSIM_KV_URL='redis+cluster://${nodes%,}'"
    else
      p="${port:-6666}"
      start_node "$ROOT/single" "$p"
      echo "export IMGSIM_KV_URL=redis://127.0.0.1:$p/0"
    fi
    ;;
  stop)
    if [ "$cluster" = 1 ]; then
      for d in "$ROOT"/cluster/node*; do [ -d "$d" ] && stop_dir "$d"; done
    else
      stop_dir "$ROOT/single"
    fi
    ;;
  status)
    for d in "$ROOT"/single "$ROOT"/cluster/node*; do
      [ -f "$d/server.pid" ] && kill -0 "$(cat "$d/server.pid")" 2>/dev/null && echo "running: $d (pid $(cat "$d/server.pid"))"
    done
    true
    ;;
  *)
    sed -n '2,9p' "$0"; exit 2 ;;
esac
