#!/usr/bin/env python3
"""Benchmark (not a test): WebSocket tunnels through `switchyard proxy` and through HAProxy
(Debian), side by side in one run.

Both proxies (one thread each: `threads = 1`, `nbthread 1`, pinned to CPU 0 with taskset) sit
in front of the same echo server (`switchyard bench tunnel-echo`). The load generator
(`switchyard bench tunnel`, pinned with the echo server to the other CPUs) opens --connections
upgraded connections through a proxy and sends one --message-bytes message at a time on each,
timing every round trip. Rounds alternate between the proxies; the table gives medians of the
rounds, the proxy's CPU time per message (from /proc/PID/stat) and the ratios. Plain tunnels
only: what TLS adds is the same per byte as for requests (`scripts/bench-proxy.sh` with TLS=1).

Usage: scripts/bench-websocket.py [--binary target/release/switchyard] [--rounds 5]
       [--duration 10] [--connections 32] [--message-bytes 128] [--no-write]
Writes the "Proxy: WebSocket tunnels" section of BENCHMARKS.md between its markers.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- bench-websocket:begin -->", "<!-- bench-websocket:end -->"
START_DEADLINE_S = 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port):
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on port {port}")


def cpu_ticks(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def pinned(cpus, command):
    return (["taskset", "-c", cpus] if shutil.which("taskset") and os.cpu_count() > 1 else []) + command


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", default=None, help="switchyard binary (default: build --release)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=10, help="seconds per round")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--message-bytes", type=int, default=128)
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    args = parser.parse_args()
    if not shutil.which("haproxy"):
        sys.exit("haproxy is not installed (apt-get install -y haproxy)")
    binary = args.binary
    if binary is None:
        subprocess.run(["cargo", "build", "--release", "-p", "switchyard"], cwd=ROOT, check=True)
        binary = str(ROOT / "target" / "release" / "switchyard")
    other_cpus = "1-%d" % (os.cpu_count() - 1) if os.cpu_count() > 1 else "0"
    # "HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/" -> "HAProxy 2.6.12-1+deb12u4"
    version_line = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.split("\n")[0].split()
    haproxy_version = f"HAProxy {version_line[2]}" if len(version_line) > 2 else "HAProxy"
    work = Path(tempfile.mkdtemp(prefix="bench-websocket-"))
    processes = []
    try:
        echo_port = free_port()
        processes.append(subprocess.Popen(pinned(other_cpus, [binary, "bench", "tunnel-echo", "--listen",
                                                              f"127.0.0.1:{echo_port}"]),
                                          stderr=open(work / "echo.log", "wb")))
        wait_port(echo_port)
        switchyard_port, admin_port, haproxy_port = free_port(), free_port(), free_port()
        (work / "proxy.toml").write_text(f"""[proxy]
listen = "127.0.0.1:{switchyard_port}"
admin_listen = "127.0.0.1:{admin_port}"
threads = 1

[proxy.check]
inter_ms = 2000
path = "/"

[[proxy.servers]]
name = "echo"
address = "127.0.0.1:{echo_port}"
""")
        (work / "haproxy.cfg").write_text(f"""global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  timeout tunnel 1h
  option http-keep-alive
  option forwardfor
frontend fe
  bind 127.0.0.1:{haproxy_port}
  default_backend be
backend be
  option httpchk GET /
  server echo 127.0.0.1:{echo_port} check inter 2000
""")
        proxy = subprocess.Popen(pinned("0", [binary, "proxy", "--config", str(work / "proxy.toml")]),
                                 env={**os.environ, "SWITCHYARD_LOG": "warn"}, stderr=open(work / "proxy.log", "wb"))
        haproxy = subprocess.Popen(pinned("0", ["haproxy", "-f", str(work / "haproxy.cfg"), "-db"]),
                                   stderr=open(work / "haproxy.log", "wb"))
        processes += [proxy, haproxy]
        for port in (switchyard_port, haproxy_port):
            wait_port(port)
        targets = {"switchyard proxy": (switchyard_port, proxy.pid), haproxy_version: (haproxy_port, haproxy.pid)}
        rounds = {name: [] for name in targets}
        hz = os.sysconf("SC_CLK_TCK")
        load_before = Path("/proc/loadavg").read_text().split()[:3]
        for index in range(args.rounds):
            for name, (port, pid) in (targets.items() if index % 2 == 0 else reversed(targets.items())):
                before = cpu_ticks(pid)
                run = subprocess.run(pinned(other_cpus, [
                    binary, "bench", "tunnel", "--target", f"127.0.0.1:{port}",
                    "--connections", str(args.connections), "--message-bytes", str(args.message_bytes),
                    "--duration-s", str(args.duration)]), capture_output=True, text=True, timeout=args.duration + 120)
                ticks = cpu_ticks(pid) - before
                if run.returncode != 0:
                    sys.exit(f"{name}: {run.stderr[-2000:]}")
                result = json.loads(run.stdout.strip().splitlines()[-1])
                result["cpu_us_per_message"] = ticks / hz * 1e6 / max(result["messages"], 1)
                rounds[name].append(result)
                print(f"round {index + 1} {name}: {result['messages_per_s']:.0f} messages/s, "
                      f"p99 {result['p99_us']:.0f} µs, {result['cpu_us_per_message']:.1f} µs CPU each",
                      file=sys.stderr, flush=True)
        load_after = Path("/proc/loadavg").read_text().split()[:3]
        medians = {name: {key: statistics.median(r[key] for r in results)
                          for key in ("messages_per_s", "p50_us", "p99_us", "cpu_us_per_message")}
                   for name, results in rounds.items()}
        ours, theirs = medians["switchyard proxy"], medians[haproxy_version]
        command = (f"scripts/bench-websocket.py --binary {binary} --rounds {args.rounds} --duration {args.duration} "
                   f"--connections {args.connections} --message-bytes {args.message_bytes}")
        lines = [
            f"Command: `{command}` ({time.strftime('%Y-%m-%d')}; proxies pinned to CPU 0, echo server and "
            f"load generator to CPUs {other_cpus}; load average {' '.join(load_before)} before, "
            f"{' '.join(load_after)} after). Each connection is upgraded (`Connection: Upgrade`, "
            f"`Upgrade: websocket`, answered 101) and then carries one {args.message_bytes}-byte message "
            f"at a time each way.",
            "",
            "| proxy | messages/s (median) | p50 µs | p99 µs | proxy CPU µs per message | rounds: messages/s |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for name, median in medians.items():
            per_round = ", ".join(f"{r['messages_per_s']:.0f}" for r in rounds[name])
            lines.append(f"| {name} | {median['messages_per_s']:.0f} | {median['p50_us']:.0f} | "
                         f"{median['p99_us']:.0f} | {median['cpu_us_per_message']:.1f} | {per_round} |")
        lines += ["", f"**switchyard / HAProxy: {ours['messages_per_s'] / theirs['messages_per_s']:.2f}× messages/s, "
                      f"{ours['p99_us'] / theirs['p99_us']:.2f}× p99, "
                      f"{ours['cpu_us_per_message'] / theirs['cpu_us_per_message']:.2f}× the CPU per message.**"]
        section = "\n".join(lines)
        print(section)
        if not args.no_write:
            path = ROOT / "BENCHMARKS.md"
            text = path.read_text()
            if BEGIN in text and END in text:
                head, rest = text.split(BEGIN, 1)
                text = head + BEGIN + "\n" + section + "\n" + END + rest.split(END, 1)[1]
            else:
                text += f"\n## Proxy: WebSocket tunnels\n\n{BEGIN}\n{section}\n{END}\n"
            path.write_text(text)
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
