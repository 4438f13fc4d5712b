#!/bin/bash
# usage: segments.sh PORT [close] -> TCP counters per request on the whole host (wrk,
# proxy and backends) while wrk runs through PORT over TLS: `nstat` deltas, those of at
# least 0.01 per request.
. "$(dirname "$0")/common.sh"
port=$1; close=${2:-}
nstat -n > /dev/null
out=$(wrk_tls "$port" "$close" 4)
reqs=$(echo "$out" | awk '/requests in/{print $1}')
nstat -z 2>/dev/null | awk -v r="$reqs" '/^(Tcp|TcpExt)/ && $2/r >= 0.01 { printf "%-30s %7.2f\n", $1, $2/r }'
