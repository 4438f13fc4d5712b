"""What woke a proxy, from a `perf script -F comm,event,ip,sym` dump of sched:sched_waking
with call chains: see wakers.sh."""
import collections
import sys

# The first of these in a call chain (innermost first) names the kernel event.
CAUSES = [
    ("tcp_child_process", "a connection to accept"),
    ("tcp_reset", "a reset"),
    ("sock_def_wakeup", "a TCP state change (FIN, the ACK of our FIN)"),
    ("tcp_data_queue", "data"),
    ("tcp_rcv_established", "data (fast path)"),
    ("sk_stream_write_space", "send space"),
    ("hrtimer_wakeup", "a timer"),
    ("eventfd_write", "an eventfd"),
]


def cause_of(symbols):
    for sym in symbols:
        for name, what in CAUSES:
            if sym == name:
                return what
    return "other"


def main(path, close, rps, seconds):
    counts = collections.Counter()
    for record in open(path).read().split("\n\n"):
        lines = [line.split() for line in record.strip().splitlines() if line.strip()]
        if not lines:
            continue
        waker = lines[0][0]
        symbols = [parts[1] for parts in lines[1:] if len(parts) > 1]
        counts[(waker, cause_of(symbols))] += 1
    per = float(rps) * float(seconds)
    if not per:
        sys.exit("no traffic seen")
    unit = "connection" if close == "close" else "request"
    print(f"wake-ups per {unit}: {sum(counts.values()) / per:.2f}")
    for (waker, cause), n in counts.most_common(12):
        print(f"  {n / per:6.3f}  {waker:<12} {cause}")


if __name__ == "__main__":
    main(*sys.argv[1:5])
