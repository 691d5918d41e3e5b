"""A global table's billing mode and write capacity follow it across its replicas, as DynamoDB
global tables of version 2019.11.21 keep them the same in every replica (switching the capacity
mode in any region switches it for all; replicas and their global indexes have the same write
capacity), while read capacity stays each replica's own: two real `switchyard store` processes
(`two_regions`), boto3 clients. An UpdateTable that changes them in one region changes every
region before it answers; a region that is down makes it fail with an error that names it (the
table is then UPDATING where it was sent), and the store sends the change again by itself once
the region is back."""

import pytest
from botocore.exceptions import ClientError

from global_helpers import REPLICATION_DEADLINE_S, create_table, error_code, make_global, table_in, two_regions
from test_store_harness import wait_for

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]

TABLE = "carts"
INDEX = "by_shop"
GSI = {"IndexName": INDEX, "Projection": {"ProjectionType": "ALL"},
       "KeySchema": [{"AttributeName": "shop", "KeyType": "HASH"}]}


def global_table(east, south):
    """TABLE, on demand, with the global index INDEX, global over both regions."""
    create_table(east, TABLE, AttributeDefinitions=[{"AttributeName": "shop", "AttributeType": "S"}],
                 GlobalSecondaryIndexes=[GSI])
    make_global(east, south, TABLE)


def units(read, write):
    return {"ReadCapacityUnits": read, "WriteCapacityUnits": write}


def provision(region, read, write, index_read=None, index_write=None, **extra):
    """UpdateTable to PROVISIONED at `read`/`write`, the index at its own units (the table's
    when not given), as DynamoDB asks for every global index when a table becomes provisioned."""
    index = units(index_read or read, index_write or write)
    return region.client().update_table(
        TableName=TABLE, BillingMode="PROVISIONED", ProvisionedThroughput=units(read, write),
        GlobalSecondaryIndexUpdates=[{"Update": {"IndexName": INDEX, "ProvisionedThroughput": index}}], **extra)


def capacity(region):
    """What `region`'s DescribeTable says of the table's capacity: status, billing mode, the
    table's (read, write) units and the index's."""
    table = table_in(region, TABLE)
    mode = table.get("BillingModeSummary", {}).get("BillingMode", "PROVISIONED")
    pair = lambda throughput: (throughput["ReadCapacityUnits"], throughput["WriteCapacityUnits"])
    index = next(i for i in table["GlobalSecondaryIndexes"] if i["IndexName"] == INDEX)
    return table["TableStatus"], mode, pair(table["ProvisionedThroughput"]), pair(index["ProvisionedThroughput"])


def on_demand_since(region):
    return table_in(region, TABLE)["BillingModeSummary"]["LastUpdateToPayPerRequestDateTime"]


def test_billing_mode_and_write_capacity_follow_in_every_region_and_reads_stay_each_regions(tmp_path):
    with two_regions(tmp_path) as (east, south):
        global_table(east, south)
        for region in (east, south):
            assert capacity(region) == ("ACTIVE", "PAY_PER_REQUEST", (0, 0), (0, 0)), region.name

        # Provisioned from the replica's region: east has it when the call answers, with
        # south's read capacity too (it had none of its own while on demand).
        answer = provision(south, 5, 7)["TableDescription"]
        # UPDATING in the answer, as DynamoDB answers UpdateTable; done by then, so ACTIVE after.
        assert answer["TableStatus"] == "UPDATING"
        assert capacity(south) == ("ACTIVE", "PROVISIONED", (5, 7), (5, 7))
        assert capacity(east) == ("ACTIVE", "PROVISIONED", (5, 7), (5, 7))
        # Both show when the table was last on demand, the same (its creation).
        assert on_demand_since(east) == on_demand_since(south)

        # Read capacity is each region's own (DynamoDB's ProvisionedThroughputOverride).
        east.client().update_table(TableName=TABLE, ProvisionedThroughput=units(20, 7))
        assert capacity(east)[2] == (20, 7)
        assert capacity(south)[2] == (5, 7)
        # Write capacity follows; each region keeps its own reads.
        before = table_in(south, TABLE)["ProvisionedThroughput"]
        east.client().update_table(TableName=TABLE, ProvisionedThroughput=units(20, 9))
        assert capacity(east)[2] == (20, 9)
        assert capacity(south)[2] == (5, 9)
        # South records the increase it took, as for one asked for there.
        after = table_in(south, TABLE)["ProvisionedThroughput"]
        assert after["LastIncreaseDateTime"] > before.get("LastIncreaseDateTime", 0), (before, after)
        # So does a global index's.
        east.client().update_table(TableName=TABLE, GlobalSecondaryIndexUpdates=[
            {"Update": {"IndexName": INDEX, "ProvisionedThroughput": units(5, 11)}}])
        assert capacity(east)[3] == (5, 11)
        assert capacity(south)[3] == (5, 11)
        # With every region agreeing, DynamoDB's own check holds in each.
        with pytest.raises(ClientError) as excinfo:
            south.client().update_table(TableName=TABLE, ProvisionedThroughput=units(5, 9))
        code, message = error_code(excinfo)
        assert code == "ValidationException" and "will not change" in message, message

        # On demand again, from east: south too, with the same LastUpdateToPayPerRequestDateTime.
        east.client().update_table(TableName=TABLE, BillingMode="PAY_PER_REQUEST")
        for region in (east, south):
            assert capacity(region)[:2] == ("ACTIVE", "PAY_PER_REQUEST"), region.name
        assert on_demand_since(south) == on_demand_since(east)
        # And provisioned again from south, which now takes its own request's read capacity
        # (it had none while on demand), as east does.
        provision(south, 3, 4)
        assert capacity(east) == ("ACTIVE", "PROVISIONED", (3, 4), (3, 4))
        assert capacity(south) == ("ACTIVE", "PROVISIONED", (3, 4), (3, 4))


def test_a_replica_made_from_a_provisioned_table_has_its_capacity_then_follows_its_writes(tmp_path):
    with two_regions(tmp_path) as (east, south):
        create_table(east, TABLE, AttributeDefinitions=[{"AttributeName": "shop", "AttributeType": "S"}],
                     GlobalSecondaryIndexes=[GSI])
        provision(east, 6, 8, index_write=2)
        make_global(east, south, TABLE)
        assert capacity(south) == ("ACTIVE", "PROVISIONED", (6, 8), (6, 2))
        # South reads less than east (its own), then east raises the write capacity of the
        # table and of the index in one call: south has both, its reads its own still.
        south.client().update_table(TableName=TABLE, ProvisionedThroughput=units(2, 8))
        assert capacity(east)[2] == (6, 8)
        provision(east, 6, 12, index_write=3)
        assert capacity(east) == ("ACTIVE", "PROVISIONED", (6, 12), (6, 3))
        assert capacity(south) == ("ACTIVE", "PROVISIONED", (2, 12), (6, 3))
        # A replica's read capacity set from another region (DynamoDB's
        # ProvisionedThroughputOverride) is refused with the way to do it, not taken and dropped.
        with pytest.raises(ClientError) as excinfo:
            east.client().update_table(TableName=TABLE, ReplicaUpdates=[{"Update": {
                "RegionName": south.name, "ProvisionedThroughputOverride": {"ReadCapacityUnits": 9}}}])
        code, message = error_code(excinfo)
        assert code == "ValidationException", message
        assert "ProvisionedThroughputOverride" in message and south.name in message, message
        assert capacity(south) == ("ACTIVE", "PROVISIONED", (2, 12), (6, 3))


def test_a_region_down_during_a_capacity_change_fails_clearly_and_gets_it_once_back(tmp_path, monkeypatch):
    # The store sends unconfirmed changes again by itself, often here: the region that was down
    # gets the change without the call being sent again.
    monkeypatch.setenv("SWITCHYARD_ALIGN_RETRY_INTERVAL_MS", "300")
    with two_regions(tmp_path) as (east, south):
        global_table(east, south)
        south.stop()
        with pytest.raises(ClientError) as excinfo:
            provision(east, 5, 7)
        code, message = error_code(excinfo)
        assert code == "ServiceUnavailable", message
        assert "ap-south-1" in message and "again" in message and "write capacity" in message, message
        # Not silently apart: where it was sent, the table says it is still being updated.
        assert capacity(east) == ("UPDATING", "PROVISIONED", (5, 7), (5, 7))
        # Sent again while the region is still down: the same clear error, not "will not change".
        with pytest.raises(ClientError) as excinfo:
            east.client().update_table(TableName=TABLE, ProvisionedThroughput=units(5, 7))
        assert error_code(excinfo)[0] == "ServiceUnavailable"

        south.start()
        wait_for(lambda: capacity(south) == ("ACTIVE", "PROVISIONED", (5, 7), (5, 7)), REPLICATION_DEADLINE_S,
                 "the capacity in the region that was down")
        wait_for(lambda: capacity(east)[0] == "ACTIVE", REPLICATION_DEADLINE_S,
                 "the capacity change confirmed where it was made")
        assert capacity(east) == ("ACTIVE", "PROVISIONED", (5, 7), (5, 7))
        # Confirmed everywhere: DynamoDB's own check again.
        with pytest.raises(ClientError) as excinfo:
            east.client().update_table(TableName=TABLE, ProvisionedThroughput=units(5, 7))
        code, message = error_code(excinfo)
        assert code == "ValidationException" and "will not change" in message, message
