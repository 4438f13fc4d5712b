#!/bin/bash
# usage: p99.sh ROUNDS [RATES] -> p99 at a fixed rate through each proxy's pooled HTTP
# port (HAProxy 8102, nginx 8302, tollgate 8202; the rig must be running): `tollgate
# bench` in open loop (-c 50, 10 s, one thread, on LOAD_CPU with the backends), rounds
# interleaved, the order of the systems rotating each round. Prints one TSV line per
# run (rate, system, round, p50, p90, p99, p999, max in ms, req/s, errors) and the
# medians per rate and system.
set -euo pipefail
. "$(dirname "$0")/common.sh"
rounds=${1:-5}; rates=${2:-"5000 10000"}
BIN=${BIN:-$(cd "$(dirname "$0")/../.." && pwd)/target/release/tollgate}
out=$(mktemp -d)
systems=(haproxy:8102 nginx:8302 tollgate:8202)
for rate in $rates; do
  for r in $(seq 1 "$rounds"); do
    for i in 0 1 2; do
      s=${systems[$(( (i + r) % 3 ))]}; name=${s%%:*}; port=${s##*:}
      taskset -c "$LOAD_CPU" "$BIN" bench -c 50 -d 10s --threads 1 --rate "$rate" \
          --json "$out/$rate-$name-$r.json" "http://127.0.0.1:$port/" > /dev/null 2>&1 || true
    done
  done
done
python3 - "$out" $rates <<'PY'
import json, os, statistics, sys
out, rates = sys.argv[1], sys.argv[2:]
rows = {}
for f in sorted(os.listdir(out)):
    rate, name, r = f[:-5].split("-")
    j = json.load(open(os.path.join(out, f)))
    l = j["latency_ms"]
    errs = j["errors"] if isinstance(j["errors"], int) else sum(j["errors"].values())
    v = [l["p50"], l["p90"], l["p99"], l["p999"], l["max"], j["requests_per_sec"], errs]
    print("\t".join([rate, name, r] + [f"{x:.3f}" if isinstance(x, float) else str(x) for x in v]))
    rows.setdefault((rate, name), []).append(v)
print("rate\tsystem\tp50\tp90\tp99 median [min-max]\tp99.9\tmax\terrors")
for (rate, name), vs in sorted(rows.items()):
    med = [statistics.median(x[i] for x in vs) for i in range(5)]
    p99s = [x[2] for x in vs]
    print(f"{rate}\t{name}\t{med[0]:.3f}\t{med[1]:.3f}\t{med[2]:.3f} [{min(p99s):.3f}-{max(p99s):.3f}]\t{med[3]:.2f}\t{med[4]:.2f}\t{sum(x[6] for x in vs)}")
PY
rm -rf "$out"
