#!/usr/bin/env python3
"""Measures what an idle client connection costs tollgate in memory.

Starts `tollgate run` (one worker thread, access log off) with a plain HTTP listener
and a TLS-terminating listener (throwaway self-signed certificate made with openssl),
opens N idle client connections to one of them (plain: TCP connect only; tls: a
completed TLS handshake, then silence), and reports the balancer's RSS before and after
and the difference per connection. No request is sent, so no backend is needed.

usage: scripts/idle-memory.py [--bin target/release/tollgate] [--count 10000] [--mode plain|tls|both]
"""
import argparse, os, socket, ssl, subprocess, sys, tempfile, time

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def wait_port(port, deadline=10):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close(); return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"port {port} never opened")

def measure(binary, mode, count, workdir):
    plain, tls = free_port(), free_port()
    cert, key = os.path.join(workdir, "c.pem"), os.path.join(workdir, "k.pem")
    if not os.path.exists(cert):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=idle.test",
                        "-addext", "subjectAltName=DNS:idle.test"], check=True, capture_output=True)
    cfg = os.path.join(workdir, "idle.yaml")
    with open(cfg, "w") as f:
        f.write(f"""runtime: {{ worker_threads: 1 }}
access_log: off
certificates: [ {{ cert: "{cert}", key: "{key}" }} ]
listeners:
  - {{ name: plain, listen: "127.0.0.1:{plain}", protocol: http, routes: r }}
  - {{ name: tls, listen: "127.0.0.1:{tls}", protocol: tls, default: {{ terminate: r }} }}
routes: {{ r: [ {{ pool: p }} ] }}
pools: {{ p: {{ servers: [ {{ addr: "127.0.0.1:9" }} ] }} }}
timeouts: {{ client_idle: 10m, request_header: 10m }}
limits: {{ max_connections: {count + 100} }}
""")
    proc = subprocess.Popen([binary, "run", "-c", cfg], stderr=subprocess.DEVNULL)
    try:
        wait_port(plain); wait_port(tls)
        # Warm up: one connection of the kind measured, so lazy one-off allocations
        # (TLS config, first task) are in the baseline.
        socks = []
        ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
        def open_one():
            s = socket.create_connection(("127.0.0.1", tls if mode == "tls" else plain))
            if mode == "tls":
                s = ctx.wrap_socket(s, server_hostname="idle.test")
            return s
        warm = open_one(); time.sleep(0.5)
        before = rss_kib(proc.pid)
        for _ in range(count):
            socks.append(open_one())
        time.sleep(2)
        after = rss_kib(proc.pid)
        per = (after - before) * 1024 / count
        print(f"{mode}: {count} idle connections, RSS {before/1024:.1f} MiB -> {after/1024:.1f} MiB, "
              f"{per/1024:.1f} KiB per connection")
        for s in socks: s.close()
        warm.close()
        return per
    finally:
        proc.terminate(); proc.wait(timeout=30)

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/tollgate")
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--mode", choices=["plain", "tls", "both"], default="both")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        for mode in (["plain", "tls"] if a.mode == "both" else [a.mode]):
            measure(a.bin, mode, a.count, d)

if __name__ == "__main__":
    main()
