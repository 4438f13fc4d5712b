#!/usr/bin/env bash
# usage: scripts/pgo-build.sh [OUT] -> a profile-guided (PGO) release build of tollgate,
# copied to OUT (default target/pgo/tollgate). Optional: `cargo build --release` stays
# the supported build; this one costs about 2 % less CPU per request or connection in
# the anchor harness (docs/benchmarking.md, "Session 18").
#
# Three steps: an instrumented release build (target/pgo-gen); a training run of that
# binary as the balancer, on loopback, with the built-in backends and `tollgate bench`
# as the load (plain HTTP per-request and pooled, TLS passthrough, TLS terminated
# per-request and pooled, each with keep-alive and a new connection per request, once
# on the current-thread runtime and once on the multi-thread one); then a release build
# that uses the merged profile (target/pgo-use).
#
# Needs, besides the Rust toolchain: llvm-profdata of the LLVM that rustc was built
# with (`rustup component add llvm-tools`, or a distribution's llvm-NN package with the
# same major version; or set PROFDATA), and openssl for the training certificate.
# PGO_PORT_BASE (default 19400) picks the 7 loopback ports the training uses;
# PGO_SECONDS (default 3) how long each load runs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/target/pgo/tollgate}
base=${PGO_PORT_BASE:-19400}
secs=${PGO_SECONDS:-3}

die() { echo "pgo-build: $*" >&2; exit 1; }

# llvm-profdata whose major version is rustc's LLVM's.
major=$(rustc -vV | awk '/^LLVM version/ { split($3, v, "."); print v[1] }')
[[ -n "$major" ]] || die "cannot read rustc's LLVM version (rustc -vV)"
find_profdata() {
    local c
    for c in ${PROFDATA:-} "$(rustc --print sysroot)"/lib/rustlib/*/bin/llvm-profdata \
        "llvm-profdata-$major" "/usr/lib/llvm-$major/bin/llvm-profdata" llvm-profdata; do
        command -v "$c" > /dev/null 2>&1 || continue
        if "$c" --version 2>/dev/null | grep -Eq "LLVM version $major\."; then
            echo "$c"
            return
        fi
    done
}
profdata=$(find_profdata)
[[ -n "$profdata" ]] || die "no llvm-profdata for LLVM $major: rustup component add llvm-tools, or install llvm-$major, or set PROFDATA"
command -v openssl > /dev/null || die "openssl is needed for the training certificate"

# The training's ports: four backends, two plain HTTP listeners, one TLS listener.
plain_a=$base tls_a=$((base + 1)) plain_b=$((base + 2)) tls_b=$((base + 3))
http_close=$((base + 4)) http_pooled=$((base + 5)) edge=$((base + 6))
for port in $(seq "$base" "$edge"); do
    if (echo > "/dev/tcp/127.0.0.1/$port") 2> /dev/null; then
        die "127.0.0.1:$port is in use: set PGO_PORT_BASE to a free range of 7 ports"
    fi
done

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done
    wait 2> /dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "pgo-build: instrumented build (target/pgo-gen)" >&2
# A fixed default path keeps the flags, and so this build, the same from run to run; every
# process below names its profile file itself.
RUSTFLAGS="-Cprofile-generate=$root/target/pgo-gen/default-profiles" CARGO_TARGET_DIR="$root/target/pgo-gen" \
    cargo build --release --manifest-path "$root/Cargo.toml"
bin=$root/target/pgo-gen/release/tollgate

# Waits until something listens on 127.0.0.1:$1 (10 s at most).
wait_port() {
    for _ in $(seq 1 100); do
        (echo > "/dev/tcp/127.0.0.1/$1") 2> /dev/null && return 0
        sleep 0.1
    done
    die "nothing listens on 127.0.0.1:$1"
}

# Backends, instrumented too but their profiles are not used.
for spec in "$plain_a plain_a" "$plain_b plain_b" "$tls_a tls_a --tls" "$tls_b tls_b --tls"; do
    set -- $spec
    LLVM_PROFILE_FILE="$work/unused/%p.profraw" "$bin" backend --listen "127.0.0.1:$1" \
        --name "$2" --body-bytes 100 --threads 1 ${3:-} > "$work/$2.log" 2>&1 &
    pids+=($!)
    wait_port "$1"
done

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=term.pgo.test -addext "subjectAltName=DNS:term.pgo.test,DNS:pooled.pgo.test" \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2> /dev/null

config() {
    cat << EOF
runtime:
  worker_threads: $1
  shutdown_grace: 1s
access_log: off
certificates:
  - { cert: "$work/cert.pem", key: "$work/key.pem" }
listeners:
  - { name: http_close, listen: "127.0.0.1:$http_close", protocol: http, routes: per_request }
  - { name: http_pooled, listen: "127.0.0.1:$http_pooled", protocol: http, routes: pooled }
  - name: edge
    listen: "127.0.0.1:$edge"
    protocol: tls
    sni:
      pass.pgo.test: { passthrough: tls_backends }
      term.pgo.test: { terminate: per_request }
      pooled.pgo.test: { terminate: pooled }
    default: reject
routes:
  per_request: [ { path_prefix: /, pool: plain_per_request } ]
  pooled: [ { path_prefix: /, pool: plain_pooled } ]
pools:
  tls_backends:
    balance: round_robin
    servers: [ { addr: "127.0.0.1:$tls_a" }, { addr: "127.0.0.1:$tls_b" } ]
  plain_per_request:
    balance: round_robin
    backend_connections: per_request
    servers: [ { addr: "127.0.0.1:$plain_a" }, { addr: "127.0.0.1:$plain_b" } ]
  plain_pooled:
    balance: round_robin
    backend_connections: pooled
    servers: [ { addr: "127.0.0.1:$plain_a" }, { addr: "127.0.0.1:$plain_b" } ]
EOF
}

load() {
    LLVM_PROFILE_FILE="$work/unused/%p.profraw" "$bin" bench -c 50 -d "${secs}s" --threads 1 \
        "$@" > "$work/bench.log" 2>&1 || die "training load failed: $* ($(tail -1 "$work/bench.log"))"
}

for threads in 1 2; do
    echo "pgo-build: training, worker_threads: $threads" >&2
    config "$threads" > "$work/tollgate-$threads.yaml"
    LLVM_PROFILE_FILE="$work/unused/%p.profraw" "$bin" check -c "$work/tollgate-$threads.yaml" > /dev/null
    LLVM_PROFILE_FILE="$work/profiles/balancer-%p.profraw" "$bin" run \
        -c "$work/tollgate-$threads.yaml" > "$work/balancer-$threads.log" 2>&1 &
    balancer=$!
    pids+=("$balancer")
    wait_port "$edge"
    for conn in "" --new-connection; do
        load $conn "http://127.0.0.1:$http_close/"
        load $conn "http://127.0.0.1:$http_pooled/"
        for name in pass term pooled; do
            load $conn --insecure --sni "$name.pgo.test" "https://127.0.0.1:$edge/"
        done
    done
    # A clean exit writes the profile.
    kill -TERM "$balancer"
    wait "$balancer" || die "the balancer did not exit cleanly: $(tail -3 "$work/balancer-$threads.log")"
done

"$profdata" merge -o "$work/tollgate.profdata" "$work"/profiles/*.profraw

# The profile's path is new each run, so this build always starts over with it.
echo "pgo-build: optimized build (target/pgo-use)" >&2
RUSTFLAGS="-Cprofile-use=$work/tollgate.profdata" CARGO_TARGET_DIR="$root/target/pgo-use" \
    cargo build --release --manifest-path "$root/Cargo.toml"
mkdir -p "$(dirname "$out")"
cp "$root/target/pgo-use/release/tollgate" "$out"
echo "pgo-build: $out" >&2
