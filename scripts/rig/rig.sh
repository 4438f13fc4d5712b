#!/bin/bash
# The profiling rig of docs/benchmarking.md: two nginx backends (HTTP 9001/9002, TLS
# 9443/9444; CPU 1), and nginx, HAProxy and tollgate as proxies in the same modes (CPU 0):
#   nginx    8301 http close, 8302 http pooled, 8303 TLS passthrough
#   HAProxy  8101 http close, 8102 http pooled, 8103 TLS passthrough, 8104/8105 TLS terminated
#   tollgate 8201 http close, 8202 http pooled, 8203 TLS passthrough, 8204/8205 TLS terminated
# Needs nginx (with the stream module), haproxy, wrk and openssl (../shared/bench/install-deps.sh).
#   scripts/rig/rig.sh start [TOLLGATE_BIN]   # default target/release/tollgate
#   scripts/rig/rig.sh pids                   # PID of each proxy's worker and of the backends
#   scripts/rig/rig.sh stop
# RIG (default /tmp/tollgate-rig) holds the configs, certificates, pid files and logs.
set -euo pipefail
RIG=${RIG:-/tmp/tollgate-rig}
BIN=${2:-$(cd "$(dirname "$0")/../.." && pwd)/target/release/tollgate}

# nginx_prelude DIR: the start of an nginx.conf with one worker whose files live in DIR,
# up to the open `http {` block.
nginx_prelude() {
    cat <<CONF
worker_processes 1;
worker_rlimit_nofile 20000;
pid $1/pid;
error_log $1/error.log warn;
events { worker_connections 10000; }
http {
    access_log off; server_tokens off;
    client_body_temp_path $1/body; proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fcgi; uwsgi_temp_path $1/uwsgi; scgi_temp_path $1/scgi;
    keepalive_requests 1000000;
CONF
}

write_configs() {
    mkdir -p "$RIG"
    if [ ! -f "$RIG/tls.crt" ]; then
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
            -subj /CN=app.test -addext subjectAltName=DNS:app.test,DNS:api.test \
            -keyout "$RIG/tls.key" -out "$RIG/tls.crt" 2>/dev/null
        cat "$RIG/tls.crt" "$RIG/tls.key" > "$RIG/tls.pem"
    fi
    echo "127.0.0.1 localhost app.test" > "$RIG/hosts"
    for be in a:9001:9443 b:9002:9444; do
        IFS=: read -r name http tls <<< "$be"
        local d="$RIG/be_$name"; mkdir -p "$d"
        { nginx_prelude "$d"; cat <<CONF
    default_type text/plain; keepalive_timeout 75s;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:BE_$name:1m;
    server { listen 127.0.0.1:$http backlog=4096; listen 127.0.0.1:$tls ssl backlog=4096;
      ssl_certificate $RIG/tls.crt; ssl_certificate_key $RIG/tls.key;
      location / { add_header X-Backend $name always; return 200 "$(printf 'x%.0s' $(seq 1 100))"; } }
}
CONF
        } > "$d/nginx.conf"
    done
    local d="$RIG/ngp"; mkdir -p "$d"
    { echo "load_module /usr/lib/nginx/modules/ngx_stream_module.so;"; nginx_prelude "$d"; cat <<CONF
    keepalive_timeout 60s;
    upstream be_close { server 127.0.0.1:9001; server 127.0.0.1:9002; }
    upstream be_reuse { server 127.0.0.1:9001; server 127.0.0.1:9002; keepalive 64; keepalive_requests 1000000; }
    server { listen 127.0.0.1:8301 backlog=4096; location / { proxy_pass http://be_close; } }
    server { listen 127.0.0.1:8302 backlog=4096; location / { proxy_pass http://be_reuse; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
stream {
    map \$ssl_preread_server_name \$pass_upstream { app.test pass_app; default pass_reject; }
    upstream pass_app { server 127.0.0.1:9443; server 127.0.0.1:9444; }
    upstream pass_reject { server 127.0.0.1:9444 down; }
    server { listen 127.0.0.1:8303 backlog=4096; ssl_preread on; proxy_pass \$pass_upstream; proxy_connect_timeout 5s; }
}
CONF
    } > "$d/nginx.conf"
    cat > "$RIG/hap.cfg" <<CONF
global
    nbthread 1
    maxconn 4000
defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client  60s
    timeout server  60s
    timeout http-keep-alive 60s
    maxconn 4000
backend be_close
    balance roundrobin
    option http-server-close
    http-reuse never
    server a 127.0.0.1:9001
    server b 127.0.0.1:9002
backend be_reuse
    balance roundrobin
    http-reuse safe
    server a 127.0.0.1:9001
    server b 127.0.0.1:9002
frontend fe_http_close
    bind 127.0.0.1:8101
    default_backend be_close
frontend fe_http_reuse
    bind 127.0.0.1:8102
    default_backend be_reuse
frontend fe_tls_pass
    mode tcp
    bind 127.0.0.1:8103
    tcp-request inspect-delay 5s
    tcp-request content accept if { req.ssl_hello_type 1 }
    use_backend pass_app if { req.ssl_sni -i app.test }
backend pass_app
    mode tcp
    balance roundrobin
    server a 127.0.0.1:9443
    server b 127.0.0.1:9444
frontend fe_tls_close
    bind 127.0.0.1:8104 ssl crt $RIG/tls.pem
    default_backend be_close
frontend fe_tls_reuse
    bind 127.0.0.1:8105 ssl crt $RIG/tls.pem
    default_backend be_reuse
CONF
    cat > "$RIG/tollgate.yaml" <<CONF
runtime:
  worker_threads: 1
access_log: off
certificates:
  - { cert: "$RIG/tls.crt", key: "$RIG/tls.key" }
listeners:
  - { name: http_close, listen: "127.0.0.1:8201", protocol: http, routes: close }
  - { name: http_reuse, listen: "127.0.0.1:8202", protocol: http, routes: reuse }
  - { name: tls_close, listen: "127.0.0.1:8204", protocol: tls, default: { terminate: close } }
  - { name: tls_reuse, listen: "127.0.0.1:8205", protocol: tls, default: { terminate: reuse } }
  - name: tls_pass
    listen: "127.0.0.1:8203"
    protocol: tls
    sni:
      "app.test": { passthrough: tls_app }
    default: reject
routes:
  close: [ { path_prefix: /, pool: web_close } ]
  reuse: [ { path_prefix: /, pool: web_reuse } ]
pools:
  web_close:
    balance: round_robin
    backend_connections: per_request
    servers: [ { addr: "127.0.0.1:9001" }, { addr: "127.0.0.1:9002" } ]
  web_reuse:
    balance: round_robin
    backend_connections: pooled
    servers: [ { addr: "127.0.0.1:9001" }, { addr: "127.0.0.1:9002" } ]
  tls_app:
    balance: round_robin
    servers: [ { addr: "127.0.0.1:9443" }, { addr: "127.0.0.1:9444" } ]
CONF
}

worker_of() { pgrep -P "$(cat "$1")" | head -1; }

case "${1:-}" in
start)
    write_configs
    for be in be_a be_b; do taskset -c 1 nginx -c "$RIG/$be/nginx.conf" -p "$RIG/$be"; done
    taskset -c 0 nginx -c "$RIG/ngp/nginx.conf" -p "$RIG/ngp"
    taskset -c 0 haproxy -D -f "$RIG/hap.cfg" -p "$RIG/hap.pid"
    # In its own session, as the daemonized nginx and HAProxy are: with the kernel's
    # autogroup scheduling, a process started from the caller's session shares wrk's
    # task group, whose weight is then split between the proxy's core and the load core.
    # wrk then loses the load core to the backends more often (docs/benchmarking.md,
    # "Session 17").
    setsid taskset -c 0 "$BIN" run --config "$RIG/tollgate.yaml" > "$RIG/tollgate.log" 2>&1 &
    echo $! > "$RIG/tollgate.pid"
    sleep 1
    "$0" pids
    ;;
pids)
    echo "nginx-proxy $(worker_of "$RIG/ngp/pid")"
    echo "haproxy $(cat "$RIG/hap.pid")"
    echo "tollgate $(cat "$RIG/tollgate.pid")"
    echo "backends $(worker_of "$RIG/be_a/pid") $(worker_of "$RIG/be_b/pid")"
    ;;
stop)
    [ -f "$RIG/tollgate.pid" ] && kill "$(cat "$RIG/tollgate.pid")" 2>/dev/null || true
    [ -f "$RIG/hap.pid" ] && kill "$(cat "$RIG/hap.pid")" 2>/dev/null || true
    for d in ngp be_a be_b; do nginx -c "$RIG/$d/nginx.conf" -p "$RIG/$d" -s stop 2>/dev/null || true; done
    ;;
*)
    sed -n '2,13p' "$0"; exit 2
    ;;
esac
