# Sourced by the rig's measurement scripts: where the rig lives and how wrk reaches
# https://app.test (a private mount namespace whose /etc/hosts names it).
RIG=${RIG:-/tmp/tollgate-rig}
LOAD_CPU=${LOAD_CPU:-1}

# wrk_tls PORT [close] [SECONDS] [EXTRA...]: wrk -t1 -c50 over TLS, pinned to LOAD_CPU.
wrk_tls() {
    local port=$1 close=${2:-} secs=${3:-5}
    local hdr=()
    [ "$close" = close ] && hdr=(-H "Connection: close")
    taskset -c "$LOAD_CPU" unshare -m sh -c 'mount --bind "$0" /etc/hosts && shift && exec "$@"' \
        "$RIG/hosts" _ wrk -t1 -c50 -d"${secs}s" "${hdr[@]}" "https://app.test:$port/"
}

# cpu_ticks PID...: utime + stime of the processes, in clock ticks.
cpu_ticks() {
    local t=0 u s
    for p in "$@"; do read -r u s < <(awk '{print $14, $15}' "/proc/$p/stat"); t=$((t + u + s)); done
    echo $t
}

# switches PID... KIND: voluntary_ctxt_switches or nonvoluntary_ctxt_switches, summed.
switches() {
    local kind=${!#} t=0 v
    for p in "${@:1:$#-1}"; do v=$(awk -v k="$kind:" '$1 == k {print $2}' "/proc/$p/status"); t=$((t + v)); done
    echo $t
}

# record_under_load PORT CLOSE SECONDS FIELDS PERF_ARGS...: `perf record PERF_ARGS` for
# SECONDS in the middle of a wrk_tls run through PORT; leaves the recording as
# `perf script -F FIELDS` text in $REC/trace and wrk's requests/s in $REC_RPS. The caller
# removes $REC.
record_under_load() {
    local port=$1 close=$2 secs=$3 fields=$4
    shift 4
    REC=$(mktemp -d)
    wrk_tls "$port" "$close" "$(awk -v s="$secs" 'BEGIN { print int(s + 2.5) }')" > "$REC/wrk" &
    sleep 1
    perf record -q "$@" -o "$REC/data" -- sleep "$secs" 2>/dev/null
    wait
    perf script -i "$REC/data" -F "$fields" 2>/dev/null > "$REC/trace"
    REC_RPS=$(awk '/Requests\/sec/{print $2}' "$REC/wrk")
}
