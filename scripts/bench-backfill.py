#!/usr/bin/env python3
"""A new replica's backfill and an anti-entropy repair, timed at scale (issue 17).

Two `switchyard store` processes on loopback (us-east-1 and eu-west-1, peers of each other, the
origin's replication log bounded by --backlog-bytes-max). It:

1. loads --items items of ~1 KB into a table of us-east-1 (wrk and benches/scale.lua, as
   scripts/bench-scale.py does), while the table is not yet global;
2. makes the table global with UpdateTable(ReplicaUpdates=[Create eu-west-1]) and times the
   backfill: until us-east-1's DescribeTable shows the replica ACTIVE again (it is CREATING,
   with a percentage, while the backfill runs), then checks eu-west-1 counts every item;
3. stops eu-west-1, rewrites --diffs items in us-east-1 until its log is trimmed past what
   eu-west-1 acknowledged (so the log cannot bring them: only anti-entropy can), starts
   eu-west-1 again and times the repair: from eu-west-1 answering until it holds every one of
   the --diffs new values; reports the range digests compared and the records pushed.

Needs wrk (Debian) and a release build: `cargo build --release -p switchyard`. Prints a Markdown
section; with --write, replaces the "Store at scale: backfill and repair" section of
BENCHMARKS.md.
"""

import argparse
import datetime
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import random
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("bench_scale", REPO / "scripts" / "bench-scale.py")
scale = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(scale)

KEY = "bench-backfill-replication-key-0123456789abcdef"
SECTION_BEGIN = "<!-- bench-backfill:begin -->"
SECTION_END = "<!-- bench-backfill:end -->"
BACKFILL_DEADLINE_S = 3600
REPAIR_DEADLINE_S = 600
TRIM_ROUNDS_MAX = 50
TRIM_WAIT_S = 10
BATCH_GET_KEYS_MAX = 100


def log(*args):
    print(*args, file=sys.stderr, flush=True)


class Store:
    def __init__(self, binary, region, port, data, peer_region, peer_port, backlog, config=None):
        self.binary, self.region, self.port, self.data = binary, region, port, data
        self.peer = (peer_region, peer_port)
        self.backlog = backlog
        self.config = config
        self.process = None

    def start(self):
        ready = self.data.parent / f"{self.region}.ready"
        if ready.exists():
            ready.unlink()
        command = [str(self.binary), "store", "--region", self.region, "--listen", f"127.0.0.1:{self.port}",
                   "--data-dir", str(self.data), "--ready-file", str(ready),
                   "--peer", f"{self.peer[0]}=http://127.0.0.1:{self.peer[1]}",
                   "--replication-backlog-bytes-max", self.backlog]
        if self.config:
            command += ["--config", str(self.config)]
        env = dict(os.environ, SWITCHYARD_REPLICATION_KEY=KEY)
        logfile = open(self.data.parent / f"{self.region}.log", "ab")
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=logfile)
        deadline = time.monotonic() + scale.START_DEADLINE_S
        while not ready.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.region} exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.region} not ready in {scale.START_DEADLINE_S} s")
            time.sleep(0.01)

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)

    def health(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=10) as response:
            return json.loads(response.read())


def cpu_s(process):
    """User plus system CPU seconds of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def replica_status(store, region):
    table = scale.call(store.port, "DescribeTable", {"TableName": "scale"})["Table"]
    for replica in table.get("Replicas", []):
        if replica["RegionName"] == region:
            return replica.get("ReplicaStatus"), replica.get("ReplicaStatusPercentProgress")
    return None, None


def count_items(store):
    total, start = 0, None
    while True:
        request = {"TableName": "scale", "Select": "COUNT"}
        if start:
            request["ExclusiveStartKey"] = start
        page = scale.call(store.port, "Scan", request, timeout=120)
        total += page["Count"]
        start = page.get("LastEvaluatedKey")
        if not start:
            return total


def key(i):
    return {"pk": {"S": f"p{i // 100}"}, "sk": {"N": str(i % 100)}}


class Writer:
    """Writes ~1 KB items at random existing keys of us-east-1, `rate` a second, until stopped:
    a table made global while in use. Each write replicates through the log, and lands in the
    new replica's tree ahead of the backfill, between keys the backfill brings later."""

    def __init__(self, store, items, rate, seed):
        self.store, self.items, self.rate = store, items, rate
        self.random = random.Random(seed)
        self.stopping = threading.Event()
        self.written = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        started = time.monotonic()
        while not self.stopping.is_set():
            due = started + self.written / self.rate
            if due > time.monotonic():
                self.stopping.wait(due - time.monotonic())
                continue
            i = self.random.randrange(self.items)
            scale.call(self.store.port, "PutItem", {"TableName": "scale", "Item": {
                **key(i), "v": {"S": f"during-backfill-{self.written}-" + "w" * 1000}}})
            self.written += 1

    def __enter__(self):
        if self.rate > 0:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout=30)


def rewrite(store, indexes, version):
    for start in range(0, len(indexes), 25):
        chunk = indexes[start:start + 25]
        items = [{"PutRequest": {"Item": {**key(i), "v": {"S": f"repaired-{version}-" + "y" * 1000}}}}
                 for i in chunk]
        answer = scale.call(store.port, "BatchWriteItem", {"RequestItems": {"scale": items}})
        if answer.get("UnprocessedItems"):
            raise RuntimeError(f"unprocessed items: {answer['UnprocessedItems']}")


def wait_trimmed_past(store, acked):
    """us-east-1's replication status once its log starts after `acked` (or TRIM_WAIT_S passed)."""
    deadline = time.monotonic() + TRIM_WAIT_S
    while True:
        replication = store.health()["replication"]
        if acked + 1 < replication["log_first"] or time.monotonic() > deadline:
            return replication
        time.sleep(0.1)


def holding(store, indexes, version):
    """How many of `indexes` hold the value of `version` in `store` (strongly consistent)."""
    found = 0
    expected = f"repaired-{version}-"
    for start in range(0, len(indexes), BATCH_GET_KEYS_MAX):
        keys = [key(i) for i in indexes[start:start + BATCH_GET_KEYS_MAX]]
        answer = scale.call(store.port, "BatchGetItem",
                            {"RequestItems": {"scale": {"Keys": keys, "ConsistentRead": True}}})
        found += sum(1 for item in answer["Responses"].get("scale", [])
                     if item["v"]["S"].startswith(expected))
        if answer.get("UnprocessedKeys"):
            return -1
    return found


def rates_by_fifth(progress, total_s, items):
    """Items a second over each fifth of the backfill (by the replica's reported percentage):
    whether the rate holds as the new replica's tree grows."""
    points = [(0.0, 0.0)] + progress + [(total_s, 100.0)]
    rates = []
    for fifth in range(5):
        low, high = fifth * 20.0, (fifth + 1) * 20.0
        start = next((t for t, p in points if p >= low), None)
        end = next((t for t, p in points if p >= high), None)
        if start is None or end is None or end <= start:
            rates.append(None)
        else:
            rates.append(items * 0.2 / (end - start))
    return rates


def run(args):
    binary = args.binary or REPO / "target" / "release" / "switchyard"
    if not binary.exists():
        raise SystemExit(f"{binary} not found: run `cargo build --release -p switchyard` or pass --binary")
    if not shutil.which("wrk"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
    scale.WORK.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="backfill-", dir=scale.WORK))
    us_port, eu_port = scale.free_port(), scale.free_port()
    config = None
    if args.stream_retention_ms:
        # Only what the stores cannot take as a flag: the stream's retention (24 h by default).
        config = root / "store.toml"
        config.write_text(f"[store]\nstream_retention_ms = {args.stream_retention_ms}\n")
    us = Store(binary, "us-east-1", us_port, root / "us-east-1", "eu-west-1", eu_port, args.backlog_bytes_max, config)
    eu = Store(binary, "eu-west-1", eu_port, root / "eu-west-1", "us-east-1", us_port, args.backlog_bytes_max, config)
    result = {}
    try:
        for store in (us, eu):
            store.data.mkdir()
            store.start()
        scale.create_table(us.port)
        log(f"loading {args.items} items of ~1 KB into us-east-1")
        result["load_rate"] = scale.load(us.port, args.items, root)

        log("making the table global: backfill of eu-west-1")
        started = time.monotonic()
        cpu_before = (cpu_s(us.process), cpu_s(eu.process))
        writer = Writer(us, args.items, args.writes_during_backfill, seed=args.items)
        scale.call(us.port, "UpdateTable", {"TableName": "scale",
                                            "ReplicaUpdates": [{"Create": {"RegionName": "eu-west-1"}}]})
        writer.__enter__()
        seen_creating = False
        last_report = 0.0
        progress = []
        while True:
            status, percent = replica_status(us, "eu-west-1")
            seen_creating |= status == "CREATING"
            if percent is not None:
                progress.append((time.monotonic() - started, float(percent)))
            if status == "ACTIVE" and (seen_creating or time.monotonic() - started > 5):
                break
            if time.monotonic() - last_report > 5:
                log(f"  backfill {percent or '?'} % after {time.monotonic() - started:.0f} s")
                last_report = time.monotonic()
            if time.monotonic() - started > BACKFILL_DEADLINE_S:
                raise RuntimeError("the backfill did not finish")
            time.sleep(0.05)
        writer.__exit__()
        result["written_during"] = writer.written
        result["backfill_s"] = time.monotonic() - started
        result["rate_by_fifth"] = rates_by_fifth(progress, result["backfill_s"], args.items)
        result["backfill_cpu_us"] = tuple(
            (cpu_s(store.process) - before) * 1e6 / args.items for store, before in zip((us, eu), cpu_before))
        result["backfilled"] = count_items(eu)
        result["replica_bytes_per_item"] = scale.disk_bytes(eu.data) / args.items
        if result["backfilled"] != args.items:
            raise RuntimeError(f"eu-west-1 holds {result['backfilled']} items after the backfill, not {args.items}")

        log(f"stopping eu-west-1; rewriting {args.diffs} items until us-east-1's log is trimmed past it")
        eu.stop()
        step = max(1, args.items // args.diffs)
        indexes = list(range(0, step * args.diffs, step))[:args.diffs]
        version = 0
        while True:
            version += 1
            rewrite(us, indexes, version)
            replication = us.health()["replication"]
            peer = replication["peers"]["eu-west-1"]
            if replication["log_bytes"] > peer["backlog_limit_bytes"]:
                # Past its bound the log is trimmed at the trimmer's next round (every 250 ms).
                replication = wait_trimmed_past(us, peer["acked_seq"])
            if replication["peers"]["eu-west-1"]["acked_seq"] + 1 < replication["log_first"]:
                break
            if version >= TRIM_ROUNDS_MAX:
                raise RuntimeError(f"the log was not trimmed past eu-west-1 after {version} rounds: {replication}")
        before = us.health()["replication"]["peers"]["eu-west-1"]["repairs"]
        eu.start()
        started = time.monotonic()
        while holding(eu, indexes, version) != len(indexes):
            if time.monotonic() - started > REPAIR_DEADLINE_S:
                raise RuntimeError("the repair did not finish")
            time.sleep(0.05)
        result["repair_s"] = time.monotonic() - started
        deadline = time.monotonic() + 60
        peer = us.health()["replication"]["peers"]["eu-west-1"]
        while peer["repairs"] <= before and time.monotonic() < deadline:
            time.sleep(0.1)
            peer = us.health()["replication"]["peers"]["eu-west-1"]
        result["last_repair"] = peer.get("last_repair")
        result["rounds"] = version
        result["disk_mb"] = scale.disk_bytes(us.data) / 1e6
    finally:
        for store in (us, eu):
            store.stop()
        if args.keep:
            log(f"data directories kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return result


def section(args, result, command_line):
    today = datetime.date.today().isoformat()
    repair = result.get("last_repair") or {}
    lines = [
        SECTION_BEGIN,
        f"Command: `{command_line}` (two release stores on loopback, items of ~1 KB, the origin's "
        f"replication log bounded at {args.backlog_bytes_max}; "
        f"{result['written_during']:,} PutItems to random keys during the backfill; load average "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())} after; {today}).",
        "",
        "| items | load items/s | backfill of a new replica | backfill items/s | CPU per item: origin / new replica | "
        "new replica's disk per item | differing keys | repair, from the replica answering to all keys equal | "
        "ranges compared | records pushed |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {args.items:,} | {result['load_rate']:.0f} | {result['backfill_s']:.1f} s | "
        f"{args.items / result['backfill_s']:.0f} | {result['backfill_cpu_us'][0]:.0f} µs / "
        f"{result['backfill_cpu_us'][1]:.0f} µs | {result['replica_bytes_per_item']:,.0f} B | "
        f"{args.diffs:,} | {result['repair_s']:.2f} s | "
        f"{repair.get('ranges_compared', '?')} | {repair.get('records_pushed', '?')} |",
        "",
        "Backfill items/s by fifth of the table (the replica's reported progress): "
        + " · ".join("?" if r is None else f"{r:,.0f}" for r in result["rate_by_fifth"])
        + (f". Stream records kept {args.stream_retention_ms} ms (`stream_retention_ms`), so the two "
           "stores fit this machine's disk." if args.stream_retention_ms else "."),
        SECTION_END,
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", type=Path, help="switchyard binary (default target/release/switchyard)")
    parser.add_argument("--items", type=int, default=1_000_000, help="items in the table (default 1000000)")
    parser.add_argument("--diffs", type=int, default=1000, help="keys that differ before the repair (default 1000)")
    parser.add_argument("--backlog-bytes-max", default="1MiB",
                        help="the origin's replication log bound (default 1MiB), small so an outage outgrows it")
    parser.add_argument("--writes-during-backfill", type=float, default=0, metavar="PER_S",
                        help="PutItems a second to random existing keys of the origin while the backfill runs "
                             "(a table made global while in use; default 0)")
    parser.add_argument("--stream-retention-ms", type=int, default=0, metavar="MS",
                        help="both stores keep stream records this long (default: the store's 24 h); every "
                             "replica of a global table keeps a stream, so a new replica holds a record of each "
                             "backfilled item: a short retention lets a 10M-item run fit a small disk")
    parser.add_argument("--keep", action="store_true", help="keep both stores' data directories (for inspection)")
    parser.add_argument("--write", action="store_true", help="replace the section in BENCHMARKS.md")
    args = parser.parse_args()
    scale.own_autogroup()
    if args.items < args.diffs or args.diffs < 1:
        parser.error("--diffs must be between 1 and --items")
    result = run(args)
    command_line = "scripts/bench-backfill.py " + " ".join(sys.argv[1:])
    text = section(args, result, command_line)
    print(text)
    if args.write:
        path = REPO / "BENCHMARKS.md"
        current = path.read_text()
        if SECTION_BEGIN in current:
            head, rest = current.split(SECTION_BEGIN, 1)
            tail = rest.split(SECTION_END, 1)[1]
            path.write_text(head + text + tail)
        else:
            log(f"no {SECTION_BEGIN} in BENCHMARKS.md: add the section by hand")


if __name__ == "__main__":
    main()
