#!/usr/bin/env python3
"""Summarizes several runs of the anchor harness (../shared/bench/run.sh, REPS 3).

usage: scripts/anchor-runs.py anchor15.log anchor16.log ...

Each log's name must carry its run number (anchorN). For every scenario it prints, as a
Markdown table, tollgate's CPU per request over the better of HAProxy's and nginx's in
each run, the median over the runs, and the median of tollgate's requests/s over
HAProxy's (docs/benchmarking.md, "Against HAProxy and nginx").
"""
import sys, re, statistics
rows = {}
for f in sys.argv[1:]:
    run = re.search(r"anchor(\d+)", f).group(1)
    cpu = {}; rps = {}
    for line in open(f):
        m = re.match(r"^\| ([a-z-]+) \| (haproxy|nginx|tollgate) \| 3 \| (\d+) \[[^]]*\] \|([^|]*\|){4} ([\d.]+) \|", line)
        if m:
            cpu[(m.group(1), m.group(2))] = float(m.group(5)); rps[(m.group(1), m.group(2))] = float(m.group(3))
    for sc in sorted({k[0] for k in cpu}):
        try:
            best = min(cpu[(sc, "haproxy")], cpu[(sc, "nginx")])
            rows.setdefault(sc, []).append((run, cpu[(sc, "tollgate")] / best, rps[(sc, "tollgate")] / rps[(sc, "haproxy")]))
        except KeyError:
            pass
order = ["http-close", "http-reuse", "tls-term-close", "tls-term-reuse", "tls-term-newconn", "tls-term-newconn-full", "tls-pass", "tls-pass-newconn"]
runs = [re.search(r"anchor(\d+)", f).group(1) for f in sys.argv[1:]]
print("| row | " + " | ".join("run " + r for r in runs) + " | median | req/s vs HAProxy, median |")
print("| --- |" + " ---: |" * (len(runs) + 2))
for sc in order:
    v = rows.get(sc, [])
    if not v:
        continue
    median = statistics.median(c for _, c, _ in v)
    shown = ("**%.2f×**" if median <= 1.0 else "%.2f×") % median
    print("| %s | %s | %s | %.2f× |" % (sc, " | ".join("%.2f" % c for _, c, _ in v), shown, statistics.median(r for _, _, r in v)))
