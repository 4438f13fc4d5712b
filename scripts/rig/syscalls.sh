#!/bin/bash
# usage: syscalls.sh PID PORT [close] -> the proxy's syscalls per request by name, over
# TLS (perf stat on the syscalls:sys_enter_* tracepoints for 4 s in the middle of a 6 s
# wrk run). Needs perf and tracepoint access.
. "$(dirname "$0")/common.sh"
pid=$1; port=$2; close=${3:-}
out=$(mktemp)
wrk_tls "$port" "$close" 6 > "$out.wrk" &
sleep 1
perf stat -e 'syscalls:sys_enter_*' -p "$pid" -x, -o "$out" -- sleep 4 2>/dev/null
wait
rps=$(awk '/Requests\/sec/{print $2}' "$out.wrk")
awk -F, -v r="$rps" '$1+0 > 0 { n = $3; sub("syscalls:sys_enter_", "", n); printf "%-22s %6.2f\n", n, $1/(r*4); t += $1 }
    END { printf "%-22s %6.2f  (req/s %s)\n", "TOTAL", t/(r*4), r }' "$out" | sort -k2 -nr
rm -f "$out" "$out.wrk"
