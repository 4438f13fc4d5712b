"""Per-connection (or per-request) syscall census of a `perf script -F event,trace` dump
of raw_syscalls:sys_exit: see census.sh."""
import collections
import re
import sys

# x86-64 numbers of the syscalls a proxy makes; others print as their number.
NAMES = {0: "read", 1: "write", 3: "close", 12: "brk", 16: "ioctl", 20: "writev",
         41: "socket", 42: "connect", 44: "sendto", 45: "recvfrom", 46: "sendmsg",
         47: "recvmsg", 48: "shutdown", 54: "setsockopt", 55: "getsockopt",
         72: "fcntl", 228: "clock_gettime", 232: "epoll_wait", 233: "epoll_ctl",
         281: "epoll_pwait", 288: "accept4", 291: "epoll_create1", 441: "epoll_pwait2"}


def main(path, close, rps, seconds):
    calls = collections.Counter()
    returned = collections.Counter()  # epoll_wait calls by the events they returned
    accepted = 0
    for line in open(path):
        m = re.search(r"sys_exit: NR (\d+) = (-?\d+)", line)
        if not m:
            continue
        nr, ret = int(m.group(1)), int(m.group(2))
        name = NAMES.get(nr, str(nr))
        if name == "accept4" and ret >= 0:
            accepted += 1
        if name == "epoll_wait":
            returned[min(ret, 4)] += 1
        calls[name + ("!" if ret < 0 else "")] += 1
    per = accepted if close == "close" else float(rps) * float(seconds)
    unit = "connection" if close == "close" else "request"
    if not per:
        sys.exit("no traffic seen")
    print(f"per {unit} ({per:.0f} of them): {sum(calls.values()) / per:.2f} syscalls")
    for name, n in calls.most_common():
        print(f"  {name:<14} {n / per:6.2f}")
    print("  epoll_wait by events returned: " + "  ".join(
        f"{k if k < 4 else '4+'}: {returned[k] / per:.2f}" for k in sorted(returned)))


if __name__ == "__main__":
    main(*sys.argv[1:5])
