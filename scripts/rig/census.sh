#!/bin/bash
# usage: census.sh PID PORT [close] -> the proxy's syscalls per connection (`close`) or per
# request over TLS, each failure apart (`recvfrom!` is a read that found nothing), and how
# many events each epoll_wait returned. Records every syscall exit of PID for 1.5 s in the
# middle of a 4 s wrk run (`perf record` on the raw_syscalls tracepoint: exact counts,
# far less overhead than strace). Recording still slows the proxy by a few µs per
# connection, so it batches more events per wake than it would unobserved: read the
# calls it makes here, and take how often it sleeps from `load-side.sh` (/proc).
# x86-64 syscall numbers. Needs perf with tracepoint access.
. "$(dirname "$0")/common.sh"
pid=$1; port=$2; close=${3:-}
record_under_load "$port" "$close" 1.5 event,trace -e raw_syscalls:sys_exit -p "$pid"
python3 "$(dirname "$0")/census.py" "$REC/trace" "$close" "$REC_RPS" 1.5
rm -rf "$REC"
