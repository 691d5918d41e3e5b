"""DynamoDB Streams, black box: the real `switchyard store` binary driven with boto3's
`dynamodbstreams` client (ListStreams, DescribeStream, GetShardIterator, GetRecords) and its
`dynamodb` client (StreamSpecification on CreateTable/UpdateTable, DescribeTable's stream
fields): every iterator type and view type, shard rollover and retention (with the store's
test overrides), TTL deletion records, and global-table streams in two regions."""

import collections
import contextlib
import datetime
import itertools
import os
import random
import re
import shutil
import threading
import time

from unittest.mock import ANY

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from test_store_harness import ACCESS_KEY_ID, REGION, SECRET, create_table, started_store, store_fixture, wait_for

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]

SEED = int(os.environ.get("SWITCHYARD_SEED", random.randrange(1 << 32)))

names = (f"streamed-{i}" for i in itertools.count())
VIEW_TYPES = ["KEYS_ONLY", "NEW_IMAGE", "OLD_IMAGE", "NEW_AND_OLD_IMAGES"]
TTL_DEADLINE_S = 30
TRIM_DEADLINE_S = 30
REPLICATION_DEADLINE_S = 60
# ENABLING/DISABLING last about a second (store::streams::STATUS_TRANSITION_MS).
STATUS_DEADLINE_S = 30


def streams_client(url, region=REGION):
    return boto3.client(
        "dynamodbstreams", region_name=region, endpoint_url=url,
        aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )


store = store_fixture()


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    """A store whose shards roll over after 3 records and whose streams keep records 3 s."""
    store = started_store(tmp_path_factory, name="small", env={
        "SWITCHYARD_STREAM_SHARD_RECORDS_MAX": "3",
        "SWITCHYARD_STREAM_RETENTION_MS": "3000",
    })
    yield store
    store.stop()


def streamed_table(client, view_type="NEW_AND_OLD_IMAGES", **extra):
    name = create_table(client, next(names), StreamSpecification={"StreamEnabled": True, "StreamViewType": view_type},
                        **extra)
    return name, client.describe_table(TableName=name)["Table"]["LatestStreamArn"]


def shards_of(streams, arn):
    shards, start = [], None
    while True:
        kwargs = {"StreamArn": arn, "Limit": 2}
        if start:
            kwargs["ExclusiveStartShardId"] = start
        page = streams.describe_stream(**kwargs)["StreamDescription"]
        shards += page["Shards"]
        start = page.get("LastEvaluatedShardId")
        if not start:
            return shards


def read_all(streams, arn):
    """Every record of every shard from TRIM_HORIZON, parents before children."""
    records = []
    for shard in shards_of(streams, arn):
        iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard["ShardId"],
                                              ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while iterator:
            page = streams.get_records(ShardIterator=iterator)
            records += page["Records"]
            iterator = page.get("NextShardIterator")
            if not page["Records"] and "EndingSequenceNumber" not in shard["SequenceNumberRange"]:
                break
    return records


def error_code(excinfo):
    return excinfo.value.response["Error"]["Code"], excinfo.value.response["Error"]["Message"]


def test_every_view_type_records_inserts_modifies_and_removes(store):
    client, streams = store.client(), streams_client(store.url)
    for view_type in VIEW_TYPES:
        name, arn = streamed_table(client, view_type)
        client.put_item(TableName=name, Item={"pk": {"S": "a"}, "v": {"N": "1"}})
        client.put_item(TableName=name, Item={"pk": {"S": "a"}, "v": {"N": "1"}})  # no change: no record
        client.update_item(TableName=name, Key={"pk": {"S": "a"}}, UpdateExpression="SET v = :v",
                           ExpressionAttributeValues={":v": {"N": "2"}})
        client.delete_item(TableName=name, Key={"pk": {"S": "a"}})
        client.delete_item(TableName=name, Key={"pk": {"S": "never-there"}})  # no record
        records = read_all(streams, arn)
        assert [r["eventName"] for r in records] == ["INSERT", "MODIFY", "REMOVE"], view_type
        for record in records:
            assert record["eventVersion"] == "1.1"
            assert record["eventSource"] == "aws:dynamodb"
            assert record["awsRegion"] == REGION
            assert len(record["eventID"]) == 32
            assert "userIdentity" not in record
            dynamodb = record["dynamodb"]
            assert dynamodb["Keys"] == {"pk": {"S": "a"}}
            assert dynamodb["StreamViewType"] == view_type
            assert 21 <= len(dynamodb["SequenceNumber"]) <= 40
            assert dynamodb["SizeBytes"] > 0
            assert abs(dynamodb["ApproximateCreationDateTime"].timestamp() - time.time()) < 300
        modify = records[1]["dynamodb"]
        assert ("NewImage" in modify) == (view_type in ("NEW_IMAGE", "NEW_AND_OLD_IMAGES"))
        assert ("OldImage" in modify) == (view_type in ("OLD_IMAGE", "NEW_AND_OLD_IMAGES"))
        if "NewImage" in modify:
            assert modify["NewImage"] == {"pk": {"S": "a"}, "v": {"N": "2"}}
        if "OldImage" in modify:
            assert modify["OldImage"] == {"pk": {"S": "a"}, "v": {"N": "1"}}
        sequences = [int(r["dynamodb"]["SequenceNumber"]) for r in records]
        assert sequences == sorted(set(sequences))


def test_batch_and_transactional_writes_are_recorded(store):
    client, streams = store.client(), streams_client(store.url)
    name, arn = streamed_table(client, "NEW_IMAGE")
    client.batch_write_item(RequestItems={name: [{"PutRequest": {"Item": {"pk": {"S": f"b{i}"}}}} for i in range(5)]})
    client.transact_write_items(TransactItems=[
        {"Put": {"TableName": name, "Item": {"pk": {"S": "t"}, "x": {"S": "y"}}}},
        {"Delete": {"TableName": name, "Key": {"pk": {"S": "b0"}}}},
    ])
    records = read_all(streams, arn)
    assert [r["eventName"] for r in records] == ["INSERT"] * 6 + ["REMOVE"]
    assert records[5]["dynamodb"]["NewImage"] == {"pk": {"S": "t"}, "x": {"S": "y"}}


def test_describe_table_list_streams_and_describe_stream(store):
    client, streams = store.client(), streams_client(store.url)
    name, arn = streamed_table(client, "KEYS_ONLY", range_key=("sk", "N"))
    table = client.describe_table(TableName=name)["Table"]
    assert table["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "KEYS_ONLY"}
    label = table["LatestStreamLabel"]
    assert arn == f"arn:aws:dynamodb:{REGION}:000000000000:table/{name}/stream/{label}"
    time.strptime(label[:19], "%Y-%m-%dT%H:%M:%S")
    assert label[19] == "." and len(label) == 23
    listed = streams.list_streams(TableName=name)["Streams"]
    assert listed == [{"StreamArn": arn, "TableName": name, "StreamLabel": label}]
    description = streams.describe_stream(StreamArn=arn)["StreamDescription"]
    # ENABLING first, as on DynamoDB, then ENABLED within the store's short transition.
    assert description["StreamStatus"] in ("ENABLING", "ENABLED")
    wait_for(lambda: streams.describe_stream(StreamArn=arn)["StreamDescription"]["StreamStatus"] == "ENABLED",
             STATUS_DEADLINE_S, "the stream to be ENABLED")
    assert description["StreamViewType"] == "KEYS_ONLY"
    assert description["TableName"] == name
    assert description["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"},
                                        {"AttributeName": "sk", "KeyType": "RANGE"}]
    # The label is the time the stream was asked for, to the millisecond: CreationRequestDateTime.
    assert description["CreationRequestDateTime"] == datetime.datetime.strptime(
        label + "+0000", "%Y-%m-%dT%H:%M:%S.%f%z")
    assert len(description["Shards"]) == 1
    assert "StartingSequenceNumber" in description["Shards"][0]["SequenceNumberRange"]
    # ListStreams pages with Limit / ExclusiveStartStreamArn over every table's streams.
    seen, start = [], None
    while True:
        kwargs = {"Limit": 1}
        if start:
            kwargs["ExclusiveStartStreamArn"] = start
        page = streams.list_streams(**kwargs)
        assert len(page["Streams"]) <= 1
        seen += [s["StreamArn"] for s in page["Streams"]]
        start = page.get("LastEvaluatedStreamArn")
        if not start:
            break
    assert arn in seen and len(seen) == len(set(seen))
    paginated = [s["StreamArn"] for p in streams.get_paginator("list_streams").paginate() for s in p["Streams"]] \
        if streams.can_paginate("list_streams") else seen
    assert sorted(paginated) == sorted(seen)
    with pytest.raises(ClientError) as excinfo:
        streams.describe_stream(StreamArn=arn.replace(label, "2001-01-01T00:00:00.000"))
    assert error_code(excinfo)[0] == "ResourceNotFoundException"
    # TableName filters: a table with no stream, or no such table, lists none (no error).
    assert streams.list_streams(TableName="no-such-table") == {"Streams": [], "ResponseMetadata": ANY}
    assert streams.list_streams(TableName=create_table(client, next(names)))["Streams"] == []


def test_iterator_types(store):
    client, streams = store.client(), streams_client(store.url)
    name, arn = streamed_table(client, "NEW_IMAGE")
    for i in range(3):
        client.put_item(TableName=name, Item={"pk": {"S": f"k{i}"}})
    shard = shards_of(streams, arn)[0]["ShardId"]

    def iterator(kind, sequence=None):
        kwargs = {"StreamArn": arn, "ShardId": shard, "ShardIteratorType": kind}
        if sequence:
            kwargs["SequenceNumber"] = sequence
        return streams.get_shard_iterator(**kwargs)["ShardIterator"]

    latest = streams.get_records(ShardIterator=iterator("LATEST"))
    assert latest["Records"] == [] and "NextShardIterator" in latest
    client.put_item(TableName=name, Item={"pk": {"S": "k3"}})
    after_latest = streams.get_records(ShardIterator=latest["NextShardIterator"])
    assert [r["dynamodb"]["Keys"]["pk"]["S"] for r in after_latest["Records"]] == ["k3"]

    page = streams.get_records(ShardIterator=iterator("TRIM_HORIZON"), Limit=2)
    assert [r["dynamodb"]["Keys"]["pk"]["S"] for r in page["Records"]] == ["k0", "k1"]
    second = page["Records"][1]["dynamodb"]["SequenceNumber"]
    at = streams.get_records(ShardIterator=iterator("AT_SEQUENCE_NUMBER", second), Limit=1)
    assert at["Records"][0]["dynamodb"]["SequenceNumber"] == second
    after = streams.get_records(ShardIterator=iterator("AFTER_SEQUENCE_NUMBER", second), Limit=1)
    assert after["Records"][0]["dynamodb"]["Keys"] == {"pk": {"S": "k2"}}
    # An open shard always hands out a next iterator, even on an empty read.
    rest = streams.get_records(ShardIterator=after["NextShardIterator"])
    empty = streams.get_records(ShardIterator=rest["NextShardIterator"])
    assert empty["Records"] == [] and "NextShardIterator" in empty

    with pytest.raises(ClientError) as excinfo:
        streams.get_records(ShardIterator=iterator("TRIM_HORIZON"), Limit=1001)
    assert error_code(excinfo)[0] == "ValidationException"
    with pytest.raises(ClientError) as excinfo:
        streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="AT_SEQUENCE_NUMBER")
    assert error_code(excinfo)[0] == "ValidationException"
    with pytest.raises(ClientError) as excinfo:
        streams.get_records(ShardIterator="x" * 40)
    assert error_code(excinfo)[0] == "ValidationException"


def test_at_timestamp_iterators(store):
    """AT_TIMESTAMP (the botocore model's fifth iterator type, with Timestamp): a time before
    the records starts at the oldest (TRIM_HORIZON), the first record's own time starts at it,
    and a time in the future is a ValidationException. (Which record a time between records
    starts at is checked with a moved clock in store::engine::streams::page_tests.)"""
    client, streams = store.client(), streams_client(store.url)
    name, arn = streamed_table(client, "KEYS_ONLY")
    for i in range(3):
        client.put_item(TableName=name, Item={"pk": {"S": f"k{i}"}})
    shard = shards_of(streams, arn)[0]["ShardId"]

    def keys_from(timestamp):
        iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="AT_TIMESTAMP",
                                              Timestamp=timestamp)["ShardIterator"]
        page = streams.get_records(ShardIterator=iterator)
        assert "NextShardIterator" in page
        return [r["dynamodb"]["Keys"]["pk"]["S"] for r in page["Records"]]

    assert keys_from(datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)) == ["k0", "k1", "k2"]
    first = streams.get_records(ShardIterator=streams.get_shard_iterator(
        StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")["ShardIterator"], Limit=1)["Records"][0]
    assert keys_from(first["dynamodb"]["ApproximateCreationDateTime"]) == ["k0", "k1", "k2"]
    with pytest.raises(ClientError) as excinfo:
        streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="AT_TIMESTAMP",
                                   Timestamp=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1))
    assert error_code(excinfo)[0] == "ValidationException" and "in the future" in error_code(excinfo)[1]


def test_update_table_stream_rules(store):
    client, streams = store.client(), streams_client(store.url)
    name = create_table(client, next(names))
    assert "LatestStreamArn" not in client.describe_table(TableName=name)["Table"]
    with pytest.raises(ClientError) as excinfo:
        client.update_table(TableName=name, StreamSpecification={"StreamEnabled": False})
    assert error_code(excinfo) == ("ValidationException", f"Table has no stream to disable: TableName: {name}")
    with pytest.raises(ClientError) as excinfo:
        client.update_table(TableName=name, StreamSpecification={"StreamEnabled": True})
    assert error_code(excinfo)[0] == "ValidationException"
    first = client.update_table(TableName=name, StreamSpecification={
        "StreamEnabled": True, "StreamViewType": "OLD_IMAGE"})["TableDescription"]["LatestStreamArn"]
    for view_type in ("OLD_IMAGE", "NEW_IMAGE"):
        with pytest.raises(ClientError) as excinfo:
            client.update_table(TableName=name, StreamSpecification={"StreamEnabled": True,
                                                                       "StreamViewType": view_type})
        assert error_code(excinfo) == ("ValidationException",
                                       f"Table already has an enabled stream: TableName: {name}")
    client.put_item(TableName=name, Item={"pk": {"S": "before-disable"}})
    disabled = client.update_table(TableName=name, StreamSpecification={"StreamEnabled": False})["TableDescription"]
    assert "StreamSpecification" not in disabled
    assert disabled["LatestStreamArn"] == first
    assert streams.describe_stream(StreamArn=first)["StreamDescription"]["StreamStatus"] in ("DISABLING", "DISABLED")
    wait_for(lambda: streams.describe_stream(StreamArn=first)["StreamDescription"]["StreamStatus"] == "DISABLED",
             STATUS_DEADLINE_S, "the disabled stream to be DISABLED")
    client.put_item(TableName=name, Item={"pk": {"S": "while-disabled"}})
    assert [r["dynamodb"]["Keys"]["pk"]["S"] for r in read_all(streams, first)] == ["before-disable"]
    second = client.update_table(TableName=name, StreamSpecification={
        "StreamEnabled": True, "StreamViewType": "NEW_IMAGE"})["TableDescription"]["LatestStreamArn"]
    assert second != first
    client.delete_table(TableName=name)
    listed = {s["StreamArn"] for s in streams.list_streams(TableName=name)["Streams"]}
    assert listed == {first, second}
    wait_for(lambda: streams.describe_stream(StreamArn=second)["StreamDescription"]["StreamStatus"] == "DISABLED",
             STATUS_DEADLINE_S, "the deleted table's stream to be DISABLED")


def test_ttl_deletions_carry_the_service_identity(store):
    client, streams = store.client(), streams_client(store.url)
    name, arn = streamed_table(client, "NEW_AND_OLD_IMAGES")
    client.update_time_to_live(TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": "exp"})
    client.put_item(TableName=name, Item={"pk": {"S": "gone"}, "exp": {"N": str(int(time.time()) - 10)}})

    def removed():
        return [r for r in read_all(streams, arn) if r["eventName"] == "REMOVE"]

    records = wait_for(removed, TTL_DEADLINE_S, "the TTL deletion's stream record")
    assert records[0]["userIdentity"] == {"Type": "Service", "PrincipalId": "dynamodb.amazonaws.com"}
    assert records[0]["dynamodb"]["OldImage"]["pk"] == {"S": "gone"}


def test_shards_roll_over_with_parent_lineage(small_store):
    client, streams = small_store.client(), streams_client(small_store.url)
    name, arn = streamed_table(client, "KEYS_ONLY")
    for i in range(7):
        client.put_item(TableName=name, Item={"pk": {"S": f"k{i}"}})
    shards = shards_of(streams, arn)
    assert len(shards) == 3
    assert "ParentShardId" not in shards[0]
    for parent, child in zip(shards, shards[1:]):
        assert child["ParentShardId"] == parent["ShardId"]
        assert int(parent["SequenceNumberRange"]["EndingSequenceNumber"]) < \
            int(child["SequenceNumberRange"]["StartingSequenceNumber"])
    assert "EndingSequenceNumber" not in shards[2]["SequenceNumberRange"]
    # A closed shard's reader reaches its end: no next iterator.
    iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shards[0]["ShardId"],
                                          ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    page = streams.get_records(ShardIterator=iterator)
    assert len(page["Records"]) == 3 and "NextShardIterator" not in page
    assert [r["dynamodb"]["Keys"]["pk"]["S"] for r in read_all(streams, arn)] == [f"k{i}" for i in range(7)]


def test_retention_trims_old_records(small_store):
    client, streams = small_store.client(), streams_client(small_store.url)
    name, arn = streamed_table(client, "KEYS_ONLY")
    client.put_item(TableName=name, Item={"pk": {"S": "old"}})
    shard = shards_of(streams, arn)[0]["ShardId"]
    first = read_all(streams, arn)[0]["dynamodb"]["SequenceNumber"]
    stale = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]

    def trimmed():
        try:
            streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="AT_SEQUENCE_NUMBER",
                                       SequenceNumber=first)
            return False
        except ClientError as error:
            assert error.response["Error"]["Code"] == "TrimmedDataAccessException"
            return True

    wait_for(trimmed, TRIM_DEADLINE_S, "the record past retention trimmed")
    with pytest.raises(ClientError) as excinfo:
        streams.get_records(ShardIterator=stale)
    assert error_code(excinfo)[0] == "TrimmedDataAccessException"
    client.put_item(TableName=name, Item={"pk": {"S": "new"}})
    assert [r["dynamodb"]["Keys"]["pk"]["S"] for r in read_all(streams, arn)] == ["new"]


def test_records_survive_a_kill_and_numbering_continues(tmp_path_factory):
    store = started_store(tmp_path_factory, name="restarted")
    try:
        client, streams = store.client(), streams_client(store.url)
        name, arn = streamed_table(client, "NEW_IMAGE")
        client.put_item(TableName=name, Item={"pk": {"S": "before"}})
        before = read_all(streams, arn)
        shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
        held = streams.get_records(ShardIterator=streams.get_shard_iterator(
            StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")["ShardIterator"])["NextShardIterator"]
        store.kill()
        store.start()
        client, streams = store.client(), streams_client(store.url)
        client.put_item(TableName=name, Item={"pk": {"S": "after"}})
        records = read_all(streams, arn)
        # An iterator issued before the restart still reads on (the key it is signed with is kept).
        assert [r["dynamodb"]["Keys"]["pk"]["S"] for r in streams.get_records(ShardIterator=held)["Records"]] == ["after"]
        assert records[0] == before[0], "an acknowledged write's record survives SIGKILL"
        assert [r["dynamodb"]["Keys"]["pk"]["S"] for r in records] == ["before", "after"]
        assert int(records[1]["dynamodb"]["SequenceNumber"]) > int(records[0]["dynamodb"]["SequenceNumber"])
    finally:
        store.stop()


KILL_CYCLES = 3
KILL_WRITERS = 3
KILL_AFTER_S = (0.3, 1.5)


def test_kill_9_under_writers_leaves_each_committed_change_recorded_exactly_once(tmp_path_factory):
    """Records are written in the same commit as the change they describe: kill -9 under
    concurrent writers, a few times on the same data, and the stream must still show every
    change the table holds, once, in order, and no change it does not hold. Each writer increments a counter item and puts unique items; a counter's
    value is then the number of its committed increments, which its records must match."""
    rng = random.Random(SEED)
    print(f"SWITCHYARD_SEED={SEED}")
    store = started_store(tmp_path_factory, name="killed-streams")
    try:
        name, arn = streamed_table(store.client(), "NEW_AND_OLD_IMAGES")
        acked = set()
        for cycle in range(KILL_CYCLES):
            stop = threading.Event()

            def write(index, cycle=cycle):
                client = store.client(connect_timeout=2, read_timeout=10)
                sequence = 0
                try:
                    while not stop.is_set():
                        sequence += 1
                        client.update_item(TableName=name, Key={"pk": {"S": f"counter-{index}"}},
                                           UpdateExpression="ADD n :one",
                                           ExpressionAttributeValues={":one": {"N": "1"}})
                        key = f"c{cycle}-w{index}-{sequence}"
                        client.put_item(TableName=name, Item={"pk": {"S": key}, "pad": {"S": "x" * 300}})
                        acked.add(key)
                except Exception:  # the store died under this request: unacknowledged
                    return

            writers = [threading.Thread(target=write, args=(i,), daemon=True) for i in range(KILL_WRITERS)]
            for writer in writers:
                writer.start()
            wait_for(lambda: len(acked) > 20 * (cycle + 1), 30, "writes to flow")
            deadline = time.monotonic() + rng.uniform(*KILL_AFTER_S)
            while time.monotonic() < deadline:
                time.sleep(0.01)
            store.kill()
            stop.set()
            for writer in writers:
                writer.join(timeout=30)
                assert not writer.is_alive(), "a writer did not notice the store died"
            store.start()
            client = store.client()
            items, start = {}, None
            while True:
                page = client.scan(TableName=name, ConsistentRead=True, **({"ExclusiveStartKey": start} if start else {}))
                items.update((i["pk"]["S"], i) for i in page["Items"])
                start = page.get("LastEvaluatedKey")
                if not start:
                    break
            records = read_all(streams_client(store.url), arn)
            sequence_numbers = [int(r["dynamodb"]["SequenceNumber"]) for r in records]
            assert sequence_numbers == sorted(set(sequence_numbers)), f"cycle {cycle}: records repeated or out of order"
            per_key = collections.Counter(r["dynamodb"]["Keys"]["pk"]["S"] for r in records)
            missing = sorted(acked - per_key.keys())
            assert not missing, f"cycle {cycle}: acknowledged puts without a record: {missing[:5]}"
            assert per_key.keys() == items.keys(), (
                f"cycle {cycle}: records for changes the table does not hold: {sorted(per_key.keys() - items.keys())[:5]}, "
                f"items without records: {sorted(items.keys() - per_key.keys())[:5]}")
            for key, item in items.items():
                expected = int(item["n"]["N"]) if key.startswith("counter-") else 1
                assert per_key[key] == expected, f"cycle {cycle}: {key} holds {expected} changes, its records {per_key[key]}"
            print(f"cycle {cycle}: {len(records)} records, {len(items)} items")
    finally:
        store.stop()


def test_a_region_rebuilt_on_an_empty_data_directory_does_not_repeat_event_ids(tmp_path_factory):
    """A store on a new database numbers its streams and records from 1 again; its records'
    eventIDs (which DynamoDB documents as globally unique, and consumers deduplicate by) must
    still differ from the ones the wiped database served. Across a plain restart they stay."""
    store = started_store(tmp_path_factory, name="rebuilt")
    try:
        client, streams = store.client(), streams_client(store.url)
        name, arn = streamed_table(client, "NEW_IMAGE")
        client.put_item(TableName=name, Item={"pk": {"S": "one"}})
        before = read_all(streams, arn)
        store.stop()
        store.start()
        assert read_all(streams_client(store.url), arn) == before, "the same database serves the same ids"
        store.stop()
        shutil.rmtree(store.data_dir)
        store.data_dir.mkdir()
        store.start()
        client, streams = store.client(), streams_client(store.url)
        create_table(client, name, StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"})
        client.put_item(TableName=name, Item={"pk": {"S": "one"}})
        after = read_all(streams, client.describe_table(TableName=name)["Table"]["LatestStreamArn"])
        # The same numbers as before the wipe (the new database counts from 1 again) ...
        assert [r["dynamodb"]["SequenceNumber"] for r in after] == [r["dynamodb"]["SequenceNumber"] for r in before]
        # ... but other events.
        assert after[0]["eventID"] != before[0]["eventID"]
    finally:
        store.stop()


# ---------------------------------------------------------------------------------------------
# Global tables: two regions

@contextlib.contextmanager
def two_regions(tmp_path):
    """us-east-1 and ap-south-1, each the other's peer, started; stopped on the way out."""
    from test_global_tables import KEY, Region, free_port
    from test_store_harness import require_binary

    require_binary()
    assert KEY
    regions = [Region(n, free_port(), tmp_path / n, []) for n in ["us-east-1", "ap-south-1"]]
    for region in regions:
        region.data_dir.mkdir()
        region.peers = [r for r in regions if r is not region]
    try:
        for region in regions:
            region.start()
        yield regions
    finally:
        for region in regions:
            region.stop()


def test_global_table_streams_in_two_regions(tmp_path):
    with two_regions(tmp_path) as regions:
        east, south = regions
        client = east.client()
        client.create_table(TableName="orders", BillingMode="PAY_PER_REQUEST",
                            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}])
        client.update_table(TableName="orders", ReplicaUpdates=[{"Create": {"RegionName": "ap-south-1"}}])
        arns = {}
        for region in regions:
            table = wait_for(lambda: _describe(region), REPLICATION_DEADLINE_S, f"the replica in {region.name}")
            assert table["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
            assert table["LatestStreamArn"].startswith(f"arn:aws:dynamodb:{region.name}:")
            arns[region.name] = table["LatestStreamArn"]
        with pytest.raises(ClientError) as excinfo:
            client.update_table(TableName="orders", StreamSpecification={"StreamEnabled": False})
        code, message = error_code(excinfo)
        assert code == "ValidationException" and "not allowed" in message and "Global Table" in message
        with pytest.raises(ClientError) as excinfo:
            client.update_table(TableName="orders",
                                StreamSpecification={"StreamEnabled": True, "StreamViewType": "KEYS_ONLY"})
        assert "already has an enabled stream" in error_code(excinfo)[1]

        east.client().put_item(TableName="orders", Item={"id": {"S": "from-east"}, "n": {"N": "1"}})
        south.client().put_item(TableName="orders", Item={"id": {"S": "from-south"}, "n": {"N": "2"}})
        expected = [("INSERT", "from-east"), ("INSERT", "from-south")]
        for region in regions:
            streams = streams_client(region.url, region.name)

            def keys(streams=streams, region=region):
                records = read_all(streams, arns[region.name])
                seen = sorted((r["eventName"], r["dynamodb"]["Keys"]["id"]["S"]) for r in records)
                return seen if len(seen) >= 2 else None

            seen = wait_for(keys, REPLICATION_DEADLINE_S, f"both writes in {region.name}'s stream")
            assert seen == expected, f"{region.name}: every applied write exactly once"
            for record in read_all(streams, arns[region.name]):
                assert record["awsRegion"] == region.name
                assert "NewImage" in record["dynamodb"]

        # A change of an item another region wrote: in east its OldImage is the replicated item,
        # in south the item south stored itself (copied from its stored form); the same images.
        east.client().put_item(TableName="orders", Item={"id": {"S": "from-south"}, "n": {"N": "3"}})
        for region in regions:
            streams = streams_client(region.url, region.name)

            def modify(streams=streams, region=region):
                records = [r for r in read_all(streams, arns[region.name]) if r["eventName"] == "MODIFY"]
                return records or None

            records = wait_for(modify, REPLICATION_DEADLINE_S, f"the MODIFY in {region.name}'s stream")
            assert len(records) == 1, records
            change = records[0]["dynamodb"]
            assert change["OldImage"] == {"id": {"S": "from-south"}, "n": {"N": "2"}}, region.name
            assert change["NewImage"] == {"id": {"S": "from-south"}, "n": {"N": "3"}}, region.name
            assert change["Keys"] == {"id": {"S": "from-south"}}
        # eventID is globally unique (DynamoDB Streams' Record): the regions number their
        # streams and records alike, yet two regions' records are different events.
        ids = [r["eventID"] for region in regions
               for r in read_all(streams_client(region.url, region.name), arns[region.name])]
        assert len(ids) == 6 and len(set(ids)) == len(ids), ids


def test_a_replica_created_again_streams_into_a_stream_of_its_own(tmp_path):
    """A replica deleted and created again gets a new stream in its region and records the
    writes it applies there (it used to take the other region's stream label, which named its
    earlier replica's stream, disabled and kept: the writes were applied, never recorded).
    TTL deletes carry the TTL service's userIdentity in the region that expired the item only,
    as AWS documents for global tables ("won't be set in other regions when the delete is
    replicated")."""
    with two_regions(tmp_path) as regions:
        east, south = regions
        client = east.client()
        client.create_table(TableName="orders", BillingMode="PAY_PER_REQUEST",
                            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}])
        client.update_time_to_live(TableName="orders",
                                   TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires"})
        streams = {region.name: streams_client(region.url, region.name) for region in regions}

        def replicas_active():
            replicas = client.describe_table(TableName="orders")["Table"].get("Replicas", [])
            return len(replicas) == 2 and all(r["ReplicaStatus"] == "ACTIVE" for r in replicas)

        def keys_in(region, arn):
            return [(r["eventName"], r["dynamodb"]["Keys"]["id"]["S"]) for r in read_all(streams[region.name], arn)]

        client.update_table(TableName="orders", ReplicaUpdates=[{"Create": {"RegionName": south.name}}])
        wait_for(replicas_active, REPLICATION_DEADLINE_S, "the replica in ap-south-1")
        first = wait_for(lambda: _describe(south), REPLICATION_DEADLINE_S, "the replica's stream")["LatestStreamArn"]
        client.put_item(TableName="orders", Item={"id": {"S": "first"}})
        client.put_item(TableName="orders", Item={"id": {"S": "expired"}, "expires": {"N": str(int(time.time()) - 10)}})
        arns = {east.name: _describe(east)["LatestStreamArn"], south.name: first}
        for region in regions:
            def removed(region=region):
                records = read_all(streams[region.name], arns[region.name])
                return [r for r in records if r["eventName"] == "REMOVE"] or None

            remove = wait_for(removed, REPLICATION_DEADLINE_S, f"the TTL delete in {region.name}'s stream")
            assert [r["dynamodb"]["Keys"] for r in remove] == [{"id": {"S": "expired"}}]
            if region is east:
                assert remove[0]["userIdentity"] == {"PrincipalId": "dynamodb.amazonaws.com", "Type": "Service"}
            else:
                assert "userIdentity" not in remove[0], remove[0]

        client.update_table(TableName="orders", ReplicaUpdates=[{"Delete": {"RegionName": south.name}}])
        wait_for(lambda: not client.describe_table(TableName="orders")["Table"].get("Replicas"),
                 REPLICATION_DEADLINE_S, "the replica's delete")
        client.update_table(TableName="orders", ReplicaUpdates=[{"Create": {"RegionName": south.name}}])
        wait_for(replicas_active, REPLICATION_DEADLINE_S, "the replica created again")
        second = wait_for(lambda: _describe(south), REPLICATION_DEADLINE_S, "the new replica's stream")["LatestStreamArn"]
        assert second != first and second.startswith("arn:aws:dynamodb:ap-south-1:")
        client.put_item(TableName="orders", Item={"id": {"S": "second"}})
        seen = wait_for(lambda: ("INSERT", "second") in keys_in(south, second) and keys_in(south, second),
                        REPLICATION_DEADLINE_S, "the write in the new replica's stream")
        assert seen.count(("INSERT", "second")) == 1, seen
        assert streams[south.name].describe_stream(StreamArn=first)["StreamDescription"]["StreamStatus"] in (
            "DISABLING", "DISABLED")
        assert ("INSERT", "second") not in keys_in(south, first)


class HeldLink:
    """A TCP relay to a region that holds every connection until released: the requests a
    region sends through it are in flight for as long as the test needs. `arrived` is set when
    a request for `path` comes (no connection completes a request before the release, so none
    is reused: each request opens its own and is seen first on it)."""

    def __init__(self, target_port, path):
        import socket
        import threading

        self.arrived, self.released = threading.Event(), threading.Event()
        self.target_port, self.path = target_port, path.encode()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client):
        import socket
        import threading

        head = b""
        try:
            while b"\r\n" not in head and len(head) < 65536:
                data = client.recv(65536)
                if not data:
                    break
                head += data
            if self.path in head.split(b"\r\n", 1)[0]:
                self.arrived.set()
            self.released.wait()
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            upstream.sendall(head)
        except OSError:
            client.close()
            return
        threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
        self._pipe(client, upstream)

    @staticmethod
    def _pipe(source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(2)
                except OSError:
                    pass

    def close(self):
        self.released.set()
        self.listener.close()


def test_a_stream_disabled_while_a_replica_is_being_created_is_enabled_again(tmp_path):
    """UpdateTable disabling the stream of a table not yet global, committed while that table's
    first replica was being created (its request in flight to the other region): the table ends
    global with an enabled stream that records its writes (it used to end global without one,
    its writes never recorded in its region)."""
    import threading

    from test_global_tables import Region, free_port
    from test_store_harness import require_binary

    require_binary()
    east = Region("us-east-1", free_port(), tmp_path / "us-east-1", [])
    south = Region("ap-south-1", free_port(), tmp_path / "ap-south-1", [east])
    link = HeldLink(south.port, "/replication/v1/table")

    class HeldSouth:
        name, url = south.name, f"http://127.0.0.1:{link.port}"

    east.peers = [HeldSouth]
    for region in (east, south):
        region.data_dir.mkdir()
    try:
        east.start()
        south.start()
        client = east.client()
        client.create_table(TableName="orders", BillingMode="PAY_PER_REQUEST",
                            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"})
        answers = {}

        def create_replica():
            answers["create"] = east.client().update_table(
                TableName="orders", ReplicaUpdates=[{"Create": {"RegionName": south.name}}])

        creating = threading.Thread(target=create_replica)
        creating.start()
        assert link.arrived.wait(REPLICATION_DEADLINE_S), "the replica's creation reaching ap-south-1"
        # Not global yet in us-east-1: the disable is taken.
        client.update_table(TableName="orders", StreamSpecification={"StreamEnabled": False})
        link.released.set()
        creating.join(REPLICATION_DEADLINE_S)
        assert "create" in answers
        table = client.describe_table(TableName="orders")["Table"]
        assert sorted(r["RegionName"] for r in table["Replicas"]) == ["ap-south-1", "us-east-1"]
        assert table["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"}
        client.put_item(TableName="orders", Item={"id": {"S": "recorded"}})
        streams = streams_client(east.url, east.name)
        records = read_all(streams, table["LatestStreamArn"])
        assert [(r["eventName"], r["dynamodb"]["Keys"]) for r in records] == [("INSERT", {"id": {"S": "recorded"}})]
        with pytest.raises(ClientError) as excinfo:
            client.update_table(TableName="orders", StreamSpecification={"StreamEnabled": False})
        assert "not allowed" in error_code(excinfo)[1]
    finally:
        link.close()
        for region in (east, south):
            region.stop()


def _describe(region):
    try:
        table = region.client().describe_table(TableName="orders")["Table"]
    except ClientError:
        return None
    return table if "LatestStreamArn" in table else None


def describe_filtered(store, arn, shard_filter):
    """DescribeStream with a ShardFilter, sent raw: older botocore models lack the parameter."""
    return store.raw(None, {"StreamArn": arn, "ShardFilter": shard_filter},
                     headers={"X-Amz-Target": "DynamoDBStreams_20120810.DescribeStream"})


def test_shard_filter_lists_a_shards_children(small_store):
    client, streams = small_store.client(), streams_client(small_store.url)
    name, arn = streamed_table(client, "KEYS_ONLY")
    for i in range(4):
        client.put_item(TableName=name, Item={"pk": {"S": f"k{i}"}})
    shards = shards_of(streams, arn)
    first, second = shards[:2]
    status, children = describe_filtered(small_store, arn, {"Type": "CHILD_SHARDS", "ShardId": first["ShardId"]})
    assert status == 200, children
    assert [s["ShardId"] for s in children["StreamDescription"]["Shards"]] == [second["ShardId"]]
    assert children["StreamDescription"]["StreamViewType"] == "KEYS_ONLY"
    assert children["StreamDescription"]["TableName"] == name
    status, none = describe_filtered(small_store, arn, {"Type": "CHILD_SHARDS", "ShardId": shards[-1]["ShardId"]})
    assert status == 200 and none["StreamDescription"]["Shards"] == [], none
    for shard_filter, field in [
        ({"Type": "PARENT_SHARDS", "ShardId": first["ShardId"]}, "shardFilter.type"),
        ({"ShardId": first["ShardId"]}, "shardFilter.type"),
        ({"Type": "CHILD_SHARDS", "ShardId": "qwerty"}, "shardFilter.shardId"),
        ({"Type": "CHILD_SHARDS"}, "shardFilter.shardId"),
    ]:
        status, error = describe_filtered(small_store, arn, shard_filter)
        assert status == 400 and error["__type"].endswith("ValidationException"), (shard_filter, error)
        assert field in error["message"], (shard_filter, error)


def test_an_empty_shard_takes_iterators_at_its_start_and_pages_continue_past_unknown_ids(store):
    client, streams = store.client(), streams_client(store.url)
    name, arn = streamed_table(client, "KEYS_ONLY")
    wait_for(lambda: streams.describe_stream(StreamArn=arn)["StreamDescription"]["StreamStatus"] == "ENABLED",
             STATUS_DEADLINE_S, "the stream to be enabled")
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]
    start = shard["SequenceNumberRange"]["StartingSequenceNumber"]
    at = streams.get_shard_iterator(StreamArn=arn, ShardId=shard["ShardId"],
                                    ShardIteratorType="AT_SEQUENCE_NUMBER", SequenceNumber=start)["ShardIterator"]
    client.put_item(TableName=name, Item={"pk": {"S": "first"}})
    records = streams.get_records(ShardIterator=at)["Records"]
    assert [r["dynamodb"]["Keys"]["pk"]["S"] for r in records] == ["first"]
    # A start id past every shard (DynamoDB compares ids, it does not look them up) is an
    # empty page, not an error.
    page = streams.describe_stream(StreamArn=arn, ExclusiveStartShardId="shardId-" + "z" * 40)
    assert page["StreamDescription"]["Shards"] == []


@pytest.mark.parametrize("how", ["disable", "delete"])
def test_a_shard_closed_without_records_stays_listed_and_readable_to_its_end(store, how):
    """As DynamoDB keeps it: a stream disabled (or its table deleted) while its open shard has
    no record lists that shard closed, ending where it starts, and a reader's held iterator and
    a new one read its end (no records, no next iterator) rather than a trimmed shard."""
    client, streams = store.client(), streams_client(store.url)
    name, arn = streamed_table(client, "NEW_IMAGE")
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]
    held = streams.get_records(ShardIterator=streams.get_shard_iterator(
        StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON")["ShardIterator"])
    assert held["Records"] == [] and "NextShardIterator" in held, "an open shard pages on"
    if how == "disable":
        client.update_table(TableName=name, StreamSpecification={"StreamEnabled": False})
    else:
        client.delete_table(TableName=name)
    closed = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]
    start = shard["SequenceNumberRange"]["StartingSequenceNumber"]
    assert closed == [{"ShardId": shard["ShardId"],
                       "SequenceNumberRange": {"StartingSequenceNumber": start, "EndingSequenceNumber": start}}]
    end = streams.get_records(ShardIterator=held["NextShardIterator"])
    assert end["Records"] == [] and "NextShardIterator" not in end
    for kind in ("TRIM_HORIZON", "LATEST"):
        fresh = streams.get_shard_iterator(StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType=kind)
        page = streams.get_records(ShardIterator=fresh["ShardIterator"])
        assert page["Records"] == [] and "NextShardIterator" not in page, kind


def test_an_iterator_changed_by_its_holder_is_refused(store):
    """An iterator is signed: one whose issue time was moved (to never expire), or whose
    position or shard was changed, is not one the store issued."""
    import base64
    client, streams = store.client(), streams_client(store.url)
    name, arn = streamed_table(client, "KEYS_ONLY")
    client.put_item(TableName=name, Item={"pk": {"S": "a"}})
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    issued = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    assert len(streams.get_records(ShardIterator=issued)["Records"]) == 1
    # Shaped as DynamoDB's: the stream's ARN, `|`, a digit, `|`, then the rest.
    assert re.fullmatch(re.escape(arn) + r"\|\d\|[A-Za-z0-9_-]+", issued), issued
    rest = issued.rsplit("|", 1)[1]
    issued_ms, tail = base64.urlsafe_b64decode(rest + "=" * (-len(rest) % 4)).decode().split("|", 1)
    forged = base64.urlsafe_b64encode(f"9999999999999|{tail}".encode()).decode().rstrip("=")
    forged = issued.rsplit("|", 1)[0] + "|" + forged
    with pytest.raises(ClientError) as raised:
        streams.get_records(ShardIterator=forged)
    assert raised.value.response["Error"]["Code"] == "ValidationException"
    assert "Invalid ShardIterator" in raised.value.response["Error"]["Message"]
    # The ARN in the clear is covered by the MAC too: another stream's is refused.
    other, other_arn = streamed_table(client, "KEYS_ONLY")
    with pytest.raises(ClientError) as raised:
        streams.get_records(ShardIterator=issued.replace(arn, other_arn))
    assert "Invalid ShardIterator" in raised.value.response["Error"]["Message"]
    # GetRecords' next iterators have the same shape.
    page = streams.get_records(ShardIterator=issued)
    assert re.fullmatch(re.escape(arn) + r"\|\d\|[A-Za-z0-9_-]+", page["NextShardIterator"])


def test_another_accounts_stream_is_not_found(store):
    """The store's streams are in its account (000000000000, as its ARNs say): an ARN that is
    right but for the account names no stream here, as DynamoDB answers another account's."""
    client, streams = store.client(), streams_client(store.url)
    _, arn = streamed_table(client, "KEYS_ONLY")
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    foreign = arn.replace(":000000000000:", ":123456789012:")
    with pytest.raises(ClientError) as raised:
        streams.describe_stream(StreamArn=foreign)
    assert error_code(raised)[0] == "ResourceNotFoundException" and foreign in error_code(raised)[1]
    with pytest.raises(ClientError) as raised:
        streams.get_shard_iterator(StreamArn=foreign, ShardId=shard, ShardIteratorType="LATEST")
    assert error_code(raised)[0] == "ResourceNotFoundException"


def test_bad_start_members_are_named_in_their_errors(store):
    client = store.client()
    # botocore checks these lengths itself; a client that does not is what the store must meet.
    streams = boto3.client(
        "dynamodbstreams", region_name=REGION, endpoint_url=store.url,
        aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, parameter_validation=False),
    )
    _, arn = streamed_table(client, "KEYS_ONLY")
    with pytest.raises(ClientError) as raised:
        streams.describe_stream(StreamArn=arn, ExclusiveStartShardId="x")
    assert raised.value.response["Error"]["Code"] == "ValidationException"
    assert "'exclusiveStartShardId'" in raised.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as raised:
        streams.list_streams(ExclusiveStartStreamArn="arn:aws:dynamodb:short")
    assert "'exclusiveStartStreamArn'" in raised.value.response["Error"]["Message"]


def test_request_members_are_checked_before_the_stream_is_looked_up(store):
    """A request with a bad member is a ValidationException whatever stream it names, as
    DynamoDB checks a request's members before it looks anything up: an unknown stream does
    not turn a bad iterator type, a missing SequenceNumber or a too-short start shard id into a
    ResourceNotFoundException."""
    client = store.client()
    streams = boto3.client(
        "dynamodbstreams", region_name=REGION, endpoint_url=store.url,
        aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, parameter_validation=False),
    )
    _, arn = streamed_table(client, "KEYS_ONLY")
    shard = shards_of(streams, arn)[0]["ShardId"]
    unknown = arn.rsplit("/stream/", 1)[0] + "/stream/2000-01-01T00:00:00.000"
    for kwargs, named in [
        ({"ShardIteratorType": "SOMEWHERE"}, "'shardIteratorType'"),
        ({"ShardIteratorType": "AT_SEQUENCE_NUMBER"}, "One or more parameter values were invalid: Invalid SequenceNumber: "
                                                      "a SequenceNumber is required"),
        ({"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": "12"}, "'sequenceNumber'"),
        ({"ShardIteratorType": "LATEST", "SequenceNumber": "0" * 21},
         "One or more parameter values were invalid: SequenceNumber should not be passed for this iterator type"),
        ({"ShardIteratorType": "AT_TIMESTAMP"}, "A Timestamp is required"),
    ]:
        for stream in (arn, unknown):
            with pytest.raises(ClientError) as raised:
                streams.get_shard_iterator(StreamArn=stream, ShardId=shard, **kwargs)
            assert error_code(raised)[0] == "ValidationException", (kwargs, stream, error_code(raised))
            assert named in error_code(raised)[1], (kwargs, error_code(raised))
    with pytest.raises(ClientError) as raised:
        streams.describe_stream(StreamArn=unknown, ExclusiveStartShardId="x")
    assert error_code(raised)[0] == "ValidationException" and "'exclusiveStartShardId'" in error_code(raised)[1]
    with pytest.raises(ClientError) as raised:
        streams.get_shard_iterator(StreamArn=unknown, ShardId=shard, ShardIteratorType="LATEST")
    assert error_code(raised)[0] == "ResourceNotFoundException"


def test_lengths_outside_the_model_are_answered_with_the_bound_named(store):
    """A member shorter or longer than the API model allows is a ValidationException in
    DynamoDB's generated words, naming the one bound it breaks (as DynamoDB and DynamoDB Local
    word them), before any stream is looked up; a sequence number of the right length that is
    not digits is refused naming what one is."""
    client = store.client()
    streams = boto3.client(
        "dynamodbstreams", region_name=REGION, endpoint_url=store.url,
        aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, parameter_validation=False),
    )
    _, arn = streamed_table(client, "KEYS_ONLY")
    shard = shards_of(streams, arn)[0]["ShardId"]

    def refused(call, **kwargs):
        with pytest.raises(ClientError) as raised:
            call(**kwargs)
        code, message = error_code(raised)
        assert code == "ValidationException", (kwargs, code, message)
        return message

    at = dict(StreamArn=arn, ShardId=shard, ShardIteratorType="AT_SEQUENCE_NUMBER")
    for kwargs, tail in [
        (dict(at, SequenceNumber="1" * 20), "at 'sequenceNumber' failed to satisfy constraint: "
                                            "Member must have length greater than or equal to 21"),
        (dict(at, SequenceNumber="1" * 41), "at 'sequenceNumber' failed to satisfy constraint: "
                                            "Member must have length less than or equal to 40"),
        (dict(at, ShardId="shardId-1"), "at 'shardId' failed to satisfy constraint: "
                                        "Member must have length greater than or equal to 28"),
        (dict(at, ShardId="s" * 66), "at 'shardId' failed to satisfy constraint: "
                                     "Member must have length less than or equal to 65"),
        (dict(at, StreamArn="arn:aws:dynamodb:short"), "at 'streamArn' failed to satisfy constraint: "
                                                       "Member must have length greater than or equal to 37"),
    ]:
        message = refused(streams.get_shard_iterator, **kwargs)
        assert message.startswith("1 validation error detected: Value '") and message.endswith(tail), message
    message = refused(streams.get_shard_iterator, **dict(at, SequenceNumber="x" * 21))
    assert message.startswith("Invalid SequenceNumber: '" + "x" * 21 + "' is not a sequence number"), message
    assert refused(streams.get_records, ShardIterator="").endswith(
        "at 'shardIterator' failed to satisfy constraint: Member must have length greater than or equal to 1")
    assert refused(streams.get_records, ShardIterator="x" * 2049).endswith(
        "at 'shardIterator' failed to satisfy constraint: Member must have length less than or equal to 2048")
    assert refused(streams.describe_stream, StreamArn=arn, ExclusiveStartShardId="s" * 66).endswith(
        "at 'exclusiveStartShardId' failed to satisfy constraint: Member must have length less than or equal to 65")
