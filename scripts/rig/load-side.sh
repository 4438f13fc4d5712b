#!/bin/bash
# usage: load-side.sh PID PORT [close] -> per request over TLS through PORT (keep-alive,
# or with `close` a new connection per request): context switches of the proxy, of the
# rig's two backends and of wrk (voluntary, and wrk's involuntary: preempted by a backend
# on its core), the proxy's user and system CPU and wrk's.
. "$(dirname "$0")/common.sh"
pid=$1; port=$2; close=${3:-}; secs=5; hz=$(getconf CLK_TCK)
hdr=(); [ "$close" = close ] && hdr=(-H "Connection: close")
backends="$(pgrep -P "$(cat "$RIG/be_a/pid")") $(pgrep -P "$(cat "$RIG/be_b/pid")")"
p0=$(switches "$pid" voluntary_ctxt_switches); b0=$(switches $backends voluntary_ctxt_switches)
read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
out=$(taskset -c "$LOAD_CPU" unshare -m sh -c 'mount --bind "$0" /etc/hosts && shift && exec "$@"' \
    "$RIG/hosts" _ /usr/bin/time -f "WRK %U %S %w %c" wrk -t1 -c50 -d${secs}s "${hdr[@]}" "https://app.test:$port/" 2>&1)
p1=$(switches "$pid" voluntary_ctxt_switches); b1=$(switches $backends voluntary_ctxt_switches)
read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
reqs=$(echo "$out" | awk '/requests in/{print $1}')
read -r wu ws ww wc < <(echo "$out" | awk '/^WRK/{print $2, $3, $4, $5}')
awk -v r="$reqs" -v d=$secs -v p=$((p1 - p0)) -v b=$((b1 - b0)) -v ww="$ww" -v wc="$wc" \
    -v pu=$((u1 - u0)) -v ps=$((s1 - s0)) -v hz="$hz" -v wu="$wu" -v ws="$ws" -v port="$port" 'BEGIN {
    printf "%s req/s %6.0f  csw/req: proxy %.3f backends %.3f wrk %.3f (+%.3f involuntary)  cpu us/req: proxy %.1f (user %.1f sys %.1f) wrk %.1f\n",
        port, r/d, p/r, b/r, ww/r, wc/r, (pu+ps)/hz*1e6/r, pu/hz*1e6/r, ps/hz*1e6/r, (wu+ws)*1e6/r }'
