#!/usr/bin/env python3
"""Where a proxied request's time goes (a profile, not a test; Linux, root, `perf`, `ss`, `wrk`).

Runs wrk -t2 -c32 against a proxy already listening on PORT (in front of nginx, as
`scripts/bench-proxy.sh` sets them up), records 1 s of syscall and scheduler tracepoints of wrk,
the proxy and the nginx worker, matches the connections through `ss -tnp`, and splits each
request into:

  A  wrk's write of the request  -> the proxy's read of it
  P  the proxy's read             -> the proxy's write of the answer (nginx included)
  D  the proxy's write            -> wrk's read of the answer

It prints each hop's distribution, the slowest 1 % of requests by hop (and in how many separate
bursts they fall), and, for the slowest 1 % of A, whether the proxy thread that read the request
was running, runnable (waiting for a CPU) or asleep meanwhile.

    scripts/trace-proxy-latency.py PORT [--nginx-pid PID] [--seconds 1]

BENCHMARKS.md "Proxy" explains the numbers this gave for issue 17.
"""

import argparse
import bisect
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CALLS = ["read", "write", "recvfrom", "sendto", "writev", "readv"]
SENDS = {"write", "sendto", "writev"}
RECEIVES = {"read", "recvfrom", "readv"}
BURST_GAP_S = 0.002


def pid_listening(port):
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True).stdout
    found = re.search(r"pid=(\d+)", out)
    if not found:
        sys.exit(f"nothing listens on port {port}")
    return int(found[1])


def quantiles(values):
    if not values:
        return "n=0"
    v = sorted(values)

    def at(q):
        return v[min(len(v) - 1, int(q * len(v)))]

    return (f"n={len(v)} mean={sum(v) / len(v):.3f} p50={at(.5):.3f} p90={at(.9):.3f} "
            f"p99={at(.99):.3f} p99.9={at(.999):.3f} max={v[-1]:.3f} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--nginx-pid", type=int, help="the nginx worker (default: the only one)")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of the recording")
    args = parser.parse_args()
    proxy = pid_listening(args.port)
    if args.nginx_pid:
        nginx = args.nginx_pid
    else:
        workers = subprocess.run(["pgrep", "-f", "nginx: worker"], capture_output=True, text=True).stdout.split()
        if len(workers) != 1:
            sys.exit("give --nginx-pid: not exactly one nginx worker runs")
        nginx = int(workers[0])
    url = f"http://127.0.0.1:{args.port}/"
    work = Path(tempfile.mkdtemp(prefix="proxy-latency-"))
    subprocess.run(["wrk", "-t2", "-c32", "-d1s", url], capture_output=True, check=True)
    run_s = int(args.seconds + 3)
    load = subprocess.Popen(["wrk", "-t2", "-c32", f"-d{run_s}s", "--latency", url],
                            stdout=subprocess.PIPE, text=True)
    time.sleep(1.2)
    sockets = subprocess.run(["ss", "-tnpH", "state", "established"], capture_output=True, text=True).stdout
    events = ["-e", "sched:sched_switch", "-e", "sched:sched_wakeup"]
    for call in CALLS:
        events += ["-e", f"syscalls:sys_enter_{call}", "-e", f"syscalls:sys_exit_{call}"]
    data = work / "perf.data"
    subprocess.run(["perf", "record", "-q", *events, "-p", f"{load.pid},{proxy},{nginx}", "-o", str(data),
                    "--", "sleep", str(args.seconds)], capture_output=True, check=True)
    wrk_out = load.communicate()[0]
    script = subprocess.run(["perf", "script", "-i", str(data), "-F", "pid,tid,time,event,trace"],
                            capture_output=True, text=True).stdout
    shutil.rmtree(work, ignore_errors=True)
    wrk = load.pid
    p99 = re.search(r"\s99%\s+(\S+)", wrk_out)
    print(f"wrk over {run_s} s (recording {args.seconds} s of it): p99 {p99[1] if p99 else '?'}")

    # (pid, fd) -> (local, peer), and back.
    ends, by_address = {}, {}
    for line in sockets.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        local, peer = fields[2], fields[3]
        for pid, fd in re.findall(r"pid=(\d+),fd=(\d+)", line):
            ends[(int(pid), int(fd))] = (local, peer)
            by_address[(local, peer)] = (int(pid), int(fd))

    def peer_of(pid, fd):
        pair = ends.get((pid, fd))
        return by_address.get((pair[1], pair[0])) if pair else None

    open_fd = {}
    sends = collections.defaultdict(list)
    receives = collections.defaultdict(list)
    reader = {}
    states = collections.defaultdict(list)
    line_re = re.compile(r"\s*(\d+)/(\d+)\s+([\d.]+):\s+(\S+):\s*(.*)")
    for line in script.splitlines():
        m = line_re.match(line)
        if not m:
            continue
        pid, tid, t, event, rest = int(m[1]), int(m[2]), float(m[3]), m[4], m[5]
        if event == "sched:sched_switch":
            s = re.search(r"prev_pid=(\d+) prev_prio=\d+ prev_state=(\S+) ==> .*next_pid=(\d+)", rest)
            if s:
                states[int(s[1])].append((t, "runnable" if s[2].startswith("R") else "asleep"))
                states[int(s[3])].append((t, "running"))
            continue
        if event == "sched:sched_wakeup":
            s = re.search(r"pid=(\d+)", rest)
            if s:
                states[int(s[1])].append((t, "runnable"))
            continue
        syscall = re.match(r"syscalls:sys_(enter|exit)_(\w+)", event)
        if not syscall:
            continue
        call = syscall[2]
        if syscall[1] == "enter":
            fd = re.search(r"fd: (0x[0-9a-f]+)", rest)
            if fd:
                open_fd[tid] = int(fd[1], 16)
                if call in SENDS:
                    sends[(pid, open_fd[tid])].append(t)
        else:
            fd = open_fd.pop(tid, None)
            result = int(rest.strip(), 16)
            if fd is not None and call in RECEIVES and 0 < result < 1 << 63:
                receives[(pid, fd)].append(t)
                reader[(pid, fd)] = tid

    requests = []
    for (pid, fd), writes in sends.items():
        proxy_end = peer_of(pid, fd) if pid == wrk else None
        if not proxy_end or proxy_end[0] != proxy:
            continue
        wrk_reads, proxy_reads, proxy_writes = receives[(pid, fd)], receives[proxy_end], sends[proxy_end]
        for t0 in writes:
            i = bisect.bisect_left(proxy_reads, t0)
            if i == len(proxy_reads):
                continue
            t1 = proxy_reads[i]
            j = bisect.bisect_left(proxy_writes, t1)
            if j == len(proxy_writes):
                continue
            t2 = proxy_writes[j]
            k = bisect.bisect_left(wrk_reads, t2)
            if k == len(wrk_reads):
                continue
            requests.append((wrk_reads[k] - t0, t1 - t0, t2 - t1, wrk_reads[k] - t2, t0, t1, reader.get(proxy_end)))
    if not requests:
        sys.exit("no request could be followed (is the proxy on PORT in front of this nginx?)")
    ms = 1e3
    print("end to end", quantiles([r[0] * ms for r in requests]))
    for name, index in (("A wrk -> proxy", 1), ("P proxy (with nginx)", 2), ("D proxy -> wrk", 3)):
        print(f"  {name:22s}", quantiles([r[index] * ms for r in requests]))
    requests.sort()
    slowest = requests[int(len(requests) * 0.99):]
    starts = sorted(r[4] for r in slowest)
    bursts = 1 + sum(1 for a, b in zip(starts, starts[1:]) if b - a > BURST_GAP_S)
    mean = lambda index: sum(r[index] for r in slowest) / len(slowest) * ms  # noqa: E731
    print(f"slowest 1 % ({len(slowest)}): {mean(0):.2f} ms = A {mean(1):.2f} + P {mean(2):.2f} + D {mean(3):.2f},"
          f" in {bursts} bursts (gaps over {BURST_GAP_S * ms:.0f} ms)")

    def time_in_states(tid, start, end):
        spent = collections.Counter()
        state, since = None, start
        for t, new in sorted(states[tid]):
            if t <= start:
                state = new
                continue
            if t >= end:
                break
            if state:
                spent[state] += t - since
            state, since = new, t
        if state:
            spent[state] += end - since
        return spent

    by_a = sorted(requests, key=lambda r: r[1])[int(len(requests) * 0.99):]
    spent = collections.Counter()
    for r in by_a:
        if r[6] is not None:
            spent.update(time_in_states(r[6], r[4], r[5]))
    summary = ", ".join(f"{state} {value / len(by_a) * ms:.2f} ms" for state, value in spent.most_common())
    print(f"slowest 1 % of A: the proxy thread that read the request was, on average: {summary}")


if __name__ == "__main__":
    main()
