"""TTL follows a global table across its replicas, as it does in DynamoDB global tables of
version 2019.11.21: two real `switchyard store` processes (`two_regions`), boto3 clients.
A replica made after TTL was enabled has it and expires items on its own; UpdateTimeToLive on
a global table changes every region before it answers; a region that is down makes it fail
with an error that says so (the region it was sent to then says ENABLING), and the same call
sent again once the region is up finishes it."""

import time

import pytest
from botocore.exceptions import ClientError

from global_helpers import REPLICATION_DEADLINE_S, create_table, error_code, make_global, two_regions
from test_store_harness import wait_for
from test_streams import TTL_DEADLINE_S

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]

TABLE = "sessions"
# Seconds ahead an item's TTL is set when the test must see it in both regions before it
# expires (replication on loopback takes milliseconds; the TTL sweep runs every second).
EXPIRES_IN_S = 6


def ttl_of(region):
    return region.client().describe_time_to_live(TableName=TABLE)["TimeToLiveDescription"]


def set_ttl(region, enabled, attribute="exp"):
    return region.client().update_time_to_live(
        TableName=TABLE, TimeToLiveSpecification={"Enabled": enabled, "AttributeName": attribute})


def item_in(region, key):
    return region.client().get_item(TableName=TABLE, Key={"id": {"S": key}}, ConsistentRead=True).get("Item")


def put(region, key, expires_at):
    region.client().put_item(TableName=TABLE, Item={"id": {"S": key}, "exp": {"N": str(int(expires_at))}})


ENABLED = {"TimeToLiveStatus": "ENABLED", "AttributeName": "exp"}
DISABLED = {"TimeToLiveStatus": "DISABLED"}


def test_a_replica_made_after_ttl_was_enabled_has_it_and_expires_items(tmp_path):
    with two_regions(tmp_path) as (east, south):
        create_table(east, TABLE)
        set_ttl(east, True)
        put(east, "long-lived", time.time() + 3600)
        make_global(east, south, TABLE)
        assert ttl_of(south) == ENABLED
        assert ttl_of(east) == ENABLED
        wait_for(lambda: item_in(south, "long-lived"), REPLICATION_DEADLINE_S, "the backfilled item in the new replica")
        # Only the new replica's own TTL can expire an item while the other region is down.
        east.stop()
        put(south, "expired", time.time() + 3)
        put(south, "fresh", time.time() + 3600)
        assert item_in(south, "expired") is not None
        wait_for(lambda: item_in(south, "expired") is None, TTL_DEADLINE_S,
                 "the expired item deleted by the new replica's TTL")
        # Its TTL index was built from the backfilled items too: nothing unexpired goes.
        assert item_in(south, "fresh") is not None
        assert item_in(south, "long-lived") is not None
        east.start()
        wait_for(lambda: item_in(east, "fresh"), REPLICATION_DEADLINE_S, "south's writes in east")
        wait_for(lambda: item_in(east, "expired") is None, REPLICATION_DEADLINE_S, "the expiry in east")


def test_update_ttl_on_a_global_table_changes_every_region(tmp_path):
    with two_regions(tmp_path) as (east, south):
        create_table(east, TABLE)
        make_global(east, south, TABLE)
        assert ttl_of(east) == DISABLED and ttl_of(south) == DISABLED
        # Enabled from the replica's region: both regions have it when the call answers.
        assert set_ttl(south, True)["TimeToLiveSpecification"] == {"Enabled": True, "AttributeName": "exp"}
        assert ttl_of(south) == ENABLED
        assert ttl_of(east) == ENABLED
        # DynamoDB's own check holds in every region once they agree.
        for region in (east, south):
            with pytest.raises(ClientError) as excinfo:
                set_ttl(region, True)
            assert error_code(excinfo) == ("ValidationException", "TimeToLive is already enabled")

        # Items written in either region, seen in both, then expired in both.
        expires_at = time.time() + EXPIRES_IN_S
        put(east, "from-east", expires_at)
        put(south, "from-south", expires_at)
        put(east, "kept", time.time() + 3600)
        for region in (east, south):
            for key in ("from-east", "from-south", "kept"):
                wait_for(lambda region=region, key=key: item_in(region, key), REPLICATION_DEADLINE_S,
                         f"{key} in {region.name}")
        assert time.time() < expires_at, "replication took longer than the items' TTL; the check below proves nothing"
        for region in (east, south):
            for key in ("from-east", "from-south"):
                wait_for(lambda region=region, key=key: item_in(region, key) is None,
                         EXPIRES_IN_S + TTL_DEADLINE_S, f"{key} expired in {region.name}")
            assert item_in(region, "kept") is not None

        # Disabled from the other region: both again.
        set_ttl(east, False)
        assert ttl_of(east) == DISABLED
        assert ttl_of(south) == DISABLED
        with pytest.raises(ClientError) as excinfo:
            set_ttl(south, False)
        assert error_code(excinfo) == ("ValidationException", "TimeToLive is already disabled")
        # Enabled again on another attribute, and both regions name it.
        set_ttl(east, True, "expires_at")
        for region in (east, south):
            assert ttl_of(region) == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires_at"}


def test_a_region_down_during_update_ttl_fails_clearly_and_a_retry_finishes(tmp_path, monkeypatch):
    # The store's own resending is put off: the retry is what brings the change (the store
    # resending by itself: test_global_indexes.py).
    monkeypatch.setenv("SWITCHYARD_ALIGN_RETRY_INTERVAL_MS", str(3_600_000))
    with two_regions(tmp_path) as (east, south):
        create_table(east, TABLE)
        make_global(east, south, TABLE)
        south.stop()
        with pytest.raises(ClientError) as excinfo:
            set_ttl(east, True)
        code, message = error_code(excinfo)
        assert code == "ServiceUnavailable", message
        assert "ap-south-1" in message and "again" in message, message
        # Not silently apart: the region that took it says it is still being enabled.
        assert ttl_of(east) == {"TimeToLiveStatus": "ENABLING", "AttributeName": "exp"}
        # Sent again while the region is still down: the same clear error, not "already enabled".
        with pytest.raises(ClientError) as excinfo:
            set_ttl(east, True)
        assert error_code(excinfo)[0] == "ServiceUnavailable"
        # Another attribute is refused as DynamoDB refuses it while one is active.
        with pytest.raises(ClientError) as excinfo:
            set_ttl(east, True, "other")
        assert error_code(excinfo) == ("ValidationException",
                                       "TimeToLive is active on a different AttributeName: current AttributeName is exp")

        south.start()
        assert ttl_of(south) == DISABLED, "the region that was down missed the change"
        set_ttl(east, True)
        assert ttl_of(east) == ENABLED
        assert ttl_of(south) == ENABLED
        with pytest.raises(ClientError) as excinfo:
            set_ttl(east, True)
        assert error_code(excinfo) == ("ValidationException", "TimeToLive is already enabled")
        # And the region that was down now expires items itself.
        put(south, "expired", time.time() - 60)
        wait_for(lambda: item_in(south, "expired") is None, TTL_DEADLINE_S, "the expired item gone in ap-south-1")
        wait_for(lambda: item_in(east, "expired") is None, TTL_DEADLINE_S, "the expired item gone in us-east-1")
