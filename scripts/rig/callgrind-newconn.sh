#!/bin/bash
# usage: callgrind-newconn.sh OUT BIN CONFIG URL -> callgrind with cache simulation of
# `BIN run --config CONFIG` (on CPU 0) over 8 s of new TLS connections to URL
# (`tollgate bench --new-connection -k --sni app.test -c 4`, on CPU 1) after 3 s of
# warm-up; prints the connection count to divide by. Environment for BIN: CGENV="K=V";
# LOAD_ARGS and UNIT replace the load's options and the name of what it counts
# (callgrind-keepalive.sh uses them).
out=$1; bin=$2; cfg=$3; url=$4; port=${url##*:}; port=${port%/}
taskset -c 0 env ${CGENV:-TOLLGATE_PROFILED=1} valgrind --tool=callgrind --cache-sim=yes \
    --callgrind-out-file="$out" "$bin" run --config "$cfg" > "$out.log" 2>&1 &
vp=$!
for _ in $(seq 1 200); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.3; done
sleep 1
load() { taskset -c 1 "$bin" bench ${LOAD_ARGS:---new-connection -k --sni app.test -c 4} -d "$1" --threads 1 "$url" 2>&1; }
load 3s > /dev/null
callgrind_control -z $vp > /dev/null
n=$(load 8s | awk '/requests  /{print $2}')
callgrind_control -d $vp > /dev/null
sleep 1; kill $vp; wait $vp 2>/dev/null
echo "profile: $(ls -t "$out".* | grep -v '\.log$' | head -1) (divide by $n ${UNIT:-connections})"
