#!/usr/bin/env python3
"""What creating a global secondary index does to the writes going on meanwhile.

For each binary (--binary and, to compare, --baseline-binary) it starts a fresh `switchyard
store` (release build, a temporary data directory, a free loopback port) and:

1. loads --items items of ~1 KB into table `scale` (pk S, sk N; 100 items a partition) with
   wrk and benches/index-backfill.lua (BatchWriteItem, 25 items a request, as
   scripts/bench-scale.py loads), each item with the attribute g = "g<i % 1000>";
2. starts a steady PutItem load: --threads client threads, each with one kept-alive HTTP
   connection, each overwriting random existing items (same g, new v) one PutItem after the
   other (or paced to --rate PutItems/s in all), and each PutItem timed;
3. after --before seconds sends UpdateTable with a GlobalSecondaryIndexUpdates Create of index
   `by_g` (HASH g, projection --projection), polls DescribeTable every --poll-ms until the
   index is ACTIVE, keeps the load --after seconds longer, then stops it;
4. checks the index: its ItemCount is --items and a Query of one g value finds every item that
   has it.

It reports UpdateTable's own latency; the time from sending it until DescribeTable shows the
index ACTIVE; PutItem p50/p99/max latency and successful PutItems/s before, during (UpdateTable
sent until ACTIVE seen) and after the build, each PutItem counted in the phase it was sent in;
the longest gap between two consecutive successful PutItem completions (all threads together:
the longest time the store completed no write, a writer stall); and the errors (HTTP status and
`__type`, or the client's exception). A build that fills the index inside the UpdateTable call
shows the copy as UpdateTable's latency and as the gap; an online build shows a short
UpdateTable and the copy as the time to ACTIVE.

    scripts/bench-index-backfill.py --binary target/release/switchyard \\
        [--baseline-binary /path/to/older/switchyard --baseline-label "5640fa7"] \\
        [--items 1000000] [--threads 4] [--before 10] [--after 10] [--write]

The PutItem load is plain HTTP from the standard library (no SDK, so no retry hides an error
or a stall); the script needs no package beyond Python 3 and wrk (Debian; installed with
apt-get when missing). Prints progress on stderr and a Markdown block on stdout; with --write,
replaces the block between the bench-index-backfill markers of BENCHMARKS.md (or appends a
section with them). Not a test: nothing here asserts a timing.
"""

import argparse
import datetime
import http.client
import importlib.util
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("bench_scale", REPO / "scripts" / "bench-scale.py")
scale = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(scale)

LUA = REPO / "benches" / "index-backfill.lua"
SECTION_BEGIN = "<!-- bench-index-backfill:begin -->"
SECTION_END = "<!-- bench-index-backfill:end -->"
SECTION_HEADING = "## Online index backfill: writes while a GSI is created"
TABLE = "scale"
INDEX = "by_g"
G_VALUES = 1000
START_DEADLINE_S = 120
STOP_DEADLINE_S = 60
LOAD_THREADS = 2
LOAD_CONNECTIONS = 8
LOAD_DEADLINE_S = 3600
PROGRESS_EVERY_S = 5.0
# The store refuses writes below 5 % of the filesystem free by default; this shared machine is
# often near that, and the benchmark needs a few GiB at most.
DISK_FREE_BYTES_MIN = str(1 << 30)
HEADERS = {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Date": "20261122T000000Z",
           "Authorization": scale.AUTH}


def log(*args):
    print(*args, file=sys.stderr, flush=True)


class Store:
    """One `switchyard store` on loopback, on a data directory of its own."""

    def __init__(self, binary, root, label):
        self.binary, self.label = binary, label
        self.data = root / "data"
        self.ready = root / "ready"
        self.logfile = root / "store.log"
        self.port = scale.free_port()
        self.process = None

    def start(self):
        self.data.mkdir(parents=True, exist_ok=True)
        command = [str(self.binary), "store", "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(self.data),
                   "--ready-file", str(self.ready), "--disk-free-bytes-min", DISK_FREE_BYTES_MIN]
        with open(self.logfile, "ab") as logfile:
            self.process = subprocess.Popen(command, stdout=logfile, stderr=subprocess.STDOUT,
                                            env={**os.environ, "SWITCHYARD_LOG": "warn"})
        deadline = time.monotonic() + START_DEADLINE_S
        while not self.ready.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.label}: the store exited with {self.process.returncode} at start; "
                                   f"its log:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.label}: the store was not ready in {START_DEADLINE_S} s")
            time.sleep(0.01)

    def check_alive(self):
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.label}: the store exited with {self.process.returncode}; its log:\n"
                               f"{self.log_tail()}")

    def stop(self):
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            log(f"{self.label}: the store did not stop in {STOP_DEADLINE_S} s after SIGTERM; killing it")
            self.process.kill()
            self.process.wait(timeout=STOP_DEADLINE_S)

    def log_tail(self, lines=20):
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def create_table(port):
    scale.call(port, "CreateTable", {
        "TableName": TABLE, "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"},
                                 {"AttributeName": "sk", "AttributeType": "N"}],
        "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}]})
    deadline = time.monotonic() + 60
    while scale.call(port, "DescribeTable", {"TableName": TABLE})["Table"]["TableStatus"] != "ACTIVE":
        if time.monotonic() > deadline:
            raise RuntimeError("the table was not ACTIVE in 60 s")
        time.sleep(0.1)


def load(store, count, scratch):
    """Writes items 0..count with wrk (BatchWriteItem, 25 a request); returns items/s."""
    done = Path(tempfile.mkdtemp(prefix="load-", dir=scratch))
    started = time.monotonic()
    wrk = subprocess.Popen(
        ["wrk", f"-t{LOAD_THREADS}", f"-c{LOAD_CONNECTIONS}", f"-d{LOAD_DEADLINE_S}s", "-s", str(LUA),
         f"http://127.0.0.1:{store.port}/", "--", str(count), str(LOAD_THREADS), str(done)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last_report = started
    try:
        while len(list(done.glob("done-*"))) < LOAD_THREADS:
            if wrk.poll() is not None:
                raise RuntimeError(f"wrk ended before the load was done: {wrk.stderr.read()[-2000:]}")
            store.check_alive()
            if time.monotonic() - started > LOAD_DEADLINE_S:
                raise RuntimeError(f"the load of {count} items did not finish in {LOAD_DEADLINE_S} s")
            if time.monotonic() - last_report > 10:
                log(f"  loading: {time.monotonic() - started:.0f} s")
                last_report = time.monotonic()
            time.sleep(0.05)
    finally:
        elapsed = time.monotonic() - started
        if wrk.poll() is None:
            wrk.send_signal(signal.SIGINT)
        try:
            _, errors = wrk.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            wrk.kill()
            _, errors = wrk.communicate()
    failed = sum(int(p.read_text() or 0) for p in done.glob("done-*"))
    if failed:
        raise RuntimeError(f"{failed} load requests failed: {errors[-2000:]}")
    return count / elapsed


class PutLoad:
    """`threads` client threads, each with one kept-alive connection, each overwriting random
    existing items with PutItem (same g, a new v) until stopped; every PutItem is recorded as
    (sent, answered, error or None) on time.monotonic()."""

    def __init__(self, port, items, threads, rate, timeout_s):
        self.port, self.items, self.timeout_s = port, items, timeout_s
        self.interval = threads / rate if rate > 0 else 0.0
        self.stopping = threading.Event()
        self.records = [[] for _ in range(threads)]
        self.threads = [threading.Thread(target=self.run, args=(n,), daemon=True) for n in range(threads)]
        self.failure = None

    def body(self, rng, n, sequence):
        i = rng.randrange(self.items)
        value = f"put-{n}-{sequence}-".ljust(1000, "w")
        return json.dumps({"TableName": TABLE, "Item": {
            "pk": {"S": f"p{i // 100}"}, "sk": {"N": str(i % 100)}, "g": {"S": f"g{i % G_VALUES}"},
            "v": {"S": value}}}).encode()

    def run(self, n):
        records = self.records[n]
        rng = random.Random(n)
        headers = {**HEADERS, "X-Amz-Target": "DynamoDB_20120810.PutItem"}
        connection = None
        sequence = 0
        next_due = time.monotonic()
        try:
            while not self.stopping.is_set():
                if self.interval:
                    wait = next_due - time.monotonic()
                    if wait > 0 and self.stopping.wait(wait):
                        break
                    next_due = max(next_due + self.interval, time.monotonic() - 1.0)
                body = self.body(rng, n, sequence)
                sequence += 1
                if connection is None:
                    connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout_s)
                sent = time.monotonic()
                error = None
                try:
                    connection.request("POST", "/", body=body, headers=headers)
                    response = connection.getresponse()
                    answer = response.read()
                    if response.status != 200:
                        try:
                            kind = json.loads(answer).get("__type", "").rsplit("#", 1)[-1]
                        except ValueError:
                            kind = "not JSON"
                        error = f"HTTP {response.status} {kind}".strip()
                    if response.will_close:
                        connection.close()
                        connection = None
                except (OSError, http.client.HTTPException) as exc:
                    error = type(exc).__name__
                    connection.close()
                    connection = None
                answered = time.monotonic()
                records.append((sent, answered, error))
                if error and error[0] != "H":
                    # A refused or broken connection: do not spin on it.
                    self.stopping.wait(0.01)
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            self.failure = exc
        finally:
            if connection is not None:
                connection.close()

    def start(self):
        for thread in self.threads:
            thread.start()

    def stop(self):
        self.stopping.set()
        deadline = time.monotonic() + self.timeout_s + 5
        for thread in self.threads:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))
        stuck = sum(thread.is_alive() for thread in self.threads)
        if stuck:
            log(f"  {stuck} load threads still waiting on an answer after the stop; their PutItems are left out")

    def all_records(self):
        return sorted((r for records in self.records for r in list(records)), key=lambda r: r[0])

    def recent(self, since):
        """(PutItems answered since `since`, their slowest latency in ms, errors among them)."""
        count, slowest, errors = 0, 0.0, 0
        for records in self.records:
            for sent, answered, error in reversed(list(records[-20000:])):
                if answered < since:
                    break
                count += 1
                errors += error is not None
                slowest = max(slowest, (answered - sent) * 1000)
        return count, slowest, errors


def index_state(port):
    """(IndexStatus, Backfilling, the index's ItemCount) of `by_g`, or (None, None, None)."""
    table = scale.call(port, "DescribeTable", {"TableName": TABLE}, timeout=30)["Table"]
    for index in table.get("GlobalSecondaryIndexes", []):
        if index["IndexName"] == INDEX:
            return index.get("IndexStatus"), index.get("Backfilling", False), index.get("ItemCount")
    return None, None, None


def query_count(port, g):
    total, start = 0, None
    for _ in range(10_000):
        request = {"TableName": TABLE, "IndexName": INDEX, "KeyConditionExpression": "g = :g",
                   "ExpressionAttributeValues": {":g": {"S": g}}, "Select": "COUNT"}
        if start:
            request["ExclusiveStartKey"] = start
        page = scale.call(port, "Query", request, timeout=60)
        total += page["Count"]
        start = page.get("LastEvaluatedKey")
        if not start:
            return total
    raise RuntimeError("the Query of the index did not end in 10,000 pages")


def percentile(sorted_values, fraction):
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def phase_stats(records, start, end):
    """PutItems sent in [start, end): latency percentiles (ms) of the successful ones, their
    rate, and the errors by kind."""
    sent = [r for r in records if start <= r[0] < end]
    latencies = sorted((answered - sent_at) * 1000 for sent_at, answered, error in sent if error is None)
    errors = {}
    for _, _, error in sent:
        if error is not None:
            errors[error] = errors.get(error, 0) + 1
    duration = max(end - start, 1e-9)
    return {"duration_s": duration, "ok": len(latencies), "rate": len(latencies) / duration,
            "p50": percentile(latencies, 0.50), "p99": percentile(latencies, 0.99),
            "max": latencies[-1] if latencies else None, "errors": errors}


def longest_gap(records, start, end):
    """The longest time within [start, end] in which no PutItem completed successfully:
    (length s, where it began relative to `start` s)."""
    completions = sorted(answered for _, answered, error in records if error is None and start <= answered <= end)
    points = [start] + completions + [end]
    best, at = 0.0, 0.0
    for a, b in zip(points, points[1:]):
        if b - a > best:
            best, at = b - a, a - start
    return best, at


def run_one(label, binary, args, root):
    log(f"== {label}: {binary}")
    store = Store(binary, root, label)
    result = {"label": label, "binary": str(binary)}
    put_load = None
    try:
        store.start()
        create_table(store.port)
        log(f"  loading {args.items:,} items of ~1 KB")
        result["load_rate"] = load(store, args.items, root)
        log(f"  loaded at {result['load_rate']:,.0f} items/s")
        if args.settle > 0:
            time.sleep(args.settle)

        put_load = PutLoad(store.port, args.items, args.threads, args.rate, args.put_timeout)
        t_start = time.monotonic()
        put_load.start()
        log(f"  PutItem load on {args.threads} connections; baseline {args.before:g} s")
        last_report = time.monotonic()
        while time.monotonic() - t_start < args.before:
            time.sleep(0.1)
            if time.monotonic() - last_report >= PROGRESS_EVERY_S:
                count, slowest, errors = put_load.recent(last_report)
                log(f"  before: {count / (time.monotonic() - last_report):,.0f} PutItems/s, slowest {slowest:.1f} ms,"
                    f" {errors} errors")
                last_report = time.monotonic()
            store.check_alive()

        update = {"TableName": TABLE,
                  "AttributeDefinitions": [{"AttributeName": "g", "AttributeType": "S"}],
                  "GlobalSecondaryIndexUpdates": [{"Create": {
                      "IndexName": INDEX, "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
                      "Projection": {"ProjectionType": args.projection}}}]}
        log(f"  UpdateTable: Create {INDEX} (HASH g, {args.projection})")
        t_update = time.monotonic()
        try:
            answer = scale.call(store.port, "UpdateTable", update, timeout=args.build_deadline)
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"UpdateTable failed: HTTP {error.code} {error.read()[:500]!r}") from None
        t_answered = time.monotonic()
        result["update_s"] = t_answered - t_update
        answered_index = next((i for i in answer.get("TableDescription", {}).get("GlobalSecondaryIndexes", [])
                               if i["IndexName"] == INDEX), {})
        result["update_status"] = answered_index.get("IndexStatus", "not in the answer")
        if answered_index.get("Backfilling"):
            result["update_status"] += " (Backfilling)"
        log(f"  UpdateTable answered in {result['update_s'] * 1000:,.1f} ms: index {result['update_status']}")

        seen = set()
        last_report = time.monotonic()
        while True:
            status, backfilling, count = index_state(store.port)
            now = time.monotonic()
            seen.add(status if not backfilling else f"{status}/Backfilling")
            if status == "ACTIVE" and not backfilling:
                t_active = now
                break
            if status is None:
                raise RuntimeError(f"DescribeTable does not list {INDEX} after UpdateTable")
            if now - t_update > args.build_deadline:
                raise RuntimeError(f"{INDEX} was not ACTIVE {args.build_deadline} s after UpdateTable "
                                   f"(still {status}, ItemCount {count})")
            if now - last_report >= PROGRESS_EVERY_S:
                done, slowest, errors = put_load.recent(last_report)
                log(f"  building: {now - t_update:.0f} s, {status}{' Backfilling' if backfilling else ''}, "
                    f"index ItemCount {count:,} ({100 * count / args.items:.0f} %); "
                    f"{done / (now - last_report):,.0f} PutItems/s, slowest {slowest:.1f} ms, {errors} errors")
                last_report = now
            store.check_alive()
            time.sleep(args.poll_ms / 1000)
        result["active_s"] = t_active - t_update
        result["statuses_seen"] = sorted(s for s in seen if s)
        log(f"  {INDEX} ACTIVE {result['active_s']:.2f} s after UpdateTable was sent; load {args.after:g} s more")
        while time.monotonic() - t_active < args.after:
            time.sleep(0.1)
            store.check_alive()
        t_end = time.monotonic()
        put_load.stop()
        if put_load.failure:
            raise RuntimeError(f"a load thread failed: {put_load.failure!r}")
        records = put_load.all_records()
        put_load = None

        result["phases"] = {"before": phase_stats(records, t_start, t_update),
                            "during": phase_stats(records, t_update, t_active),
                            "after": phase_stats(records, t_active, t_end)}
        result["gap_s"], gap_at = longest_gap(records, t_start, t_end)
        result["gap_at_s"] = gap_at - (t_update - t_start)  # relative to UpdateTable sent
        result["puts"] = len(records)
        result["errors"] = sum(sum(p["errors"].values()) for p in result["phases"].values())
        for name, phase in result["phases"].items():
            log(f"  {name}: {phase['ok']:,} PutItems in {phase['duration_s']:.1f} s = {phase['rate']:,.0f}/s, "
                f"p50 {fmt_ms(phase['p50'])} p99 {fmt_ms(phase['p99'])} max {fmt_ms(phase['max'])} ms, "
                f"errors {phase['errors'] or 0}")
        log(f"  longest gap between successful PutItems: {result['gap_s'] * 1000:,.1f} ms, starting "
            f"{result['gap_at_s']:+.2f} s from UpdateTable")

        status, backfilling, count = index_state(store.port)
        result["index_count"] = count
        expected_g0 = len(range(0, args.items, G_VALUES))
        result["query_g0"] = query_count(store.port, "g0")
        result["query_g0_expected"] = expected_g0
        if count != args.items or result["query_g0"] != expected_g0:
            log(f"  CHECK FAILED: index ItemCount {count} (expected {args.items}), Query g0 found "
                f"{result['query_g0']} (expected {expected_g0})")
        else:
            log(f"  index checked: ItemCount {count:,}, Query g0 finds {expected_g0}")
        result["disk_mb"] = scale.disk_bytes(store.data) / 1e6
    finally:
        # The store first: a load thread waiting on an answer then gets its error at once.
        store.stop()
        if put_load is not None:
            put_load.stop()
    return result


def fmt_ms(value):
    if value is None:
        return "—"
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def fmt_rate(value):
    return f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


def fmt_errors(errors):
    if not errors:
        return "0"
    return ", ".join(f"{count} {kind}" for kind, count in sorted(errors.items()))


def section(args, results, command_line, machine):
    lines = [
        SECTION_BEGIN,
        f"Command: `{command_line}` ({args.items:,} items of ~1 KB loaded with BatchWriteItem, then PutItems "
        f"overwriting random items on {args.threads} kept-alive connections, "
        + (f"{args.rate:g}/s in all" if args.rate > 0 else "each sent as soon as the previous one is answered")
        + f"; index `{INDEX}` HASH g ({G_VALUES} values), projection {args.projection}; {args.before:g} s of "
        f"load before UpdateTable, {args.after:g} s after ACTIVE; DescribeTable polled every {args.poll_ms} ms; "
        f"{machine}).",
        "",
        "| build | UpdateTable | until ACTIVE | phase | PutItems/s | p50 ms | p99 ms | max ms | errors |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        for n, name in enumerate(("before", "during", "after")):
            p = r["phases"][name]
            head = (f"| {r['label']} | {fmt_ms(r['update_s'] * 1000)} ms | {r['active_s']:.1f} s"
                    if n == 0 else "| | |")
            lines.append(f"{head} | {name} ({p['duration_s']:.1f} s) | {fmt_rate(p['rate'])} | {fmt_ms(p['p50'])} | "
                         f"{fmt_ms(p['p99'])} | {fmt_ms(p['max'])} | {fmt_errors(p['errors'])} |")
    lines += ["", "| build | longest gap between successful PutItems | it began | index ItemCount after "
              "| Query of g0 | load items/s |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        lines.append(f"| {r['label']} | **{fmt_ms(r['gap_s'] * 1000)} ms** | {r['gap_at_s']:+.2f} s from UpdateTable "
                     f"| {r['index_count']:,} of {args.items:,} | {r['query_g0']} of {r['query_g0_expected']} "
                     f"| {r['load_rate']:,.0f} |")
    lines.append(SECTION_END)
    return "\n".join(lines)


def write_section(text):
    path = REPO / "BENCHMARKS.md"
    current = path.read_text()
    if SECTION_BEGIN in current and SECTION_END in current:
        head, rest = current.split(SECTION_BEGIN, 1)
        tail = rest.split(SECTION_END, 1)[1]
        path.write_text(head + text + tail)
    else:
        path.write_text(current.rstrip("\n") + f"\n\n{SECTION_HEADING}\n\n" + text + "\n")
    log(f"BENCHMARKS.md: {SECTION_BEGIN} block written")


def machine_note(load_before):
    """The cores, the CPU, the load average before and now, and the date."""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "?")
    except OSError:
        model = "?"
    load_after = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return (f"{os.cpu_count()} cores ({model}) shared with other sessions' work; load average {load_before} before, "
            f"{load_after} after; {datetime.date.today().isoformat()}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", type=Path, default=REPO / "target" / "release" / "switchyard",
                        help="the switchyard binary to measure (default target/release/switchyard)")
    parser.add_argument("--label", help="its name in the table (default: the binary's path)")
    parser.add_argument("--baseline-binary", type=Path,
                        help="a second binary (e.g. a build from before a change), measured first the same way")
    parser.add_argument("--baseline-label", help="its name in the table (default: the binary's path)")
    parser.add_argument("--items", type=int, default=1_000_000, help="items loaded before the index (default 1000000)")
    parser.add_argument("--threads", type=int, default=4,
                        help="PutItem client threads, one connection each (default 4)")
    parser.add_argument("--rate", type=float, default=0,
                        help="PutItems/s of all threads together; 0 (default): each thread sends its next "
                             "PutItem as soon as the previous one is answered")
    parser.add_argument("--before", type=float, default=10, help="seconds of load before UpdateTable (default 10)")
    parser.add_argument("--after", type=float, default=10,
                        help="seconds of load after the index is ACTIVE (default 10)")
    parser.add_argument("--projection", choices=("ALL", "KEYS_ONLY"), default="ALL",
                        help="the index's projection (default ALL: the copy writes each ~1 KB item again)")
    parser.add_argument("--poll-ms", type=int, default=50, help="DescribeTable poll interval (default 50)")
    parser.add_argument("--settle", type=float, default=2,
                        help="seconds of quiet between the load and the PutItems (default 2)")
    parser.add_argument("--build-deadline", type=int, default=1800,
                        help="seconds the index may take to be ACTIVE (and UpdateTable to answer) before the run "
                             "fails (default 1800)")
    parser.add_argument("--put-timeout", type=float, default=600,
                        help="seconds a PutItem may wait for its answer before it counts as an error (default 600: "
                             "a write held behind a long copy is measured, not cut off)")
    parser.add_argument("--dir", type=Path, help="scratch folder (default: a temporary one under target/bench)")
    parser.add_argument("--keep", action="store_true", help="keep the stores' data directories and logs")
    parser.add_argument("--write", action="store_true", help="write the block into BENCHMARKS.md")
    args = parser.parse_args()
    if args.items < G_VALUES:
        parser.error(f"--items must be at least {G_VALUES}")
    if args.threads < 1 or args.before <= 0 or args.after < 0 or args.poll_ms < 1 or args.rate < 0:
        parser.error("--threads and --poll-ms must be at least 1, --before positive, --after and --rate not negative")
    binaries = []
    if args.baseline_binary:
        binaries.append((args.baseline_label or str(args.baseline_binary), args.baseline_binary))
    binaries.append((args.label or str(args.binary), args.binary))
    for _, binary in binaries:
        if not binary.is_file() or not os.access(binary, os.X_OK):
            raise SystemExit(f"{binary}: not an executable file (build it: cargo build --release -p switchyard)")
    if not shutil.which("wrk"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed to load the table (apt-get install wrk)")
    scale.own_autogroup()
    # A SIGTERM (or the SIGHUP of a closed terminal) ends the run through its `finally`
    # blocks, which stop the stores.
    for number in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, lambda received, _frame: sys.exit(f"stopped by signal {received}"))
    command_line = "scripts/bench-index-backfill.py " + shlex.join(a for a in sys.argv[1:] if a != "--write")
    parent = args.dir or scale.WORK
    parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="index-backfill-", dir=parent))
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    results = []
    try:
        for n, (label, binary) in enumerate(binaries):
            folder = root / f"store-{n}"
            folder.mkdir()
            results.append(run_one(label, binary, args, folder))
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        if args.keep:
            log(f"data directories and logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    text = section(args, results, command_line, machine_note(load_before))
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
