#!/bin/bash
# usage: wakers.sh PID PORT [close] -> what wakes the proxy PID from its sleeps, per
# connection (`close`) or per request over TLS: which process's action (wrk, the nginx
# backends) and which kernel event (data arriving, a connection to accept, a TCP state
# change such as the ACK of the proxy's own FIN). Records sched_waking for PID on every
# CPU with kernel call chains for 2 s in the middle of a 4 s wrk run; sched_waking fires
# on the waker's CPU, so the chain shows the cause. Needs perf with tracepoint access.
. "$(dirname "$0")/common.sh"
pid=$1; port=$2; close=${3:-}
record_under_load "$port" "$close" 2 comm,event,ip,sym -a -g -e sched:sched_waking --filter "pid == $pid"
python3 "$(dirname "$0")/wakers.py" "$REC/trace" "$close" "$REC_RPS" 2
rm -rf "$REC"
