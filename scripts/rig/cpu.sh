#!/bin/bash
# usage: cpu.sh PID URL [SECONDS] -> req/s and the proxy's user / sys CPU µs per request
# (wrk -t1 -c50 keep-alive, plain HTTP, pinned to LOAD_CPU; CPU from /proc/PID/stat).
. "$(dirname "$0")/common.sh"
pid=$1; url=$2; secs=${3:-5}; hz=$(getconf CLK_TCK)
read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
out=$(taskset -c "$LOAD_CPU" wrk -t1 -c50 -d"${secs}s" "$url")
read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
reqs=$(echo "$out" | awk '/requests in/{print $1}')
awk -v r="$reqs" -v d="$secs" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v hz="$hz" 'BEGIN {
    printf "req/s %8.0f  user %5.1f  sys %5.1f  total %5.1f us/req\n", r/d, u/hz*1e6/r, s/hz*1e6/r, (u+s)/hz*1e6/r }'
