#!/usr/bin/env python3
"""Runs the CI drills against a fresh lab several times and prints the medians as the
BENCHMARKS.md "Drills" table: RTO(DNS), RTO(99%), RPO, false failovers, failback time.

    scripts/bench-drills.py            # DRILL_BENCH_ROUNDS=3, debug binary unless SWITCHYARD_BIN

Each round runs region-outage, region-hang, vantage-partition and failback (warmup 5 s, fault 15 s,
settle 30 s), waiting before each for every lab component to be up and us-east-1 active.
Standard library only."""

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BINARY = Path(os.environ.get("SWITCHYARD_BIN", REPO / "target" / "debug" / "switchyard"))
ROUNDS = int(os.environ.get("DRILL_BENCH_ROUNDS", "3"))
SCENARIOS = ["region-outage", "region-hang", "vantage-partition", "failback"]
DRILL_ARGS = ["--warmup-s", "5", "--duration-s", "15", "--settle-s", "30"]
STEADY_DEADLINE_S = 120


def wait_until(what, condition, deadline_s):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    sys.exit(f"{what} did not happen within {deadline_s} s")


def status_ok(directory):
    return subprocess.run([str(BINARY), "status", "--lab", str(directory)], capture_output=True).returncode == 0


def active_region(base_port):
    with urllib.request.urlopen(f"http://127.0.0.1:{base_port + 1}/v1/active-region", timeout=5) as response:
        return json.loads(response.read())["region"]


def seconds(ms):
    return "—" if ms is None else f"{ms / 1000:.1f} s"


def median(values):
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def main():
    work = Path(tempfile.mkdtemp(prefix="bench-drills-"))
    directory = work / "lab"
    base_port = random.randrange(20000, 32000, 500)
    log = open(work / "lab.log", "w")
    lab = subprocess.Popen([str(BINARY), "lab", "--dir", str(directory), "--base-port", str(base_port)],
                           stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until("the lab", lambda: status_ok(directory), 90)
        reports = {scenario: [] for scenario in SCENARIOS}
        for round_ in range(1, ROUNDS + 1):
            for scenario in SCENARIOS:
                wait_until("a whole lab with us-east-1 active",
                           lambda: status_ok(directory) and active_region(base_port) == "us-east-1", STEADY_DEADLINE_S)
                path = work / f"{scenario}-{round_}.json"
                result = subprocess.run([str(BINARY), "drill", scenario, "--lab", str(directory), *DRILL_ARGS,
                                         "--json", str(path), "--no-progress"], capture_output=True, text=True)
                report = json.loads(path.read_text())
                print(f"round {round_} {scenario}: exit {result.returncode}", file=sys.stderr)
                reports[scenario].append(report)
    finally:
        lab.send_signal(signal.SIGINT)
        lab.wait(timeout=60)
    print("| drill | passed | RTO (DNS) | RTO (99%) | RPO (acked writes lost) | false failovers | failback after heal |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for scenario, runs in reports.items():
        measured = [r["measurements"] for r in runs]
        print(f"| {scenario} | {sum(r['passed'] for r in runs)}/{len(runs)} "
              f"| {seconds(median([m['rto_dns_ms'] for m in measured]))} "
              f"| {seconds(median([m['rto_99_ms'] for m in measured]))} "
              f"| {median([r['check']['lost'] for r in runs])} "
              f"| {median([m['false_failovers'] for m in measured])} "
              f"| {seconds(median([m['failback_ms'] for m in measured]))} |")


if __name__ == "__main__":
    main()
