#!/bin/bash
# usage: callgrind-pooled.sh OUT URL CMD... -> callgrind with cache simulation over exactly
# N (default 10,000) keep-alive requests to URL (wrk -t1 -c10 on CPU 1), after 2,000
# warm-up requests. CMD is the proxy to profile, run under valgrind. Pin the script, not
# CMD: `taskset -c 0 scripts/rig/callgrind-pooled.sh out http://127.0.0.1:8202/ \
#   target/release/tollgate run --config /tmp/tollgate-rig/tollgate.yaml`
# (a rig tollgate on the same ports must be stopped first). Analyse with cg.py.
here=$(cd "$(dirname "$0")" && pwd)
out=$1; url=$2; shift 2; N=${N:-10000}
valgrind --tool=callgrind --cache-sim=yes --callgrind-out-file="$out" "$@" > "$out.log" 2>&1 &
vp=$!
for _ in $(seq 1 100); do curl -s -o /dev/null "$url" && break; sleep 0.3; done
N=2000 taskset -c 1 wrk -t1 -c10 -d60s -s "$here/stopat.lua" "$url" > /dev/null
callgrind_control -z $vp > /dev/null
N=$N taskset -c 1 wrk -t1 -c10 -d60s -s "$here/stopat.lua" "$url" | grep "requests in"
callgrind_control -d $vp > /dev/null
sleep 1; kill $vp; wait $vp 2>/dev/null
echo "profile: $(ls -t "$out".* | grep -v '\.log$' | head -1) (divide by $N)"
