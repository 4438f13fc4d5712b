#!/bin/bash
# usage: wakers.sh PID PORT [close] -> what wakes the proxy PID from its sleeps, per
# connection (`close`) or per request over TLS: which process's action (wrk, the nginx
# backends) and which kernel event (data arriving, a connection to accept, a TCP state
# change such as the ACK of the proxy's own FIN). Records sched_waking for PID on every
# CPU with kernel call chains for 2 s in the middle of a 4 s wrk run; sched_waking fires
# on the waker's CPU, so the chain shows the cause. Needs perf with tracepoint access.
. "$(dirname "$0")/common.sh"
pid=$1; port=$2; close=${3:-}
out=$(mktemp -d)
wrk_tls "$port" "$close" 4 > "$out/wrk" &
sleep 1
perf record -q -a -g -e sched:sched_waking --filter "pid == $pid" -o "$out/data" -- sleep 2 2>/dev/null
wait
perf script -i "$out/data" -F comm,event,ip,sym 2>/dev/null > "$out/trace"
rps=$(awk '/Requests\/sec/{print $2}' "$out/wrk")
python3 "$(dirname "$0")/wakers.py" "$out/trace" "$close" "$rps" 2
rm -rf "$out"
