#!/usr/bin/env python3
"""What a DynamoDB stream costs the store, in one run on one machine (release build):

    scripts/bench-streams.py [--duration 8] [--rounds 9] [--connections 16] [--binary PATH]
        [--write-ahead-log] [--no-pin] [--perf DIR] [--json PATH] [--no-write]

1. PutItem throughput to two tables of the same store, one without a stream and one with a
   NEW_AND_OLD_IMAGES stream, in many short rounds that alternate the two (wrk,
   benches/dynamodb.lua's "Change" workload: every write changes the item, so every write
   makes a stream record). Each pair of rounds gives a throughput cost and a CPU cost (the
   store's user+system time per PutItem, /proc/PID/stat); the medians and their spread
   (min-max over the pairs) are reported, and the bytes the store wrote per PutItem (`wchar`
   of /proc/PID/io: what its write system calls took; in brackets `write_bytes`, what reached
   the disk). Each round also prints the write requests and flushes the data directory's disk
   completed per PutItem (/proc/diskstats; the whole disk's, so other writers count too).
   The issue's target: a stream costs at most 10 % of PutItem throughput.
   On a machine with two or more CPUs the store is pinned to one CPU and wrk to another
   (`taskset`; --no-pin leaves them to the scheduler), so wrk does not take the store's CPU
   and a store that is CPU-bound on its core shows a throughput cost that tracks its CPU
   cost. The whole run is in a scheduler autogroup of its own at nice -20
   (`own_autogroup` of bench-scale.py), so other sessions' builds weigh less on it.
2. GetRecords with Limit 1000 over the records those writes made, timed from the request's
   first byte to the response's last on a kept-alive connection (no SDK parsing in the figure).
   The issue's target: at most 5 ms.

With --write-ahead-log the store runs with its write-ahead log (SWITCHYARD_WRITE_AHEAD_LOG=true,
as `store --write-ahead-log`): a batch's stream records then stay out of redb until the
checkpoint.

Prints a Markdown section and rewrites the "Streams" section of BENCHMARKS.md, or its part for
the write-ahead log (--no-write leaves it alone). Not a test: nothing here asserts a timing.
"""

import argparse
import http.client
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# bench-store.py's helpers (its name has a dash, so it is loaded by path).
_spec = importlib.util.spec_from_file_location("bench_store", Path(__file__).resolve().parent / "bench-store.py")
bench_store = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_store)

REPO = bench_store.REPO
SECTION_BEGIN = "<!-- bench-streams:begin -->"
SECTION_END = "<!-- bench-streams:end -->"
WAL_SECTION_BEGIN = "<!-- bench-streams-wal:begin -->"
WAL_SECTION_END = "<!-- bench-streams-wal:end -->"
STREAM_TABLE = "bench-stream"
GET_RECORDS_SAMPLES = 200
TABLES = (("no stream", "bench"), ("NEW_AND_OLD_IMAGES stream", STREAM_TABLE))
# A static, well-formed SigV4 header: a store without configured credentials accepts it.
HEADERS = {
    "Content-Type": "application/x-amz-json-1.0",
    "X-Amz-Date": "20261122T000000Z",
    "Authorization": "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261122/us-east-1/dynamodb/aws4_request, "
                     "SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=" + "0123456789abcdef" * 4,
}


class Api:
    """One kept-alive connection; `call` returns (seconds from send to last byte, parsed body)."""

    def __init__(self, port):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, target, body):
        headers = dict(HEADERS, **{"X-Amz-Target": target})
        payload = json.dumps(body).encode()
        started = time.perf_counter()
        self.connection.request("POST", "/", payload, headers)
        response = self.connection.getresponse()
        data = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"{target}: HTTP {response.status}: {data[:300]!r}")
        return elapsed, json.loads(data), len(data)

    def dynamodb(self, operation, body):
        return self.call(f"DynamoDB_20120810.{operation}", body)[1]

    def streams(self, operation, body):
        return self.call(f"DynamoDBStreams_20120810.{operation}", body)


def create_stream_table(api):
    api.dynamodb("CreateTable", {
        "TableName": STREAM_TABLE, "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
        "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
        "StreamSpecification": {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    })
    deadline = time.monotonic() + 60
    while api.dynamodb("DescribeTable", {"TableName": STREAM_TABLE})["Table"]["TableStatus"] != "ACTIVE":
        if time.monotonic() > deadline:
            raise RuntimeError(f"{STREAM_TABLE} not ACTIVE within 60 s")
        time.sleep(0.1)
    # The same 10k items as `bench`, so both tables start equal.
    for first in range(0, bench_store.ITEMS, 25):
        items = [{"PutRequest": {"Item": {"id": {"S": f"k{n}"}, "v": {"S": "x" * 100}}}}
                 for n in range(first, min(first + 25, bench_store.ITEMS))]
        request = {STREAM_TABLE: items}
        while request:
            request = api.dynamodb("BatchWriteItem", {"RequestItems": request}).get("UnprocessedItems") or None


def cpu_seconds(pid):
    """User + system CPU time of a process so far (/proc/PID/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def io_bytes(pid):
    """Bytes the process handed to write system calls (`wchar`) and caused to reach the disk
    (`write_bytes`) so far (/proc/PID/io)."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["wchar"]), int(fields["write_bytes"])


def device_io(path):
    """Write requests the disk holding `path` completed, and flush requests (0 where the kernel
    does not count them), so far (/proc/diskstats: fields 8 and 20 of the device's line)."""
    dev = os.stat(path).st_dev
    major, minor = os.major(dev), os.minor(dev)
    for line in Path("/proc/diskstats").read_text().splitlines():
        fields = line.split()
        if int(fields[0]) == major and int(fields[1]) == minor:
            return int(fields[7]), int(fields[19]) if len(fields) > 19 else 0
    return 0, 0


def pinning(pin):
    """`taskset` prefixes for the store and for wrk: the first and the second CPU this process
    may run on, when `pin` and there are two; none otherwise."""
    cpus = sorted(os.sched_getaffinity(0))
    if pin and len(cpus) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(cpus[0])], ["taskset", "-c", str(cpus[1])]
    return [], []


def autogroup():
    """This process's scheduler autogroup as the kernel shows it ("/autogroup-N nice -20"), or
    a note that there is none."""
    try:
        return Path("/proc/self/autogroup").read_text().strip()
    except OSError:
        return "no autogroup"


def wrk(port, table, args, prefix):
    """One round of the Change workload on `table` (bench-store.py's wrk, optionally pinned)."""
    threads = 1 if prefix else 2
    output = subprocess.run(
        prefix + ["wrk", f"-t{threads}", f"-c{args.connections}", f"-d{args.duration}s", "--latency",
                  "-s", str(bench_store.LUA), f"http://127.0.0.1:{port}/", "--", "Change", table],
        check=True, capture_output=True, text=True).stdout
    return bench_store.parse_wrk(output)


def put_rounds(port, pid, args, wrk_prefix):
    """Alternating rounds of the Change workload on `bench` and on the stream table. Besides
    throughput, each round measures the store's CPU time per PutItem: other sessions' load on a
    shared machine moves throughput a lot and CPU per request much less. With --perf, the
    first round on each table also runs `perf record -g` on the store."""
    rounds = {name: [] for name, _ in TABLES}
    for index in range(args.rounds):
        # Alternate which table goes first, so a trend over the run hits both alike.
        order = TABLES if index % 2 == 0 else TABLES[::-1]
        for name, table in order:
            profiler = None
            if args.perf and index == 0:
                args.perf.mkdir(parents=True, exist_ok=True)
                profiler = subprocess.Popen(
                    ["perf", "record", "-q", "-g", "-F", "999", "-p", str(pid), "-o", str(args.perf / f"{table}.data")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            before, io_before, dev_before = cpu_seconds(pid), io_bytes(pid), device_io(args.data_dir)
            result = wrk(port, table, args, wrk_prefix)
            result["cpu_us"] = (cpu_seconds(pid) - before) * 1e6 / max(result["total"], 1)
            io_after = io_bytes(pid)
            result["wchar"] = (io_after[0] - io_before[0]) / max(result["total"], 1)
            result["disk_bytes"] = (io_after[1] - io_before[1]) / max(result["total"], 1)
            dev_after = device_io(args.data_dir)
            result["device_writes"] = (dev_after[0] - dev_before[0]) / max(result["total"], 1)
            result["device_flushes"] = (dev_after[1] - dev_before[1]) / max(result["total"], 1)
            if profiler:
                profiler.send_signal(signal.SIGINT)
                profiler.wait()
            rounds[name].append(result)
            print(f"{name:26} round {index + 1}: {result['rate']:8.0f}/s p50 {result['p50']:.2f} ms "
                  f"p99 {result['p99']:.2f} ms non-2xx {result['errors']}/{result['total']} "
                  f"CPU {result['cpu_us']:.1f} us/request written {result['wchar']:.0f} B/request "
                  f"(disk {result['disk_bytes']:.0f} B) device writes {result['device_writes']:.2f} "
                  f"flushes {result['device_flushes']:.2f} per request", file=sys.stderr, flush=True)
    return rounds


def summary(rounds):
    """Medians per table, and per pair of rounds (round i of each table) the throughput cost
    and the CPU a stream adds, as median and min-max."""
    plain, streamed = rounds["no stream"], rounds["NEW_AND_OLD_IMAGES stream"]
    medians = {}
    for name, results in rounds.items():
        medians[name] = {field: statistics.median(r[field] for r in results)
                         for field in ("rate", "p50", "p99", "cpu_us", "wchar", "disk_bytes")}
        medians[name]["errors"] = sum(r["errors"] for r in results)
    costs = [1 - s["rate"] / p["rate"] for p, s in zip(plain, streamed)]
    cpu_costs = [s["cpu_us"] / p["cpu_us"] - 1 for p, s in zip(plain, streamed)]
    return {
        "tables": medians,
        "throughput_cost": {"median": statistics.median(costs), "min": min(costs), "max": max(costs)},
        "cpu_cost": {"median": statistics.median(cpu_costs), "min": min(cpu_costs), "max": max(cpu_costs)},
        "rounds": rounds,
    }


def get_records(port):
    """GetRecords(Limit=1000) over the stream's shards, oldest first; only full pages count."""
    api = Api(port)
    arn = api.dynamodb("DescribeTable", {"TableName": STREAM_TABLE})["Table"]["LatestStreamArn"]
    shards, start = [], None
    while True:
        body = {"StreamArn": arn}
        if start:
            body["ExclusiveStartShardId"] = start
        description = api.streams("DescribeStream", body)[1]["StreamDescription"]
        shards += description["Shards"]
        start = description.get("LastEvaluatedShardId")
        if not start:
            break
    samples, sizes, records_total = [], [], 0
    for shard in shards:
        iterator = api.streams("GetShardIterator", {"StreamArn": arn, "ShardId": shard["ShardId"],
                                                    "ShardIteratorType": "TRIM_HORIZON"})[1]["ShardIterator"]
        while iterator and len(samples) < GET_RECORDS_SAMPLES:
            elapsed, page, size = api.streams("GetRecords", {"ShardIterator": iterator, "Limit": 1000})
            records_total += len(page["Records"])
            if len(page["Records"]) == 1000:
                samples.append(elapsed * 1000)
                sizes.append(size)
            elif not page["Records"]:
                break
            iterator = page.get("NextShardIterator")
        if len(samples) >= GET_RECORDS_SAMPLES:
            break
    return {"shards": len(shards), "samples": samples, "bytes": statistics.median(sizes) if sizes else 0,
            "records": records_total}


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def section(puts, records, args, command_line, build, pinned):
    tables, cost, cpu = puts["tables"], puts["throughput_cost"], puts["cpu_cost"]
    placement = (f"store pinned to CPU {pinned[0][-1]}, wrk -t1 to CPU {pinned[1][-1]}" if pinned[0]
                 else "store and wrk -t2 sharing the CPUs")
    lines = [
        f"Command: `{command_line}` ({build} build; wrk -c{args.connections} -d{args.duration}s per round, "
        f"{args.rounds} rounds alternating the two tables of one store, every PutItem a real change of one of "
        f"{bench_store.ITEMS} items; {placement}; scheduler group {args.autogroup!r}; "
        f"{time.strftime('%Y-%m-%d')}; load average before the run {args.load:.2f}).",
        "",
        "| table | PutItem/s | p50 ms | p99 ms | non-2xx | store CPU per PutItem | bytes written per PutItem (to disk) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in tables.items():
        lines.append(f"| {name} | {r['rate']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['errors']} "
                     f"| {r['cpu_us']:.1f} µs | {r['wchar']:.0f} ({r['disk_bytes']:.0f}) |")
    lines += ["", f"The stream costs **{cost['median'] * 100:.1f} %** of PutItem throughput (target: at most 10 %; "
                  f"{cost['min'] * 100:.1f}–{cost['max'] * 100:.1f} % over the {args.rounds} pairs of rounds) and "
                  f"adds **{cpu['median'] * 100:.1f} %** to the store's CPU time per PutItem "
                  f"({cpu['min'] * 100:.1f}–{cpu['max'] * 100:.1f} %); medians of the pairs, table medians above."]
    samples = records["samples"]
    if samples:
        lines += [
            "",
            f"GetRecords with Limit 1000 (full pages only, {len(samples)} calls over {records['shards']} shards, "
            f"median response {records['bytes'] / 1024:.0f} KiB, request to last byte on a kept-alive "
            f"connection): p50 **{statistics.median(samples):.2f} ms**, p99 {percentile(samples, 0.99):.2f} ms, "
            f"max {max(samples):.2f} ms (target: at most 5 ms).",
        ]
    else:
        lines += ["", f"GetRecords: no full page of 1000 records found ({records['records']} records read)."]
    return "\n".join(lines)


def main():
    spec = importlib.util.spec_from_file_location("bench_scale", Path(__file__).resolve().parent / "bench-scale.py")
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)
    scale.own_autogroup()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=8, help="seconds per round and table (default 8)")
    parser.add_argument("--rounds", type=int, default=9, help="alternating rounds; medians are kept (default 9)")
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections (default 16)")
    parser.add_argument("--binary", type=Path, help="use this switchyard binary instead of building target/release")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="do not pin the store and wrk to a CPU each")
    parser.add_argument("--perf", type=Path, help="perf record -g the store during the first round on each table, "
                                                  "into DIR/bench.data and DIR/bench-stream.data")
    parser.add_argument("--json", type=Path, help="also write every round's figures here")
    parser.add_argument("--write-ahead-log", action="store_true",
                        help="run the store with its write-ahead log (SWITCHYARD_WRITE_AHEAD_LOG=true)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    if args.write_ahead_log:
        os.environ["SWITCHYARD_WRITE_AHEAD_LOG"] = "true"
    args.load = os.getloadavg()[0]
    args.autogroup = autogroup()
    bench_store.ensure_tools(build=args.binary is None)
    store_prefix, wrk_prefix = pinning(args.pin)
    binary = (args.binary or REPO / "target" / "release" / "switchyard").resolve()
    with tempfile.TemporaryDirectory(prefix="bench-streams-") as root:
        root = Path(root)
        args.data_dir = root
        (root / "switchyard").mkdir()
        command = bench_store.systems(root, binary)["switchyard"]
        port, process = bench_store.start_system("switchyard", lambda port: store_prefix + command(port), root)
        try:
            create_stream_table(Api(port))
            puts = summary(put_rounds(port, process.pid, args, wrk_prefix))
            records = get_records(port)
        finally:
            bench_store.stop(process)
    if args.json:
        args.json.write_text(json.dumps({"binary": str(binary), "load": args.load, **puts,
                                         "get_records_ms": records["samples"]}, indent=1))
    # The store reads SWITCHYARD_WRITE_AHEAD_LOG from the environment it inherits: say so.
    wal = os.environ.get("SWITCHYARD_WRITE_AHEAD_LOG")
    prefix = f"SWITCHYARD_WRITE_AHEAD_LOG={wal} " if wal and not args.write_ahead_log else ""
    text = section(puts, records, args, prefix + "scripts/bench-streams.py " + " ".join(sys.argv[1:]), binary.parent.name,
                   (store_prefix, wrk_prefix))
    print(text)
    if not args.no_write:
        logged = wal is not None and wal.lower() in ("1", "true", "yes", "on")
        begin, end = (WAL_SECTION_BEGIN, WAL_SECTION_END) if logged else (SECTION_BEGIN, SECTION_END)
        bench_store.update_benchmarks(text, begin, end,
                                      "Streams: what a stream costs PutItem, and GetRecords of 1000 records")


if __name__ == "__main__":
    main()
