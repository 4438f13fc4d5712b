#!/usr/bin/env python3
"""Measures what an idle client connection costs tollgate in memory.

Starts `tollgate run` (one worker thread, access log off) with a plain HTTP listener,
a TLS-terminating listener (throwaway self-signed certificate made with openssl) and a
TLS passthrough listener, opens N idle client connections to one of them (plain: TCP
connect only; tls: a completed TLS handshake, then silence; pass: a ClientHello, which
tollgate routes by SNI and forwards to a sink that accepts and never answers, so each
connection is an open, idle tunnel), and reports the balancer's RSS before and after
and the difference per connection. No request is sent, so no real backend is needed.
A passthrough tunnel holds two sockets in tollgate: keep N at or below half its open
file limit.

usage: scripts/idle-memory.py [--bin target/release/tollgate] [--count 10000] [--mode plain|tls|pass|both]
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

SINK = """
import socket, sys
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", 0)); l.listen(4096)
print(l.getsockname()[1], flush=True)
held = []
while True:
    held.append(l.accept()[0])
"""

def client_hello(ctx, name):
    # The bytes a TLS client sends first, made without a socket.
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()

def measure(binary, mode, count, workdir):
    plain, tls, passthrough = free_port(), free_port(), free_port()
    # The passthrough listener's backend: a process of its own, for its file limit.
    sink = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True)
    sink_port = int(sink.stdout.readline())
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
  - {{ name: pass, listen: "127.0.0.1:{passthrough}", protocol: tls, sni: {{ "idle.test": {{ passthrough: sink }} }} }}
routes: {{ r: [ {{ pool: p }} ] }}
pools:
  p: {{ servers: [ {{ addr: "127.0.0.1:9" }} ] }}
  sink: {{ servers: [ {{ addr: "127.0.0.1:{sink_port}" }} ] }}
timeouts: {{ client_idle: 10m, request_header: 10m }}
limits: {{ max_connections: {count + 100} }}
""")
    proc = subprocess.Popen([binary, "run", "-c", cfg], stderr=subprocess.DEVNULL)
    try:
        wait_port(plain); wait_port(tls); wait_port(passthrough)
        # Warm up: one connection of the kind measured, so lazy one-off allocations
        # (TLS config, first task) are in the baseline.
        socks = []
        ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
        hello = client_hello(ctx, "idle.test")
        port = {"plain": plain, "tls": tls, "pass": passthrough}[mode]
        def open_one():
            s = socket.create_connection(("127.0.0.1", port))
            if mode == "tls":
                s = ctx.wrap_socket(s, server_hostname="idle.test")
            elif mode == "pass":
                s.sendall(hello)
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
        # The sink first: its end of each tunnel closes, so tollgate's graceful
        # shutdown has no open tunnel to wait for.
        sink.kill(); sink.wait()
        proc.terminate(); proc.wait(timeout=30)

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/tollgate")
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--mode", choices=["plain", "tls", "pass", "both"], default="both")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        for mode in (["plain", "tls"] if a.mode == "both" else [a.mode]):
            measure(a.bin, mode, a.count, d)

if __name__ == "__main__":
    main()
