#!/usr/bin/env python3
"""Per-request views of a callgrind profile (from callgrind-pooled.sh or
callgrind-newconn.sh), every figure divided by N (requests or connections):

  cg.py groups FILE N              self cost by crate / module (tokio, http::, malloc, ...)
  cg.py self FILE N [EVENT] [TOP]  functions by self cost, sorted by EVENT (default Ir)
  cg.py inc FILE N REGEX [TOP]     inclusive cost and calls of functions matching REGEX
  cg.py callers FILE N REGEX       who calls the functions matching REGEX, and what it costs

Columns: Ir (instructions), I1mr (L1 instruction misses), D1mr / D1mw (L1 data read /
write misses), as callgrind's cache simulation counts them.
"""
import collections
import re
import sys

# Prefixes that name a group, most specific first.
GROUPS = [
    "tollgate::http::conn", "tollgate::http::exchange", "tollgate::http::client",
    "tollgate::http::proxy", "tollgate::http::headers", "tollgate::upstream",
    "tollgate::http", "tollgate::l4", "tollgate::tls", "tollgate", "hyper_util", "hyper",
    "httparse", "http::", "tokio_util", "tokio", "tracing", "bytes", "rustls", "aws_lc",
    "core::", "alloc::", "std::", "futures",
]


def group_of(fn):
    name = fn.lstrip("<")
    for prefix in GROUPS:
        if name.startswith(prefix):
            return prefix
    if re.match(r"_?_?(int_)?(malloc|free|cfree|realloc|calloc|memalign|posix_memalign)|_int_|_mid_memalign|unlink", name):
        return "malloc"
    if "mem" in name or "str" in name:
        return "libc-mem"
    return "other: " + name[:40]


def parse(path):
    """Self cost per function, inclusive cost of call lines per (caller, callee), call
    counts per callee, and the event names."""
    names, events = {}, []
    self_cost = collections.defaultdict(lambda: [0] * 9)
    calls_into = collections.defaultdict(lambda: [0] * 10)  # (caller, callee) -> calls, costs
    inclusive = collections.defaultdict(lambda: [0] * 9)
    call_count = collections.defaultdict(int)
    fn = cfn = None
    pending = None

    def name(field):
        idx, rest = re.match(r"\((\d+)\)\s*(.*)", field).groups()
        if rest:
            names[idx] = rest
        return names.get(idx, idx)

    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("fn="):
                fn = name(line[3:])
            elif line.startswith("cfn="):
                cfn = name(line[4:])
            elif line.startswith("calls="):
                pending = int(line[6:].split()[0])
            elif line and (line[0].isdigit() or line[0] in "+-*"):
                costs = [int(p) for p in line.split()[1:]]
                for i, c in enumerate(costs):
                    inclusive[fn][i] += c
                if pending is not None:
                    entry = calls_into[(fn, cfn)]
                    entry[0] += pending
                    for i, c in enumerate(costs):
                        entry[i + 1] += c
                    call_count[cfn] += pending
                    pending = None
                else:
                    for i, c in enumerate(costs):
                        self_cost[fn][i] += c
    return events, self_cost, inclusive, calls_into, call_count


def row(costs, n):
    return "%7.0f %6.0f %6.0f %6.0f" % tuple(costs[i] / n for i in (0, 3, 4, 5))


def main(argv):
    if len(argv) < 4:
        sys.exit(__doc__)
    view, path, n = argv[1], argv[2], int(argv[3])
    events, self_cost, inclusive, calls_into, call_count = parse(path)
    header = "%7s %6s %6s %6s" % ("Ir", "I1mr", "D1mr", "D1mw")
    if view == "groups":
        groups = collections.defaultdict(lambda: [0] * 9)
        for fn, costs in self_cost.items():
            for i, c in enumerate(costs):
                groups[group_of(fn)][i] += c
        total = [sum(c[i] for c in self_cost.values()) for i in range(9)]
        print(header, " group")
        print(row(total, n), " TOTAL")
        for g, costs in sorted(groups.items(), key=lambda kv: -kv[1][0])[:30]:
            print(row(costs, n), "", g)
    elif view == "self":
        col = events.index(argv[4]) if len(argv) > 4 else 0
        top = int(argv[5]) if len(argv) > 5 else 40
        print(header, " function")
        for fn, costs in sorted(self_cost.items(), key=lambda kv: -kv[1][col])[:top]:
            print(row(costs, n), "", fn[:140])
    elif view == "inc":
        pattern = re.compile(argv[4])
        top = int(argv[5]) if len(argv) > 5 else 30
        print(header, " calls  function")
        matching = [(fn, c) for fn, c in inclusive.items() if pattern.search(fn)]
        for fn, costs in sorted(matching, key=lambda kv: -kv[1][0])[:top]:
            print(row(costs, n), "%6.1f " % (call_count[fn] / n), fn[:140])
    elif view == "callers":
        pattern = re.compile(argv[4])
        print(" calls", header, " caller -> callee")
        matching = [(k, c) for k, c in calls_into.items() if pattern.search(k[1])]
        for (caller, callee), entry in sorted(matching, key=lambda kv: -kv[1][1])[:25]:
            print("%6.1f" % (entry[0] / n), row(entry[1:], n), "", caller[:80], "->", callee[:50])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
