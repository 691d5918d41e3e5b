"""Global secondary indexes follow a global table across its replicas, as in DynamoDB global
tables of version 2019.11.21: two real `switchyard store` processes (`two_regions`), boto3
clients. A new replica has the table's indexes, its items indexed; an UpdateTable that creates
or deletes a global index in one region does so in every region before it answers (each region
then fills it from its items in the background) (so after
a failover the application's queries on the index work in the other region); a region that is
down makes it fail with an error that names it (the index is then CREATING or DELETING where
it was sent), and the same UpdateTable sent again once the region is up finishes it."""

import pytest
from botocore.exceptions import ClientError

from global_helpers import REPLICATION_DEADLINE_S, create_table, error_code, make_global, table_in, two_regions
from test_store_harness import wait_for

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]

TABLE = "orders"
INDEX = "by_shop"
DEFINITIONS = [{"AttributeName": "shop", "AttributeType": "S"}, {"AttributeName": "day", "AttributeType": "S"}]
CREATE = {"Create": {"IndexName": INDEX, "Projection": {"ProjectionType": "ALL"},
                     "KeySchema": [{"AttributeName": "shop", "KeyType": "HASH"},
                                   {"AttributeName": "day", "KeyType": "RANGE"}]}}
DELETE = {"Delete": {"IndexName": INDEX}}


def create_index(region):
    return region.client().update_table(TableName=TABLE, AttributeDefinitions=DEFINITIONS,
                                        GlobalSecondaryIndexUpdates=[CREATE])


def delete_index(region):
    return region.client().update_table(TableName=TABLE, GlobalSecondaryIndexUpdates=[DELETE])


def index_in(region):
    """The index as `region`'s DescribeTable shows it, or None when it shows none."""
    indexes = table_in(region, TABLE).get("GlobalSecondaryIndexes", [])
    return next((index for index in indexes if index["IndexName"] == INDEX), None)


def status_in(region):
    index = index_in(region)
    return index and index["IndexStatus"]


def wait_active(region):
    """Waits until `region`'s index is filled from its items (DynamoDB's CREATING, Backfilling)."""
    wait_for(lambda: status_in(region) == "ACTIVE", REPLICATION_DEADLINE_S, f"the index ACTIVE in {region.name}")


def put(region, key, shop, day="2026-12-06"):
    region.client().put_item(TableName=TABLE, Item={"id": {"S": key}, "shop": {"S": shop}, "day": {"S": day}})


def item_in(region, key):
    return region.client().get_item(TableName=TABLE, Key={"id": {"S": key}}, ConsistentRead=True).get("Item")


def query(region, shop):
    """The ids of `shop`'s items by the index in `region`."""
    items = region.client().query(TableName=TABLE, IndexName=INDEX, KeyConditionExpression="shop = :s",
                                  ExpressionAttributeValues={":s": {"S": shop}})["Items"]
    return sorted(item["id"]["S"] for item in items)


def query_refused(region):
    with pytest.raises(ClientError) as excinfo:
        query(region, "lyon")
    code, message = error_code(excinfo)
    assert code == "ValidationException" and INDEX in message, message


def wait_replicated(regions, keys):
    for region in regions:
        for key in keys:
            wait_for(lambda region=region, key=key: item_in(region, key), REPLICATION_DEADLINE_S,
                     f"{key} in {region.name}")


def test_a_new_replica_has_the_tables_indexes_with_its_items_indexed(tmp_path):
    with two_regions(tmp_path) as (east, south):
        create_table(east, TABLE)
        put(east, "lyon-1", "lyon")
        create_index(east)
        put(east, "lyon-2", "lyon")
        put(east, "paris-1", "paris")
        east.client().put_item(TableName=TABLE, Item={"id": {"S": "no-shop"}, "day": {"S": "2026-12-06"}})
        make_global(east, south, TABLE)
        assert status_in(south) == "ACTIVE"
        assert index_in(south)["KeySchema"] == CREATE["Create"]["KeySchema"]
        # The backfill brings the items, and the new replica indexes them as they arrive.
        wait_replicated([south], ["lyon-1", "lyon-2", "paris-1", "no-shop"])
        assert query(south, "lyon") == ["lyon-1", "lyon-2"]
        assert query(south, "paris") == ["paris-1"]


def global_table_with_an_item_from_each(east, south):
    """TABLE, global over both regions, with one item written in each (replicated)."""
    create_table(east, TABLE)
    make_global(east, south, TABLE)
    put(east, "from-east", "lyon")
    put(south, "from-south", "lyon")
    wait_replicated([east, south], ["from-east", "from-south"])


def test_an_index_created_or_deleted_in_one_region_follows_in_every_region(tmp_path):
    with two_regions(tmp_path) as (east, south):
        global_table_with_an_item_from_each(east, south)

        # Created in east: south has it when the call answers, and both fill it from their
        # items in the background (CREATING, as DynamoDB shows it).
        created = create_index(east)["TableDescription"]
        assert [i["IndexName"] for i in created["GlobalSecondaryIndexes"]] == [INDEX]
        assert created["GlobalSecondaryIndexes"][0]["IndexStatus"] == "CREATING"
        assert created["GlobalSecondaryIndexes"][0]["Backfilling"] is False
        assert status_in(south) in ("CREATING", "ACTIVE")
        wait_active(east)
        wait_active(south)
        assert index_in(south)["KeySchema"] == CREATE["Create"]["KeySchema"]
        for region in (east, south):
            assert query(region, "lyon") == ["from-east", "from-south"], region.name
        # Writes after it, in either region, are indexed in both.
        put(south, "later-south", "lyon")
        put(east, "later-east", "lyon")
        for region in (east, south):
            wait_for(lambda region=region: len(query(region, "lyon")) == 4, REPLICATION_DEADLINE_S,
                     f"the later writes in {region.name}'s index")
            assert query(region, "lyon") == ["from-east", "from-south", "later-east", "later-south"]
        # With every region agreeing, DynamoDB's own check holds in each.
        for region in (east, south):
            with pytest.raises(ClientError) as excinfo:
                create_index(region)
            code, message = error_code(excinfo)
            assert code == "ValidationException" and "already exists" in message, message

        # Deleted in south: gone in east when the call answers.
        delete_index(south)
        assert index_in(south) is None
        assert index_in(east) is None
        query_refused(east)
        with pytest.raises(ClientError) as excinfo:
            delete_index(east)
        assert error_code(excinfo)[0] == "ResourceNotFoundException"

        # Created again, from south this time: in both again, with every item.
        create_index(south)
        wait_active(east)
        assert query(east, "lyon") == ["from-east", "from-south", "later-east", "later-south"]


def test_a_region_down_during_an_index_change_fails_clearly_and_a_retry_finishes(tmp_path, monkeypatch):
    # The store's own resending (every 10 s by default) is put off, so that the region that was
    # down is seen to have missed the change and the retry is what brings it there.
    monkeypatch.setenv("SWITCHYARD_ALIGN_RETRY_INTERVAL_MS", str(3_600_000))
    with two_regions(tmp_path) as (east, south):
        global_table_with_an_item_from_each(east, south)

        south.stop()
        with pytest.raises(ClientError) as excinfo:
            create_index(east)
        code, message = error_code(excinfo)
        assert code == "ServiceUnavailable", message
        assert "ap-south-1" in message and "again" in message and INDEX in message, message
        # Not silently apart: where it was sent, the index says it is still being created.
        assert status_in(east) == "CREATING"
        # Sent again while the region is still down: the same clear error, not "already exists".
        with pytest.raises(ClientError) as excinfo:
            create_index(east)
        assert error_code(excinfo)[0] == "ServiceUnavailable"
        # Another definition of the name is refused as DynamoDB refuses it.
        other = {"Create": {**CREATE["Create"], "KeySchema": [{"AttributeName": "day", "KeyType": "HASH"}]}}
        with pytest.raises(ClientError) as excinfo:
            east.client().update_table(TableName=TABLE, AttributeDefinitions=DEFINITIONS[1:],
                                       GlobalSecondaryIndexUpdates=[other])
        code, message = error_code(excinfo)
        assert code == "ValidationException" and "already exists" in message, message

        south.start()
        assert index_in(south) is None, "the region that was down missed the change"
        create_index(east)
        wait_active(east)
        wait_active(south)
        assert query(south, "lyon") == ["from-east", "from-south"]

        # The same for a delete.
        south.stop()
        with pytest.raises(ClientError) as excinfo:
            delete_index(east)
        code, message = error_code(excinfo)
        assert code == "ServiceUnavailable" and "ap-south-1" in message, message
        assert status_in(east) == "DELETING"
        query_refused(east)
        with pytest.raises(ClientError) as excinfo:
            delete_index(east)
        assert error_code(excinfo)[0] == "ServiceUnavailable", "sent again, not 'not found'"
        south.start()
        assert status_in(south) == "ACTIVE", "the region that was down missed the delete"
        delete_index(east)
        assert index_in(east) is None
        assert index_in(south) is None
        query_refused(south)


def test_a_region_back_after_missing_index_and_ttl_changes_gets_them_without_a_resend(tmp_path, monkeypatch):
    """The store sends unconfirmed changes again by itself (SWITCHYARD_ALIGN_RETRY_INTERVAL_MS,
    short here): once the region that was down is back, it gets the index (built from its
    items) and the TTL, and the region that took the calls says both are done."""
    monkeypatch.setenv("SWITCHYARD_ALIGN_RETRY_INTERVAL_MS", "300")
    with two_regions(tmp_path) as (east, south):
        global_table_with_an_item_from_each(east, south)
        south.stop()
        with pytest.raises(ClientError) as excinfo:
            create_index(east)
        assert error_code(excinfo)[0] == "ServiceUnavailable"
        with pytest.raises(ClientError) as excinfo:
            east.client().update_time_to_live(TableName=TABLE,
                                              TimeToLiveSpecification={"Enabled": True, "AttributeName": "exp"})
        assert error_code(excinfo)[0] == "ServiceUnavailable"
        assert status_in(east) == "CREATING"
        south.start()
        wait_for(lambda: status_in(south) == "ACTIVE", REPLICATION_DEADLINE_S, "the index in the region that was down")
        assert query(south, "lyon") == ["from-east", "from-south"]
        wait_for(lambda: status_in(east) == "ACTIVE", REPLICATION_DEADLINE_S, "the index confirmed where it was made")
        ttl = lambda region: region.client().describe_time_to_live(TableName=TABLE)["TimeToLiveDescription"]
        wait_for(lambda: ttl(south).get("TimeToLiveStatus") == "ENABLED", REPLICATION_DEADLINE_S,
                 "the TTL in the region that was down")
        wait_for(lambda: ttl(east).get("TimeToLiveStatus") == "ENABLED", REPLICATION_DEADLINE_S,
                 "the TTL confirmed where it was set")
        assert ttl(south) == {"TimeToLiveStatus": "ENABLED", "AttributeName": "exp"}
