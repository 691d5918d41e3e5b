"""Global tables with real processes: three `switchyard store` processes on loopback (one
configured by a deployment file's [store] section, two by flags), a table
made global through boto3's UpdateTable(ReplicaUpdates=...), writes in every region, one region
killed with SIGKILL and restarted, and every replica converging to the same contents with every
acknowledged write present."""

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request

import boto3
import pytest
from botocore.config import Config

from harness import BINARY, free_port
from test_store_harness import scan_all

REGIONS = ["us-east-1", "eu-west-1", "ap-south-1"]
KEY = "integration-test-replication-key-0123456789"
START_DEADLINE_S = 20
CONVERGENCE_DEADLINE_S = 60

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]


class Region:
    def __init__(self, name, port, data_dir, peers, extra_args=()):
        self.name, self.port, self.data_dir, self.peers = name, port, data_dir, peers
        self.extra_args = list(extra_args)
        self.process = None
        self.log = data_dir / "store.log"

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        ready = self.data_dir / "ready"
        if ready.exists():
            ready.unlink()
        env = dict(os.environ)
        if self.name == "eu-west-1":
            # This region takes everything from a deployment file's [store] section (paths
            # relative to the file), as a real deployment would.
            config = self.data_dir.parent / "eu-west-1.toml"
            (self.data_dir.parent / "replication.key").write_text(KEY + "\n")
            peers = "".join(f'{peer.name} = "{peer.url}"\n' for peer in self.peers)
            config.write_text(
                f'[proxy]\nlisten = "127.0.0.1:1"\n\n[store]\nregion = "{self.name}"\n'
                f'listen = "127.0.0.1:{self.port}"\ndata_dir = "{self.data_dir.name}"\n'
                f'replication_key_file = "replication.key"\n\n[store.peers]\n{peers}')
            command = [str(BINARY), "store", "--config", str(config), "--ready-file", str(ready)]
        else:
            command = [str(BINARY), "store", "--region", self.name, "--listen", f"127.0.0.1:{self.port}",
                       "--data-dir", str(self.data_dir), "--ready-file", str(ready)]
            for peer in self.peers:
                command += ["--peer", f"{peer.name}={peer.url}"]
            env["SWITCHYARD_REPLICATION_KEY"] = KEY
        command += self.extra_args
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))
        deadline = time.monotonic() + START_DEADLINE_S
        while not ready.exists():
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            assert time.monotonic() < deadline, f"{self.name} not ready in {START_DEADLINE_S}s"
            time.sleep(0.05)

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            assert self.process.wait(timeout=20) == 0, self.log.read_text()[-2000:]

    def client(self):
        return boto3.client(
            "dynamodb", region_name=self.name, endpoint_url=self.url,
            aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret",
            config=Config(retries={"max_attempts": 1, "mode": "standard"}),
        )


def start_regions(tmp_path, extra_args=()):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built")
    regions = [Region(name, free_port(), tmp_path / name, [], extra_args) for name in REGIONS]
    for region in regions:
        region.data_dir.mkdir()
        region.peers = [r for r in regions if r is not region]
    for region in regions:
        region.start()
    return regions


@pytest.fixture
def regions(tmp_path):
    regions = start_regions(tmp_path)
    yield regions
    for region in regions:
        region.stop()


# A replication log bound small enough that an outage outgrows it.
BACKLOG_BOUND_BYTES = 64 * 1024


@pytest.fixture
def small_log_regions(tmp_path):
    regions = start_regions(tmp_path, ["--replication-backlog-bytes-max", "64KiB"])
    yield regions
    for region in regions:
        region.stop()


def contents(region):
    return sorted(scan_all(region.client(), "orders"), key=lambda i: i["id"]["S"])


def create_orders(client):
    client.create_table(
        TableName="orders", BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
    )


def health_of(region):
    with urllib.request.urlopen(f"{region.url}/health", timeout=5) as response:
        return json.loads(response.read())


def tombstones(region):
    return health_of(region)["replication"]["tombstones"]


def wait_converged(regions):
    deadline = time.monotonic() + CONVERGENCE_DEADLINE_S
    while True:
        snapshots = [contents(r) for r in regions]
        if all(s == snapshots[0] for s in snapshots):
            return snapshots[0]
        assert time.monotonic() < deadline, f"no convergence: sizes {[len(s) for s in snapshots]}"
        time.sleep(0.2)


def test_global_table_survives_a_region_loss(regions):
    us, eu, ap = regions
    client = us.client()
    create_orders(client)
    client.put_item(TableName="orders", Item={"id": {"S": "seed"}, "total": {"N": "1.50"}})
    described = client.update_table(
        TableName="orders",
        ReplicaUpdates=[{"Create": {"RegionName": "eu-west-1"}}, {"Create": {"RegionName": "ap-south-1"}}],
    )["TableDescription"]
    assert sorted(r["RegionName"] for r in described["Replicas"]) == sorted(REGIONS)
    assert described["GlobalTableVersion"] == "2019.11.21"

    acknowledged = {"seed": "1.5"}
    for region in regions:
        c = region.client()
        for i in range(20):
            key = f"{region.name}-{i:03d}"
            c.put_item(TableName="orders", Item={"id": {"S": key}, "total": {"N": str(i)}})
            acknowledged[key] = str(i)
    # Concurrent writes to one key in two regions: last writer wins, the same everywhere.
    us.client().put_item(TableName="orders", Item={"id": {"S": "contended"}, "total": {"N": "1"}})
    eu.client().put_item(TableName="orders", Item={"id": {"S": "contended"}, "total": {"N": "2"}})

    converged = wait_converged(regions)
    present = {i["id"]["S"]: i["total"]["N"] for i in converged}
    for key, value in acknowledged.items():
        assert present.get(key) == value, f"acknowledged write {key} missing or changed"

    # Every region has heard from every other: the tombstone watermark moves.
    deadline = time.monotonic() + CONVERGENCE_DEADLINE_S
    while any(tombstones(r)["purge_below_age_ms"] is None for r in regions):
        assert time.monotonic() < deadline, [tombstones(r) for r in regions]
        time.sleep(0.2)

    # Lose a region while the others keep taking writes, then bring it back.
    eu.kill()
    for i in range(20):
        key = f"during-outage-{i:03d}"
        ap.client().put_item(TableName="orders", Item={"id": {"S": key}, "total": {"N": str(i)}})
        acknowledged[key] = str(i)
    ap.client().delete_item(TableName="orders", Key={"id": {"S": "seed"}})
    del acknowledged["seed"]
    # With eu-west-1 down nobody may purge the delete's tombstone: eu still holds the item and
    # would resurrect it everywhere. Wait until the watermark has stood still for a while: the
    # down region holds it back.
    deadline = time.monotonic() + CONVERGENCE_DEADLINE_S
    while (tombstones(ap)["purge_below_age_ms"] or 0) < 3000:
        assert time.monotonic() < deadline, tombstones(ap)
        time.sleep(0.2)
    for region in (us, ap):
        assert tombstones(region)["waiting"] >= 1, f"{region.name} purged a tombstone a down region lacks"
    eu.start()
    converged = wait_converged(regions)
    present = {i["id"]["S"]: i["total"]["N"] for i in converged}
    assert "seed" not in present, "the delete made during the outage replicated"
    for key, value in acknowledged.items():
        assert present.get(key) == value, f"acknowledged write {key} missing after the region came back"

    # Once every region has the delete and nothing older can arrive, the tombstone goes.
    deadline = time.monotonic() + CONVERGENCE_DEADLINE_S
    while any(tombstones(r)["waiting"] > 0 for r in regions):
        assert time.monotonic() < deadline, [tombstones(r) for r in regions]
        time.sleep(0.2)
    assert all(tombstones(r)["purged_total"] >= 1 for r in regions), [tombstones(r) for r in regions]
    assert wait_converged(regions) == converged, "purging a tombstone changed what the table holds"

    health = health_of(us)
    assert set(health["replication"]["peers"]) == {"eu-west-1", "ap-south-1"}
    for peer in health["replication"]["peers"].values():
        assert peer["backlog_alarm"] is False and peer["backlog_limit_bytes"] == 1 << 30, peer


def test_a_region_behind_a_trimmed_log_is_repaired_by_range_digests(small_log_regions):
    """The outage outgrows the log bound: the log is trimmed past what the down region needs,
    and when it returns, anti-entropy compares range digests and moves only the ranges that
    differ, not the table."""
    us, eu, ap = small_log_regions
    client = us.client()
    create_orders(client)
    client.update_table(
        TableName="orders",
        ReplicaUpdates=[{"Create": {"RegionName": "eu-west-1"}}, {"Create": {"RegionName": "ap-south-1"}}],
    )
    items = 3000
    for start in range(0, items, 25):
        client.batch_write_item(RequestItems={"orders": [
            {"PutRequest": {"Item": {"id": {"S": f"order-{i:05d}"}, "total": {"N": "1"}}}}
            for i in range(start, start + 25)]})
    assert len(wait_converged(small_log_regions)) == items

    eu.kill()
    hot = [f"order-{i:05d}" for i in range(0, items, 300)]

    def trimmed_past_eu(region):
        replication = health_of(region)["replication"]
        return replication["peers"]["eu-west-1"]["acked_seq"] + 1 < replication["log_first"]

    def repairs_of_eu(region):
        return health_of(region)["replication"]["peers"]["eu-west-1"]["repairs"]

    before = {r.name: repairs_of_eu(r) for r in (us, ap)}
    version = 0
    # Until neither live region's log still holds what eu-west-1 missed (so no log can bring it).
    while not (trimmed_past_eu(us) and trimmed_past_eu(ap)):
        version += 1
        assert version < 2000, "the log was never trimmed past the down region"
        for key in hot:
            client.put_item(TableName="orders", Item={"id": {"S": key}, "total": {"N": str(version)}})
    # The trimmer brings the log back within its bound (writes between two trims may pass it).
    deadline = time.monotonic() + CONVERGENCE_DEADLINE_S
    while any(health_of(r)["replication"]["log_bytes"] > BACKLOG_BOUND_BYTES for r in (us, ap)):
        assert time.monotonic() < deadline, [health_of(r)["replication"] for r in (us, ap)]
        time.sleep(0.2)
    for region in (us, ap):
        assert health_of(region)["replication"]["peers"]["eu-west-1"]["backlog_alarm"] is True
    eu.start()
    converged = wait_converged(small_log_regions)
    totals = {i["id"]["S"]: i["total"]["N"] for i in converged}
    assert len(totals) == items
    assert all(totals[key] == str(version) for key in hot), "the last writes of the outage reached every region"

    deadline = time.monotonic() + CONVERGENCE_DEADLINE_S
    while any(repairs_of_eu(r) <= before[r.name] for r in (us, ap)):
        assert time.monotonic() < deadline, [health_of(r)["replication"]["peers"]["eu-west-1"] for r in (us, ap)]
        time.sleep(0.2)
    repairs = [health_of(r)["replication"]["peers"]["eu-west-1"]["last_repair"] for r in (us, ap)]
    assert sum(r["records_pushed"] for r in repairs) > 0, f"no repair moved anything: {repairs}"
    for repair in repairs:
        # Inside a differing leaf only the records whose version differs move: the hot keys.
        assert repair["records_pushed"] <= len(hot), f"anti-entropy moved more than the differences: {repairs}"


def test_a_multi_attribute_index_is_served_by_every_replica(regions):
    """A global secondary index keyed by several attributes (DynamoDB's multi-attribute keys)
    reaches every replica with its whole KeySchema, and each replica indexes the items written
    in any region by all of them."""
    us, eu, ap = regions
    client = us.client()
    schema = [
        {"AttributeName": "store", "KeyType": "HASH"},
        {"AttributeName": "day", "KeyType": "HASH"},
        {"AttributeName": "status", "KeyType": "RANGE"},
        {"AttributeName": "total", "KeyType": "RANGE"},
    ]
    client.create_table(
        TableName="orders", BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": "id", "AttributeType": "S"},
            {"AttributeName": "store", "AttributeType": "S"},
            {"AttributeName": "day", "AttributeType": "S"},
            {"AttributeName": "status", "AttributeType": "S"},
            {"AttributeName": "total", "AttributeType": "N"},
        ],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        GlobalSecondaryIndexes=[{"IndexName": "by_store_day", "KeySchema": schema,
                                 "Projection": {"ProjectionType": "ALL"}}],
    )
    client.update_table(
        TableName="orders",
        ReplicaUpdates=[{"Create": {"RegionName": "eu-west-1"}}, {"Create": {"RegionName": "ap-south-1"}}],
    )
    for i, region in enumerate(regions):
        c = region.client()
        for n in range(4):
            c.put_item(TableName="orders", Item={
                "id": {"S": f"{region.name}-{n}"}, "store": {"S": "lyon"}, "day": {"S": "2026-12-03"},
                "status": {"S": "paid" if n % 2 else "open"}, "total": {"N": str(10 * i + n)}})
        # Without every key attribute an item stays out of the index, in every region.
        c.put_item(TableName="orders", Item={
            "id": {"S": f"{region.name}-sparse"}, "store": {"S": "lyon"}, "day": {"S": "2026-12-03"}})
    wait_converged(regions)
    for region in regions:
        c = region.client()
        index = c.describe_table(TableName="orders")["Table"]["GlobalSecondaryIndexes"][0]
        assert index["KeySchema"] == schema, region.name
        paid = c.query(
            TableName="orders", IndexName="by_store_day",
            KeyConditionExpression="#s = :s AND #d = :d AND #st = :st AND #t > :t",
            ExpressionAttributeNames={"#s": "store", "#d": "day", "#st": "status", "#t": "total"},
            ExpressionAttributeValues={":s": {"S": "lyon"}, ":d": {"S": "2026-12-03"},
                                       ":st": {"S": "paid"}, ":t": {"N": "2"}},
        )["Items"]
        # Paid orders have n = 1, 3: totals 1, 3, 11, 13, 21, 23; above 2, in order.
        assert [int(item["total"]["N"]) for item in paid] == [3, 11, 13, 21, 23], region.name


def health_any(region):
    """The store's /health document, also when it answers 503."""
    try:
        return health_of(region)
    except urllib.error.HTTPError as error:
        return json.loads(error.read())


def wait_for(what, condition, deadline_s=CONVERGENCE_DEADLINE_S):
    deadline = time.monotonic() + deadline_s
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return result


def test_a_region_whose_database_was_wiped_is_named_until_its_replicas_are_created_again(regions):
    """eu-west-1's data directory is lost (a replaced disk, a volume not mounted) and the store
    starts on an empty one. It has no replica of the global tables any more, and skips what it
    is sent for them, while the other regions list it ACTIVE: each of them sees the new database
    in eu-west-1's marks and warns of it on /health, naming the tables and the fix, while its
    own status stays ready (a failing check there would send traffic to the empty region).
    Deleting and creating a replica again backfills it and takes it off the list; the warning
    ends in every region once no table is left."""
    us, eu, ap = regions
    client = us.client()
    create_orders(client)
    client.create_table(TableName="carts", BillingMode="PAY_PER_REQUEST",
                        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}])
    for table in ("orders", "carts"):
        client.get_waiter("table_exists").wait(TableName=table)
    for n in range(20):
        client.put_item(TableName="orders", Item={"id": {"S": f"o{n}"}})
    for table in ("orders", "carts"):
        client.update_table(TableName=table, ReplicaUpdates=[{"Create": {"RegionName": "eu-west-1"}},
                                                             {"Create": {"RegionName": "ap-south-1"}}])
    assert len(wait_converged(regions)) == 20
    for region in regions:
        assert health_any(region)["warnings"] == [], region.name

    eu.stop()
    for path in eu.data_dir.iterdir():
        if path.name != "store.log":
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    eu.start()

    def alarm(region):
        return next((w for w in health_any(region)["warnings"] if "new database" in w), None)

    for region in (us, ap):
        reason = wait_for(f"{region.name} to name eu-west-1's new database",
                          lambda region=region: alarm(region))
        assert "eu-west-1's store answers with a new database" in reason, reason
        assert "orders, carts" in reason or "carts, orders" in reason, reason
        assert "ReplicaUpdates" in reason, reason
        assert health_any(region)["status"] == "ready"
        with urllib.request.urlopen(f"{region.url}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert 'switchyard_store_peer_replicas_missing{peer="eu-west-1"} 2' in metrics, metrics[-2000:]

    # The wiped region is told so in the answers to its marks, and fails its own health check:
    # it holds none of the global tables' data, so it must not take their traffic.
    def own_alarms():
        body = health_any(eu)
        return body["status"], [r for r in body["reasons"] if "this region's database is new" in r]

    status, reasons = wait_for("eu-west-1 to learn its database lacks the replicas",
                               lambda: (got := own_alarms())[0] == "degraded" and len(got[1]) == 2 and got)
    for peer, reason in zip(("ap-south-1", "us-east-1"), reasons):
        assert f"{peer} lists replicas of the global tables" in reason, reason
        assert "orders" in reason and "carts" in reason and "ReplicaUpdates" in reason, reason

    client.update_table(TableName="orders", ReplicaUpdates=[{"Delete": {"RegionName": "eu-west-1"}}])
    client.update_table(TableName="orders", ReplicaUpdates=[{"Create": {"RegionName": "eu-west-1"}}])
    assert len(wait_converged(regions)) == 20
    for region in (us, ap):
        reason = wait_for(f"{region.name}'s alarm to name only carts",
                          lambda region=region: (a := alarm(region)) and "orders" not in a and a)
        assert "carts" in reason, reason
    wait_for("eu-west-1's own alarms to name only carts",
             lambda: (got := own_alarms())[1] and all("orders" not in r and "carts" in r for r in got[1]))

    client.update_table(TableName="carts", ReplicaUpdates=[{"Delete": {"RegionName": "eu-west-1"}}])
    client.update_table(TableName="carts", ReplicaUpdates=[{"Create": {"RegionName": "eu-west-1"}}])
    for region in (us, ap):
        wait_for(f"{region.name}'s warning to end", lambda region=region: alarm(region) is None)
    wait_for("eu-west-1 to be ready again", lambda: own_alarms() == ("ready", []))
    eu.client().describe_table(TableName="carts")
