#!/bin/bash
# usage: load-side.sh PID PORT -> per request over TLS keep-alive through PORT: context
# switches of the proxy, of the rig's two backends and of wrk (voluntary, and wrk's
# involuntary: preempted by a backend on its core), the proxy's CPU and wrk's.
. "$(dirname "$0")/common.sh"
pid=$1; port=$2; secs=5; hz=$(getconf CLK_TCK)
backends="$(pgrep -P "$(cat "$RIG/be_a/pid")") $(pgrep -P "$(cat "$RIG/be_b/pid")")"
p0=$(switches "$pid" voluntary_ctxt_switches); b0=$(switches $backends voluntary_ctxt_switches)
c0=$(cpu_ticks "$pid")
out=$(taskset -c "$LOAD_CPU" unshare -m sh -c 'mount --bind "$0" /etc/hosts && shift && exec "$@"' \
    "$RIG/hosts" _ /usr/bin/time -f "WRK %U %S %w %c" wrk -t1 -c50 -d${secs}s "https://app.test:$port/" 2>&1)
p1=$(switches "$pid" voluntary_ctxt_switches); b1=$(switches $backends voluntary_ctxt_switches)
c1=$(cpu_ticks "$pid")
reqs=$(echo "$out" | awk '/requests in/{print $1}')
read -r wu ws ww wc < <(echo "$out" | awk '/^WRK/{print $2, $3, $4, $5}')
awk -v r="$reqs" -v d=$secs -v p=$((p1 - p0)) -v b=$((b1 - b0)) -v ww="$ww" -v wc="$wc" \
    -v pc=$((c1 - c0)) -v hz="$hz" -v wu="$wu" -v ws="$ws" -v port="$port" 'BEGIN {
    printf "%s req/s %6.0f  csw/req: proxy %.3f backends %.3f wrk %.3f (+%.3f involuntary)  cpu us/req: proxy %.1f wrk %.1f\n",
        port, r/d, p/r, b/r, ww/r, wc/r, pc/hz*1e6/r, (wu+ws)*1e6/r }'
