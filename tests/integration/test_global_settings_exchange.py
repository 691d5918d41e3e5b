"""A change of a setting that follows a global table (its TTL, a global index, its billing mode
and write capacity) reaches every replica even when the region that made it goes down for good
before all of them had it. Three real `switchyard store` processes: ap-south-1 makes the three
changes while eu-west-1 is down, so they reach us-east-1 only, and ap-south-1 is then killed.
Only the region that made a change sent it again, so eu-west-1 stayed apart for good; now each
align round compares the versions every region holds with each peer
(`/replication/v1/settings`), and us-east-1, holding newer ones than eu-west-1 once it is back,
sends them."""

import pytest
from botocore.exceptions import ClientError

from global_helpers import REPLICATION_DEADLINE_S, create_table, error_code, table_in
from test_global_tables import start_regions
from test_store_harness import wait_for

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]

TABLE = "carts"
INDEX = "by_shop"


def units(read, write):
    return {"ReadCapacityUnits": read, "WriteCapacityUnits": write}


def refused_as_unreachable(call):
    """`call` takes its change here and answers that a region did not get it."""
    with pytest.raises(ClientError) as excinfo:
        call()
    code, message = error_code(excinfo)
    assert code == "ServiceUnavailable" and "eu-west-1" in message, message


def settings_in(region):
    """What `region` says of the three settings: the TTL, the index (and its status), and the
    billing mode with the table's write units."""
    table = table_in(region, TABLE)
    ttl = region.client().describe_time_to_live(TableName=TABLE)["TimeToLiveDescription"]
    index = next((i for i in table.get("GlobalSecondaryIndexes", []) if i["IndexName"] == INDEX), None)
    mode = table.get("BillingModeSummary", {}).get("BillingMode", "PROVISIONED")
    return {
        "ttl": (ttl["TimeToLiveStatus"], ttl.get("AttributeName")),
        "index": index and index["IndexStatus"],
        "capacity": (mode, table["ProvisionedThroughput"]["WriteCapacityUnits"]),
    }


def test_a_change_whose_region_went_down_for_good_still_reaches_every_replica(tmp_path, monkeypatch):
    monkeypatch.setenv("SWITCHYARD_ALIGN_RETRY_INTERVAL_MS", "300")
    regions = start_regions(tmp_path)
    east, west, south = regions
    assert (east.name, west.name, south.name) == ("us-east-1", "eu-west-1", "ap-south-1")
    try:
        create_table(east, TABLE)
        east.client().update_table(TableName=TABLE, ReplicaUpdates=[{"Create": {"RegionName": west.name}},
                                                                    {"Create": {"RegionName": south.name}}])
        for region in (west, south):
            wait_for(lambda region=region: table_in(region, TABLE), REPLICATION_DEADLINE_S,
                     f"the replica in {region.name}")
        east.client().put_item(TableName=TABLE, Item={"id": {"S": "a"}, "shop": {"S": "lyon"}})
        for region in (west, south):
            wait_for(lambda region=region: region.client().get_item(TableName=TABLE, Key={"id": {"S": "a"}},
                                                                    ConsistentRead=True).get("Item"),
                     REPLICATION_DEADLINE_S, f"the item in {region.name}")
        before = settings_in(west)
        assert before == {"ttl": ("DISABLED", None), "index": None, "capacity": ("PAY_PER_REQUEST", 0)}

        west.stop()
        client = south.client()
        refused_as_unreachable(lambda: client.update_table(
            TableName=TABLE, BillingMode="PROVISIONED", ProvisionedThroughput=units(5, 7)))
        refused_as_unreachable(lambda: client.update_time_to_live(
            TableName=TABLE, TimeToLiveSpecification={"Enabled": True, "AttributeName": "exp"}))
        refused_as_unreachable(lambda: client.update_table(
            TableName=TABLE, AttributeDefinitions=[{"AttributeName": "shop", "AttributeType": "S"}],
            GlobalSecondaryIndexUpdates=[{"Create": {
                "IndexName": INDEX, "Projection": {"ProjectionType": "ALL"},
                "KeySchema": [{"AttributeName": "shop", "KeyType": "HASH"}],
                "ProvisionedThroughput": units(5, 7)}}]))
        changed = {"ttl": ("ENABLED", "exp"), "index": "ACTIVE", "capacity": ("PROVISIONED", 7)}

        def settled_in(region):
            settings = settings_in(region)
            # The region that took the changes keeps saying they are in transition while a
            # replica lacks them (DescribeTimeToLive ENABLING, the index CREATING): compare what.
            settings["ttl"] = (settings["ttl"][0].replace("ENABLING", "ENABLED"), settings["ttl"][1])
            settings["index"] = settings["index"] and "ACTIVE"
            return settings == changed

        wait_for(lambda: settled_in(east), REPLICATION_DEADLINE_S, "the changes in us-east-1")
        # The region that made them is gone for good, its resending with it.
        south.kill()

        west.start()
        wait_for(lambda: settings_in(west) == changed, REPLICATION_DEADLINE_S,
                 "ap-south-1's changes in eu-west-1, from us-east-1")
        # The index was built from the items eu-west-1 holds.
        items = west.client().query(TableName=TABLE, IndexName=INDEX, KeyConditionExpression="shop = :s",
                                    ExpressionAttributeValues={":s": {"S": "lyon"}})["Items"]
        assert [item["id"]["S"] for item in items] == ["a"]
    finally:
        for region in regions:
            region.stop()
