"""Operability of the real binary: `/health` as JSON, Prometheus `/metrics` counting requests by
operation and outcome, and SIGTERM under concurrent writers finishing in-flight writes (exit 0,
every acknowledged write present after a restart)."""

import json
import threading
import time
import urllib.request

import pytest
from botocore.exceptions import ClientError

import boto3
from botocore.config import Config

from test_store_harness import ACCESS_KEY_ID, REGION, SECRET, create_table, scan_all, started_store

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]

WRITERS = 4
WRITE_PHASE_S = 0.5
STOP_DEADLINE_S = 30


def start_writers(store, table, acked, failures, stop, value=None):
    """WRITERS threads putting new keys into `table` until `stop` is set or the store stops
    answering; each acknowledged key goes to `acked`, each error the store answers (which must
    not happen) to `failures`."""

    def writer(index):
        client = store.client(connect_timeout=2, read_timeout=10)
        sequence = 0
        while not stop.is_set():
            sequence += 1
            key = f"w{index}-{sequence}"
            item = {"pk": {"S": key}, **({"v": {"S": value}} if value else {})}
            try:
                client.put_item(TableName=table, Item=item)
            except ClientError as error:  # an answer from the store: must not be a fault
                failures.append(error.response["Error"]["Code"])
                return
            except Exception:  # connection refused or closed: the store stopped or was killed
                return
            acked.append(key)

    threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(WRITERS)]
    for thread in threads:
        thread.start()
    return threads


def fetch(store, path):
    with urllib.request.urlopen(store.url + path, timeout=10) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read().decode()


def test_health_and_metrics(tmp_path_factory):
    store = started_store(tmp_path_factory, "ops")
    try:
        status, content_type, body = fetch(store, "/health")
        health = json.loads(body)
        assert status == 200 and "json" in content_type
        assert health["status"] == "ready" and health["reason"]

        client = store.client()
        create_table(client, "metered")
        for i in range(3):
            client.put_item(TableName="metered", Item={"pk": {"S": f"m{i}"}})
        with pytest.raises(ClientError):
            client.get_item(TableName="ghost-table", Key={"pk": {"S": "x"}})
        status, _, text = fetch(store, "/metrics")
        assert status == 200
        lines = text.splitlines()

        def sample(prefix):
            matches = [float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix)]
            assert matches, f"no metric {prefix} in /metrics"
            return matches[0]

        assert sample('switchyard_store_requests_total{operation="PutItem",outcome="ok"}') == 3
        assert sample('switchyard_store_requests_total{operation="GetItem",outcome="client_error"}') == 1
        assert sample('switchyard_store_request_duration_seconds_count{operation="PutItem"}') == 3
        assert sample('switchyard_store_items{table="metered"}') == 3
        assert sample("switchyard_store_storage_bytes") > 0
    finally:
        store.stop()


def test_sigterm_finishes_in_flight_writes(tmp_path_factory):
    store = started_store(tmp_path_factory, "sigterm")
    create_table(store.client(), "graceful")
    acked, failures = [], []
    stop = threading.Event()
    threads = start_writers(store, "graceful", acked, failures, stop)
    deadline = time.monotonic() + WRITE_PHASE_S
    while time.monotonic() < deadline or len(acked) < 10:
        assert time.monotonic() < deadline + STOP_DEADLINE_S, "no writes were acknowledged"
        time.sleep(0.01)
    store.stop()  # SIGTERM; asserts exit code 0
    stop.set()
    for thread in threads:
        thread.join(timeout=STOP_DEADLINE_S)
        assert not thread.is_alive()
    assert not failures, f"writes refused during shutdown: {failures}"

    store.start()
    try:
        client = store.client()
        present, start = set(), None
        while True:
            page = client.scan(TableName="graceful", ConsistentRead=True, **({"ExclusiveStartKey": start} if start else {}))
            present.update(i["pk"]["S"] for i in page["Items"])
            start = page.get("LastEvaluatedKey")
            if not start:
                break
        missing = set(acked) - present
        assert not missing, f"{len(missing)} acknowledged writes lost over SIGTERM"
    finally:
        store.stop()


def test_a_bad_config_file_is_refused_with_its_line_and_the_fix(tmp_path):
    import subprocess

    from test_store_harness import BINARY, require_binary

    require_binary()
    config = tmp_path / "deployment.toml"
    config.write_text('[store]\nregion = "us-east-1"\n\n[store.peers]\neu-west-1 = "10.0.0.2:8000"\n')
    result = subprocess.run([str(BINARY), "store", "--config", str(config), "--data-dir", str(tmp_path / "data")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert str(config) in result.stderr and "line 5" in result.stderr, result.stderr
    assert "http://127.0.0.1:8001" in result.stderr, "the message shows how to write it"
    assert not (tmp_path / "data").exists(), "nothing is created before the config is valid"


def test_a_damaged_store_file_is_refused_with_the_fix_not_a_panic(tmp_path_factory, tmp_path):
    """A store file cut short (a partial copy, a disk that lost its tail) or overwritten: the
    store exits with a message naming the file, that it is damaged and what to do, and leaves
    the file as it was."""
    import subprocess

    from test_store_harness import BINARY

    store = started_store(tmp_path_factory, "to-damage")
    create_table(store.client(), "orders")
    for i in range(200):
        store.client().put_item(TableName="orders", Item={"pk": {"S": f"k{i}"}, "pad": {"S": "x" * 400}})
    store.stop()
    path = store.data_dir / "store.redb"
    whole = path.read_bytes()
    for name, damaged in [("cut short", whole[: len(whole) // 2]), ("overwritten", b"\x00" * 4096)]:
        path.write_bytes(damaged)
        result = subprocess.run([str(BINARY), "store", "--listen", "127.0.0.1:0", "--data-dir", str(store.data_dir)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode != 0, name
        assert "panicked" not in result.stderr, f"{name}: {result.stderr[-2000:]}"
        assert str(path) in result.stderr and "damaged" in result.stderr, f"{name}: {result.stderr[-2000:]}"
        assert "Move store.redb aside" in result.stderr, result.stderr[-2000:]
        assert path.read_bytes() == damaged, f"{name}: the damaged file was changed"


def test_a_store_file_of_an_earlier_release_is_upgraded_at_start(tmp_path_factory):
    """A data directory of the release before the move to redb 4 (its file in redb's format v2,
    left by a kill -9 during writes: crates/store/tests/fixtures) starts: the binary upgrades the
    file in place, says so in its log, serves what was there, and starts again without any
    upgrade or repair."""
    import gzip
    from pathlib import Path

    from test_store_harness import StoreProcess

    fixture = Path(__file__).resolve().parents[2] / "crates/store/tests/fixtures/redb2-crashed.redb.gz"
    data_dir = tmp_path_factory.mktemp("old-release") / "data"
    data_dir.mkdir()
    (data_dir / "store.redb").write_bytes(gzip.decompress(fixture.read_bytes()))
    store = StoreProcess(data_dir)
    store.start()
    try:
        assert "upgrading it in place to v3" in store.tail(), store.tail()
        health = json.loads(fetch(store, "/health")[2])
        assert health["status"] == "ready", health
        assert health["writer"]["opened_after_upgrade"] is True, health["writer"]
        assert health["writer"]["opened_after_repair"] is True, health["writer"]
        client = store.client()
        assert client.describe_table(TableName="orders")["Table"]["ItemCount"] == 60
        shipped = client.query(TableName="orders", IndexName="by-status", KeyConditionExpression="#s = :s",
                               ExpressionAttributeNames={"#s": "status"},
                               ExpressionAttributeValues={":s": {"S": "shipped"}})
        assert shipped["Count"] == 21
        assert client.get_item(TableName="plain", Key={"id": {"S": "p19"}}, ConsistentRead=True)["Item"]["n"] == {"N": "19"}
        client.put_item(TableName="plain", Item={"id": {"S": "after-upgrade"}})
    finally:
        store.stop()
    log_before = store.log.read_text(errors="replace")
    store.start()
    try:
        again = store.log.read_text(errors="replace")[len(log_before):]
        assert "upgrading" not in again and "repairing" not in again, again
        health = json.loads(fetch(store, "/health")[2])
        assert health["writer"]["opened_after_repair"] is False, health["writer"]
        assert health["writer"]["opened_after_upgrade"] is False, health["writer"]
        item = store.client().get_item(TableName="plain", Key={"id": {"S": "after-upgrade"}}, ConsistentRead=True)
        assert "Item" in item
    finally:
        store.stop()


def kill_during_writes(store, table, count, value=None, **table_options):
    """Creates `table` (with `table_options`, e.g. a StreamSpecification), kills the store
    (SIGKILL) once `count` writes are acknowledged while writers are busy, and returns the keys
    acknowledged; no write may have been refused."""
    create_table(store.client(), table, **table_options)
    acked, failures = [], []
    stop = threading.Event()
    threads = start_writers(store, table, acked, failures, stop, value=value)
    deadline = time.monotonic() + STOP_DEADLINE_S
    while len(acked) < count:
        assert time.monotonic() < deadline, "no writes were acknowledged"
        time.sleep(0.01)
    store.kill()
    stop.set()
    for thread in threads:
        thread.join(timeout=STOP_DEADLINE_S)
    assert not failures, f"writes refused before the kill: {failures}"
    return acked


def test_a_kill_during_writes_replays_the_write_ahead_log_and_never_repairs(tmp_path_factory):
    """With --write-ahead-log, kill -9 of the real binary while writers are busy: the restart
    loads the last checkpoint
    and replays store.wal (`/health` says how much), walks no file (no repair), and every
    acknowledged write is there. Then store.wal is taken away after another kill: the start is
    refused with the fix, and an empty store.wal (the operator's word) opens the database as it
    is."""
    store = started_store(tmp_path_factory, "wal-kill", args=("--write-ahead-log",))
    acked = kill_during_writes(store, "logged", 300, value="x" * 200)
    log_before = store.log.read_text(errors="replace")
    store.start()
    try:
        since = store.log.read_text(errors="replace")[len(log_before):]
        assert "repairing" not in since, since
        writer_health = json.loads(fetch(store, "/health")[2])["writer"]
        assert writer_health["opened_after_repair"] is False, writer_health
        assert writer_health["open_replayed_batches"] > 0, writer_health
        assert writer_health["open_replayed_bytes"] > 0, writer_health
        present = {item["pk"]["S"] for item in scan_all(store.client(), "logged")}
        missing = set(acked) - present
        assert not missing, f"{len(missing)} acknowledged writes lost over kill -9"
        store.client().put_item(TableName="logged", Item={"pk": {"S": "after"}})
    finally:
        store.kill()
    wal = store.data_dir / "store.wal"
    wal.unlink()
    with pytest.raises(AssertionError, match="exited"):
        store.start()
    assert "store.wal" in store.tail() and "touch store.wal" in store.tail(), store.tail()
    wal.write_bytes(b"")
    store.start()
    try:
        status, _, body = fetch(store, "/health")
        assert status == 200, body
        store.client().describe_table(TableName="logged")
    finally:
        store.stop()


def stream_records_of(store, table):
    """Every record of `table`'s stream, shard by shard from the trim horizon (boto3's
    dynamodbstreams client)."""
    streams = boto3.client(
        "dynamodbstreams", region_name=REGION, endpoint_url=store.url,
        aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )
    arn = store.client().describe_table(TableName=table)["Table"]["LatestStreamArn"]
    records = []
    for shard in streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
        iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard["ShardId"],
                                              ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while iterator:
            page = streams.get_records(ShardIterator=iterator, Limit=100)
            if not page["Records"]:
                break
            records += page["Records"]
            iterator = page.get("NextShardIterator")
    return records


@pytest.mark.parametrize("write_ahead_log", [True, False], ids=["write-ahead-log", "redb-commits"])
def test_a_kill_during_writes_keeps_the_stream_record_of_every_acknowledged_write(tmp_path_factory, write_ahead_log):
    """kill -9 while writers are busy on a table with a NEW_AND_OLD_IMAGES stream: after the
    restart its stream holds an INSERT of every acknowledged write, each once, in increasing
    sequence numbers. With the write-ahead log the records written since the last checkpoint
    were only in memory and in the log (the replay puts them in redb), without it in each
    batch's durable commit."""
    args = ("--write-ahead-log",) if write_ahead_log else ()
    store = started_store(tmp_path_factory, f"stream-kill-{write_ahead_log}", args=args)
    spec = {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
    acked = kill_during_writes(store, "fed", 300, value="x" * 200, StreamSpecification=spec)
    store.start()
    try:
        writer_health = json.loads(fetch(store, "/health")[2])["writer"]
        if write_ahead_log:
            assert writer_health["open_replayed_batches"] > 0, writer_health
        assert writer_health["stream_overlay_blocks"] == 0, writer_health
        records = stream_records_of(store, "fed")
        keys = [r["dynamodb"]["Keys"]["pk"]["S"] for r in records]
        assert len(keys) == len(set(keys)), "a write was recorded twice"
        missing = set(acked) - set(keys)
        assert not missing, f"{len(missing)} acknowledged writes have no stream record after kill -9"
        assert {r["eventName"] for r in records} == {"INSERT"}
        sequence = [int(r["dynamodb"]["SequenceNumber"]) for r in records]
        assert sequence == sorted(sequence), "records out of order"
        # Writes after the restart append after them.
        store.client().put_item(TableName="fed", Item={"pk": {"S": "after"}})
        after = stream_records_of(store, "fed")
        assert [r["dynamodb"]["Keys"]["pk"]["S"] for r in after] == keys + ["after"]
    finally:
        store.stop()


@pytest.mark.parametrize("value, logged", [("1", True), ("yes", True), ("0", False), ("off", False)])
def test_the_write_ahead_log_variable_takes_the_usual_booleans(tmp_path_factory, value, logged):
    """SWITCHYARD_WRITE_AHEAD_LOG=1 (as many tools write booleans) turns the log on, 0 or off
    leaves it off: before, anything but true/false stopped the store naming a flag never given."""
    store = started_store(tmp_path_factory, "wal-env", env={"SWITCHYARD_WRITE_AHEAD_LOG": value})
    try:
        client = store.client()
        client.create_table(TableName="wal_env", KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                            BillingMode="PAY_PER_REQUEST")
        for i in range(20):
            client.put_item(TableName="wal_env", Item={"pk": {"S": f"k{i}"}})
        metrics = fetch(store, "/metrics")[2]
        line = next(line for line in metrics.splitlines() if line.startswith("switchyard_store_write_ahead_log_bytes"))
        assert (float(line.split()[-1]) > 0) == logged, line
        # With the log, the size that calls for a checkpoint: all 8 MiB until a checkpoint holds
        # the writer long (a few puts to a small table never do).
        writer = json.loads(fetch(store, "/health")[2])["writer"]
        assert writer["checkpoint_log_bytes_due"] == (8 << 20 if logged else 0), writer
    finally:
        store.stop()


def test_without_the_log_a_data_directory_copied_without_store_wal_still_starts(tmp_path_factory):
    """The default (no --write-ahead-log) logs nothing, so after kill -9 a missing store.wal
    loses nothing: the start says so, begins a new log, and every acknowledged write is there."""
    store = started_store(tmp_path_factory, "unlogged-kill")
    acked = kill_during_writes(store, "plain", 100)
    wal = store.data_dir / "store.wal"
    wal.unlink()
    store.start()
    try:
        assert "did not log" in store.tail(), store.tail()
        present = {item["pk"]["S"] for item in scan_all(store.client(), "plain")}
        missing = set(acked) - present
        assert not missing, f"{len(missing)} acknowledged writes lost"
        assert wal.exists()
    finally:
        store.stop()
