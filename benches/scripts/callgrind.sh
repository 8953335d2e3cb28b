#!/usr/bin/env bash
# Instructions per call, counted by callgrind (repeatable, unlike time on a shared VM), of
# one side of a pipelined `add` load against our server:
#
#   benches/scripts/callgrind.sh BENCH server [CONCURRENCY] [CONNECTIONS]
#   benches/scripts/callgrind.sh BENCH client [CONCURRENCY] [CONNECTIONS]
#
# BENCH is a `bench` binary (target/release/bench). `server` runs `bench server --system
# ours` under callgrind and loads it natively with `bench load`; `client` runs the load
# generator (our async client) under callgrind against a native server. Instrumentation is
# switched on for a window in the middle of the load only (`--instr-atstart=no`,
# `callgrind_control -i on|off`); the calls in the window are counted from callgrind's own
# call counts of a function that runs once per call (PER_CALL, a regex over symbol names),
# so nothing else needs to agree. Prints instructions, calls and instructions per call.
# SERVER_ARGS adds arguments to `bench server` (for example `--layers 1`).
set -euo pipefail
bench="$(realpath "$1")"
side="$2"
concurrency="${3:-64}"
connections="${4:-1}"
per_call="${PER_CALL:-}"
work="$(mktemp -d)"
trap 'exec 3>&- 2>/dev/null || true; rm -rf "$work"' EXIT
mkfifo "$work/stdin"

vg=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/cg.out")
if [[ "$side" == server ]]; then
    server=("${vg[@]}" "$bench" server --system ours --addr 127.0.0.1:0 ${SERVER_ARGS:-})
    per_call="${per_call:-Registry::dispatch|registry::Registry::dispatch}"
else
    server=("$bench" server --system ours --addr 127.0.0.1:0)
    per_call="${per_call:-ClientConnection.*send_request|Attempt.*as core::future::future::Future>::poll}"
fi
taskset -c 0 "${server[@]}" <"$work/stdin" >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
exec 3>"$work/stdin"
for _ in $(seq 1 600); do
    grep -q '^PORT ' "$work/server.out" 2>/dev/null && break
    sleep 0.1
done
port="$(sed -n 's/^PORT //p' "$work/server.out")"
[[ -n "$port" ]] || { cat "$work/server.err"; echo "no PORT from the server" >&2; exit 1; }

load=("$bench" load --addr "127.0.0.1:$port" --method add --args '[1, 2]'
    --concurrency "$concurrency" --connections "$connections" --duration 8 --warmup 1)
if [[ "$side" == server ]]; then
    taskset -c 1 "${load[@]}" >"$work/load.out" 2>&1 &
    target=$server_pid
else
    taskset -c 1 "${vg[@]}" "${load[@]}" >"$work/load.out" 2>&1 &
    target=$!
fi
load_pid=$!
sleep 4
callgrind_control -i on "$target" >/dev/null
sleep 2
callgrind_control -i off "$target" >/dev/null
wait "$load_pid" || true
exec 3>&-
wait "$server_pid" || true

[[ -n "${CG_OUT:-}" ]] && cp "$work/cg.out" "$CG_OUT"
python3 - "$work/cg.out" "$per_call" <<'PY'
import re, sys
path, pattern = sys.argv[1], re.compile(sys.argv[2])
names, total, calls = {}, 0, 0
cfn = None
for line in open(path, errors="replace"):
    if line.startswith("summary:") or line.startswith("totals:"):
        total = max(total, int(line.split()[1]))
    m = re.match(r"(c?)fn=\((\d+)\)(?: (.*))?", line)
    if m:
        if m.group(3):
            names[m.group(2)] = m.group(3).strip()
        if m.group(1):
            cfn = names.get(m.group(2), "")
        continue
    if line.startswith("calls=") and cfn is not None:
        if pattern.search(cfn):
            calls += int(line.split("=")[1].split()[0])
        cfn = None
print(f"instructions {total}  calls {calls}  per call {total / calls:.0f}" if calls else f"instructions {total}; no call matched {pattern.pattern}")
PY
