"""Point-in-time recovery against the real binary with boto3: UpdateContinuousBackups and
DescribeContinuousBackups, RestoreTableToPointInTime to a time between writes, updates and
deletes (the exact items), DynamoDB's errors, and `kill -9` after the writes and right after a
restore answered (the undo log is written with the items, and the restore is done again)."""

import datetime
import math
import time

import pytest
from botocore.exceptions import ClientError

from test_store_harness import StoreProcess, create_table, error_of, require_binary, scan_all, wait_for

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]

DEADLINE_S = 60


def scan_items(client, table):
    return sorted(((i["pk"]["S"], i["n"]["N"]) for i in scan_all(client, table)))


def wait_active(client, table):
    def active():
        description = client.describe_table(TableName=table)["Table"]
        assert description["TableStatus"] in ("CREATING", "ACTIVE"), description
        return description if description["TableStatus"] == "ACTIVE" else None
    return wait_for(active, DEADLINE_S, f"{table} ACTIVE")


def pitr_description(client, table):
    return client.describe_continuous_backups(TableName=table)["ContinuousBackupsDescription"]["PointInTimeRecoveryDescription"]


def wait_restorable(client, table, moment):
    """Polls until LatestRestorableDateTime has passed `moment` (an aware datetime)."""
    return wait_for(lambda: pitr_description(client, table)["LatestRestorableDateTime"] > moment,
                    DEADLINE_S, f"{table} restorable to {moment}")


def put(client, table, pk, n):
    client.put_item(TableName=table, Item={"pk": {"S": pk}, "n": {"N": str(n)}})


def test_restore_to_a_point_between_writes_survives_kill_9(tmp_path):
    require_binary()
    store = StoreProcess(tmp_path / "data").start()
    try:
        client = store.client()
        create_table(client, "orders")
        put(client, "orders", "gone-later", 0)
        assert pitr_description(client, "orders") == {"PointInTimeRecoveryStatus": "DISABLED"}
        enabled = client.update_continuous_backups(
            TableName="orders",
            PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True, "RecoveryPeriodInDays": 7},
        )["ContinuousBackupsDescription"]
        assert enabled["ContinuousBackupsStatus"] == "ENABLED"
        described = enabled["PointInTimeRecoveryDescription"]
        assert described["PointInTimeRecoveryStatus"] == "ENABLED"
        assert described["RecoveryPeriodInDays"] == 7
        earliest = described["EarliestRestorableDateTime"]

        for n in range(10):
            put(client, "orders", f"k{n}", n)
        client.update_item(TableName="orders", Key={"pk": {"S": "k0"}}, UpdateExpression="SET n = :n",
                           ExpressionAttributeValues={":n": {"N": "100"}})
        # botocore sends RestoreDateTime in whole seconds: the next whole second after the writes.
        between = datetime.datetime.fromtimestamp(math.ceil(time.time()), datetime.timezone.utc)
        # Every later write is stamped after `between` once the server's latest restorable time
        # has passed it.
        wait_restorable(client, "orders", between)
        client.update_item(TableName="orders", Key={"pk": {"S": "k1"}}, UpdateExpression="SET n = :n",
                           ExpressionAttributeValues={":n": {"N": "101"}})
        client.delete_item(TableName="orders", Key={"pk": {"S": "k2"}})
        client.delete_item(TableName="orders", Key={"pk": {"S": "gone-later"}})
        put(client, "orders", "k3", 103)
        put(client, "orders", "new", 7)
        expected_between = sorted([("gone-later", "0"), ("k0", "100")] + [(f"k{n}", str(n)) for n in range(1, 10)])
        expected_now = sorted([("k0", "100"), ("k1", "101"), ("k3", "103"), ("new", "7")]
                              + [(f"k{n}", str(n)) for n in range(4, 10)])
        assert scan_items(client, "orders") == expected_now

        # kill -9 after the writes: the undo log committed with them.
        store.kill()
        store.start()
        client = store.client()
        described = pitr_description(client, "orders")
        assert described["PointInTimeRecoveryStatus"] == "ENABLED"
        assert described["EarliestRestorableDateTime"] == earliest
        restored = client.restore_table_to_point_in_time(
            SourceTableName="orders", TargetTableName="orders-between", RestoreDateTime=between,
        )["TableDescription"]
        assert restored["TableName"] == "orders-between"
        summary = restored["RestoreSummary"]
        assert summary["SourceTableArn"].endswith(":table/orders") and "SourceBackupArn" not in summary
        assert abs((summary["RestoreDateTime"] - between).total_seconds()) < 0.002
        # kill -9 right after the restore answered: the next start does it again.
        store.kill()
        store.start()
        client = store.client()
        wait_active(client, "orders-between")
        assert scan_items(client, "orders-between") == expected_between

        latest_moment = datetime.datetime.now(datetime.timezone.utc)
        wait_restorable(client, "orders", latest_moment)
        client.restore_table_to_point_in_time(SourceTableArn=client.describe_table(TableName="orders")["Table"]["TableArn"],
                                              TargetTableName="orders-latest", UseLatestRestorableTime=True)
        wait_active(client, "orders-latest")
        assert scan_items(client, "orders-latest") == expected_now
        assert pitr_description(client, "orders-latest") == {"PointInTimeRecoveryStatus": "DISABLED"}
        assert scan_items(client, "orders") == expected_now
    finally:
        store.stop()


def test_dynamodb_errors(tmp_path):
    require_binary()
    store = StoreProcess(tmp_path / "data").start()
    try:
        client = store.client()
        create_table(client, "plain")
        create_table(client, "kept")
        a_second_ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=1)
        with pytest.raises(ClientError) as excinfo:
            client.restore_table_to_point_in_time(SourceTableName="plain", TargetTableName="copy",
                                                  UseLatestRestorableTime=True)
        code, message, _ = error_of(excinfo)
        assert (code, message) == ("PointInTimeRecoveryUnavailableException",
                                   "Point in time recovery is not enabled for table 'plain'")
        with pytest.raises(ClientError) as excinfo:
            client.restore_table_to_point_in_time(SourceTableName="missing", TargetTableName="copy",
                                                  UseLatestRestorableTime=True)
        assert error_of(excinfo)[0] == "TableNotFoundException"
        with pytest.raises(ClientError) as excinfo:
            client.describe_continuous_backups(TableName="missing")
        assert error_of(excinfo)[0] == "TableNotFoundException"
        # botocore checks the range itself; the server's check is DynamoDB's.
        unchecked = store.client(parameter_validation=False)
        for days in (0, 36):
            with pytest.raises(ClientError) as excinfo:
                unchecked.update_continuous_backups(
                    TableName="kept",
                    PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True, "RecoveryPeriodInDays": days})
            code, message, _ = error_of(excinfo)
            assert code == "ValidationException" and "recoveryPeriodInDays" in message, message

        client.update_continuous_backups(TableName="kept",
                                         PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True})
        assert pitr_description(client, "kept")["RecoveryPeriodInDays"] == 35
        with pytest.raises(ClientError) as excinfo:
            client.restore_table_to_point_in_time(SourceTableName="kept", TargetTableName="plain",
                                                  UseLatestRestorableTime=True)
        assert error_of(excinfo)[0] == "TableAlreadyExistsException"
        # Before PITR was enabled, and in the future.
        for moment in (a_second_ago - datetime.timedelta(seconds=5),
                       datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)):
            with pytest.raises(ClientError) as excinfo:
                client.restore_table_to_point_in_time(SourceTableName="kept", TargetTableName="copy",
                                                      RestoreDateTime=moment)
            code, message, _ = error_of(excinfo)
            assert code == "InvalidRestoreTimeException", message
            assert "EarliestRestorableDateTime" in message
        # A number no time fits (1e300 s would saturate to u64::MAX ms and be named as that).
        status, answer = store.raw("RestoreTableToPointInTime",
                                   {"SourceTableName": "kept", "TargetTableName": "copy", "RestoreDateTime": 1e300})
        assert status == 400 and answer["__type"].endswith("ValidationException"), answer
        assert "RestoreDateTime 1e300 is not a time" in answer["message"], answer
        assert "copy" not in client.list_tables()["TableNames"]

        off = client.update_continuous_backups(TableName="kept",
                                               PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": False})
        assert off["ContinuousBackupsDescription"]["PointInTimeRecoveryDescription"] == {"PointInTimeRecoveryStatus": "DISABLED"}
        with pytest.raises(ClientError) as excinfo:
            client.restore_table_to_point_in_time(SourceTableName="kept", TargetTableName="copy",
                                                  UseLatestRestorableTime=True)
        assert error_of(excinfo)[0] == "PointInTimeRecoveryUnavailableException"
    finally:
        store.stop()


def test_store_keys_set_the_restorable_lag(tmp_path):
    require_binary()
    config = tmp_path / "switchyard.toml"
    config.write_text('[store]\npitr_restorable_lag_ms = 600000\npitr_undo_bytes_max = "1MiB"\n')
    store = StoreProcess(tmp_path / "data", args=["--config", str(config)]).start()
    try:
        client = store.client()
        create_table(client, "lagged")
        client.update_continuous_backups(TableName="lagged",
                                         PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True})
        before = datetime.datetime.now(datetime.timezone.utc)
        latest = pitr_description(client, "lagged")["LatestRestorableDateTime"]
        after = datetime.datetime.now(datetime.timezone.utc)
        lag = datetime.timedelta(minutes=10)
        assert before - lag - datetime.timedelta(seconds=1) <= latest <= after - lag + datetime.timedelta(seconds=1)
        # Ten minutes back is before PITR was enabled: nothing is restorable yet.
        with pytest.raises(ClientError) as excinfo:
            client.restore_table_to_point_in_time(SourceTableName="lagged", TargetTableName="lagged-copy",
                                                  UseLatestRestorableTime=True)
        assert error_of(excinfo)[0] == "InvalidRestoreTimeException"
    finally:
        store.stop()
