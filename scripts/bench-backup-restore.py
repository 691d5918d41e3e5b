#!/usr/bin/env python3
"""Times an on-demand backup of a table while writes continue, and its restore, against a
running store (BENCHMARKS.md wants a million items; run it on a quiet machine, release build):

    switchyard store --data-dir /tmp/bench-data &
    .venv/bin/python scripts/bench-backup-restore.py --endpoint http://127.0.0.1:8000 --items 1000000

Prints the load, backup and restore times and the backup's size."""

import argparse
import concurrent.futures
import threading
import time

import boto3
from botocore.config import Config


def client(endpoint):
    return boto3.client("dynamodb", region_name="us-east-1", endpoint_url=endpoint,
                        aws_access_key_id="bench", aws_secret_access_key="bench",
                        config=Config(retries={"max_attempts": 10, "mode": "standard"}, max_pool_connections=64))


def load(endpoint, table, start, stop):
    c = client(endpoint)
    for first in range(start, stop, 25):
        requests = [{"PutRequest": {"Item": {"pk": {"S": f"item-{n}"}, "payload": {"S": "x" * 100}}}}
                    for n in range(first, min(first + 25, stop))]
        while requests:
            left = c.batch_write_item(RequestItems={table: requests}).get("UnprocessedItems", {})
            requests = left.get(table, [])


def wait(what, condition, deadline_s=3600):
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not within {deadline_s}s")
        time.sleep(0.2)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", default="http://127.0.0.1:8000")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--loaders", type=int, default=16)
    args = parser.parse_args()
    c = client(args.endpoint)
    table = f"bench-{int(time.time())}"
    c.create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                   KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                   AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}])
    started = time.monotonic()
    share = -(-args.items // args.loaders)
    with concurrent.futures.ThreadPoolExecutor(args.loaders) as pool:
        list(pool.map(lambda i: load(args.endpoint, table, i * share, min(args.items, (i + 1) * share)),
                      range(args.loaders)))
    print(f"loaded {args.items} items in {time.monotonic() - started:.1f}s")

    stop = threading.Event()
    writes = [0]

    def writer():
        w = client(args.endpoint)
        while not stop.is_set():
            w.put_item(TableName=table, Item={"pk": {"S": f"during-{writes[0]}"}})
            writes[0] += 1

    background = threading.Thread(target=writer, daemon=True)
    background.start()
    started = time.monotonic()
    arn = c.create_backup(TableName=table, BackupName="bench")["BackupDetails"]["BackupArn"]
    wait("backup", lambda: c.describe_backup(BackupArn=arn)["BackupDescription"]["BackupDetails"]["BackupStatus"]
         == "AVAILABLE")
    backup_s = time.monotonic() - started
    stop.set()
    background.join()
    details = c.describe_backup(BackupArn=arn)["BackupDescription"]
    print(f"backup of {details['SourceTableDetails']['ItemCount']} items "
          f"({details['BackupDetails']['BackupSizeBytes']} bytes) in {backup_s:.1f}s "
          f"while {writes[0]} writes went on")

    started = time.monotonic()
    c.restore_table_from_backup(TargetTableName=f"{table}-restored", BackupArn=arn)
    wait("restore", lambda: c.describe_table(TableName=f"{table}-restored")["Table"]["TableStatus"] == "ACTIVE")
    print(f"restore in {time.monotonic() - started:.1f}s")


if __name__ == "__main__":
    main()
