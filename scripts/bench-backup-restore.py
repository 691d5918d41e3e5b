#!/usr/bin/env python3
"""Times an on-demand backup of a table while writes continue, and its restore, against a
running store (BENCHMARKS.md wants a million items; run it on a quiet machine, release build):

    switchyard store --data-dir /tmp/bench-data &
    .venv/bin/python scripts/bench-backup-restore.py --endpoint http://127.0.0.1:8000 --items 1000000 [--pitr]

Prints the load, backup and restore times and the backup's size. With --pitr the table has
point-in-time recovery on (its undo log is written with every write), and the script also
times a RestoreTableToPointInTime to a moment inside the writes that went on during the backup
(the restore walks the undo log back over them) and reports the writes/s of one writer during
the backup, to set beside a run without --pitr."""

import argparse
import datetime
import math
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
    parser.add_argument("--pitr", action="store_true", help="enable point-in-time recovery and time a PITR restore")
    args = parser.parse_args()
    c = client(args.endpoint)
    table = f"bench-{int(time.time())}"
    c.create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                   KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                   AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}])
    if args.pitr:
        c.update_continuous_backups(TableName=table,
                                    PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True})
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
    middle = None
    arn = c.create_backup(TableName=table, BackupName="bench")["BackupDetails"]["BackupArn"]
    wait("backup", lambda: c.describe_backup(BackupArn=arn)["BackupDescription"]["BackupDetails"]["BackupStatus"]
         == "AVAILABLE")
    backup_s = time.monotonic() - started
    if args.pitr:
        # A moment with writes after it: the point-in-time restore undoes them. Whole seconds:
        # botocore sends RestoreDateTime in seconds.
        middle = datetime.datetime.fromtimestamp(math.ceil(time.time()), datetime.timezone.utc)
        wait("more writes", lambda: time.time() > middle.timestamp() + 2)
    stop.set()
    background.join()
    writes_s = time.monotonic() - started
    details = c.describe_backup(BackupArn=arn)["BackupDescription"]
    print(f"backup of {details['SourceTableDetails']['ItemCount']} items "
          f"({details['BackupDetails']['BackupSizeBytes']} bytes) in {backup_s:.1f}s "
          f"while {writes[0]} writes went on")

    started = time.monotonic()
    c.restore_table_from_backup(TargetTableName=f"{table}-restored", BackupArn=arn)
    wait("restore", lambda: c.describe_table(TableName=f"{table}-restored")["Table"]["TableStatus"] == "ACTIVE")
    print(f"restore in {time.monotonic() - started:.1f}s")
    print(f"one writer: {writes[0] / writes_s:.0f} writes/s during the backup"
          f"{' (PITR on)' if args.pitr else ''}")

    if args.pitr:
        wait("restorable", lambda: c.describe_continuous_backups(TableName=table)["ContinuousBackupsDescription"]
             ["PointInTimeRecoveryDescription"]["LatestRestorableDateTime"] > middle)
        started = time.monotonic()
        c.restore_table_to_point_in_time(SourceTableName=table, TargetTableName=f"{table}-pitr",
                                         RestoreDateTime=middle)
        wait("PITR restore", lambda: c.describe_table(TableName=f"{table}-pitr")["Table"]["TableStatus"] == "ACTIVE")
        restored = c.describe_table(TableName=f"{table}-pitr")["Table"]["ItemCount"]
        print(f"point-in-time restore of {restored} items in {time.monotonic() - started:.1f}s "
              f"(the source has {c.describe_table(TableName=table)['Table']['ItemCount']})")


if __name__ == "__main__":
    main()
