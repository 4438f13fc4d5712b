#!/bin/bash
# usage: tls-cpu.sh PID PORT [close] [SECONDS] -> the proxy's CPU µs and context switches
# per request over TLS (https://app.test:PORT/, wrk -t1 -c50; `close`: a new connection
# per request, as wrk resumes its TLS sessions).
. "$(dirname "$0")/common.sh"
pid=$1; port=$2; close=${3:-}; secs=${4:-5}; hz=$(getconf CLK_TCK)
c0=$(switches "$pid" voluntary_ctxt_switches); n0=$(switches "$pid" nonvoluntary_ctxt_switches)
read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
out=$(wrk_tls "$port" "$close" "$secs")
read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
c1=$(switches "$pid" voluntary_ctxt_switches); n1=$(switches "$pid" nonvoluntary_ctxt_switches)
reqs=$(echo "$out" | awk '/requests in/{print $1}')
awk -v r="$reqs" -v d="$secs" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v hz="$hz" -v p="$port" \
    -v c=$((c1 - c0)) -v n=$((n1 - n0)) 'BEGIN {
    printf "%s req/s %6.0f  user %6.1f  sys %6.1f  total %6.1f us/req  vcsw/req %.2f  ivcsw/req %.2f\n",
        p, r/d, u/hz*1e6/r, s/hz*1e6/r, (u+s)/hz*1e6/r, c/r, n/r }'
