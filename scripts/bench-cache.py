#!/usr/bin/env python3
"""Resident memory of a store against its page cache (`--cache-bytes`), in one run:

    scripts/bench-cache.py [--binary target/release/switchyard] [--items 120000] [--cache 32MiB ...]

For the default cache and for each `--cache` size, starts a fresh store, loads `--items` items
of ~1 KB with BatchWriteItem (4 clients), reads them all back with a full Scan, and prints the
store's resident memory (VmRSS), the time taken and the bytes on disk. Not a test: nothing here
asserts a timing or a size.
"""

import argparse
import importlib.util
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3

# bench-store.py's helpers (its name has a dash, so it is loaded by path).
_spec = importlib.util.spec_from_file_location("bench_store", Path(__file__).resolve().parent / "bench-store.py")
bench_store = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_store)

REPO = bench_store.REPO
TABLE = "cache-bench"
VALUE = "x" * 1000
CLIENTS = 4


def resident_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return 0


def client(port):
    return boto3.client("dynamodb", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                        aws_access_key_id="bench", aws_secret_access_key="bench")


def run(binary, items, cache):
    data = tempfile.mkdtemp(prefix="bench-cache-")
    port = bench_store.free_port()
    command = [str(binary), "store", "--listen", f"127.0.0.1:{port}", "--data-dir", data]
    if cache:
        command += ["--cache-bytes", cache]
    store = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        bench_store.wait_port(port, store)
        api = client(port)
        api.create_table(TableName=TABLE, BillingMode="PAY_PER_REQUEST",
                         AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                         KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}])
        share = -(-items // CLIENTS)

        def load(first):
            own = client(port)
            for start in range(first, min(first + share, items), 25):
                batch = [{"PutRequest": {"Item": {"id": {"S": f"k{n}"}, "v": {"S": VALUE}}}}
                         for n in range(start, min(start + 25, first + share, items))]
                request = {TABLE: batch}
                while request:
                    request = own.batch_write_item(RequestItems=request).get("UnprocessedItems") or None

        started = time.monotonic()
        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(load, range(0, items, share)))
        pages = api.get_paginator("scan").paginate(TableName=TABLE, Select="COUNT")
        seen = sum(page["Count"] for page in pages)
        elapsed = time.monotonic() - started
        disk = sum(f.stat().st_size for f in Path(data).rglob("*") if f.is_file()) >> 20
        return {"cache": cache or "default (1GiB)", "items": seen, "seconds": elapsed,
                "rss": resident_mib(store.pid), "disk": disk}
    finally:
        bench_store.stop(store)
        shutil.rmtree(data, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", type=Path, default=REPO / "target" / "release" / "switchyard")
    parser.add_argument("--items", type=int, default=120_000, help="items of ~1 KB to load (default 120000)")
    parser.add_argument("--cache", action="append", default=None,
                        help="a --cache-bytes value to measure beside the default (repeatable; default 32MiB)")
    args = parser.parse_args()
    binary = args.binary.resolve()
    print("| page cache | items | load + scan s | resident MiB | on disk MiB |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for cache in [None] + (args.cache or ["32MiB"]):
        r = run(binary, args.items, cache)
        print(f"| {r['cache']} | {r['items']} | {r['seconds']:.1f} | {r['rss']} | {r['disk']} |", flush=True)


if __name__ == "__main__":
    main()
