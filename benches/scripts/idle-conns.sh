#!/usr/bin/env bash
# Server RSS per idle connection (issue 14): starts `BENCH server --system ours` on a free
# port, runs idle_conns.py against it (N connections, MODE idle|call|burst, then WAIT_SECS
# idle), prints bytes of server RSS per connection. N is bounded by `ulimit -n` of both
# processes (20000 on these machines: N up to about 19000).
#
#   benches/scripts/idle-conns.sh target/release/bench 10000 burst 3
set -euo pipefail
bench="$(realpath "$1")"
n="${2:-10000}"
mode="${3:-idle}"
wait_secs="${4:-3}"
here="$(cd "$(dirname "$0")" && pwd)"
python="$("$here/../../scripts/ensure-python-deps.sh")"
work="$(mktemp -d)"
trap 'kill "$server_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
mkfifo "$work/stdin"
"$bench" server --system ours --addr 127.0.0.1:0 <"$work/stdin" >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
exec 3>"$work/stdin"
for _ in $(seq 1 100); do
    grep -q '^PORT ' "$work/server.out" 2>/dev/null && break
    sleep 0.1
done
port="$(awk '/^PORT /{print $2; exit}' "$work/server.out")"
[[ -n "$port" ]] || { cat "$work/server.err" >&2; echo "idle-conns: the server did not start" >&2; exit 1; }
"$python" "$here/idle_conns.py" "$server_pid" "$port" "$n" "$mode" "$wait_secs"
