#!/usr/bin/env bash
# Throughput and the server's CPU time per call, of a pipelined `add` load against our
# server, both pinned to core 0 (as `bench run` places them):
#
#   benches/scripts/load-cpu.sh BENCH "SERVER_ARGS"
#
# BENCH is a `bench` binary; SERVER_ARGS are added to `bench server --system ours` (for
# example "--metrics"). `bench load` runs 1 connection x 64 in flight for 3 s. Prints
# "THROUGHPUT NS": calls/s, and the server's on-CPU time (every thread, user and kernel,
# from /proc/PID/task/*/schedstat, in nanoseconds) divided by the calls. On a shared
# machine the CPU time per call moves far less than the throughput: run off and on in
# turns, several times, and compare medians.
set -euo pipefail
bench=$1; args=$2
work=$(mktemp -d); mkfifo $work/in
taskset -c 0 $bench server --system ours --addr 127.0.0.1:0 $args <$work/in >$work/out 2>$work/err &
spid=$!; exec 3>$work/in
for _ in $(seq 1 100); do grep -q '^PORT ' $work/out 2>/dev/null && break; sleep 0.1; done
port=$(sed -n 's/^PORT //p' $work/out)
cpu() { cat /proc/$spid/task/*/schedstat | awk '{s+=$1} END {print s}'; }
c0=$(cpu)
out=$(taskset -c 0 $bench load --addr 127.0.0.1:$port --method add --args '[1, 2]' --concurrency 64 --connections 1 --duration 3 --warmup 0 2>&1)
c1=$(cpu)
calls=$(echo "$out" | grep -o 'calls: [0-9]*' | head -1 | cut -d' ' -f2)
tput=$(echo "$out" | grep -o 'throughput: [0-9]*' | cut -d' ' -f2)
echo "$tput $(( (c1 - c0) / calls ))"
exec 3>&-; wait $spid || true; rm -rf $work
