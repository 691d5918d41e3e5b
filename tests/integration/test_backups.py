"""On-demand backups against the real binary with boto3: CreateBackup, DescribeBackup,
ListBackups, DeleteBackup, RestoreTableFromBackup (indexes, overrides, RestoreSummary), the
continuous-backup operations, DynamoDB's errors, a damaged backup refused, `--backup-dir`, and
`kill -9` in the middle of a backup and of a restore."""

import re
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from test_store_harness import (StoreProcess, create_table, error_of, require_binary, scan_all, store_fixture,
                                wait_for)

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]

ARN = re.compile(r"^arn:aws:dynamodb:us-east-1:\d{12}:table/([A-Za-z0-9_.-]+)/backup/\d{14}-[0-9a-f]{8}$")
DEADLINE_S = 60


store = store_fixture("backups")


def put_items(client, table, count, prefix="item", sort=True):
    for start in range(0, count, 25):
        requests = []
        for n in range(start, min(start + 25, count)):
            item = {"pk": {"S": f"{prefix}-{n % 7}" if sort else f"{prefix}-{n}"}, "n": {"N": str(n)}, "payload": {"S": "x" * (n % 100)},
                    "color": {"S": ["red", "green", "blue"][n % 3]}}
            if sort:
                item["sk"] = {"N": str(n)}
            requests.append({"PutRequest": {"Item": item}})
        client.batch_write_item(RequestItems={table: requests})


def wait_available(client, arn):
    def available():
        details = client.describe_backup(BackupArn=arn)["BackupDescription"]["BackupDetails"]
        assert details["BackupStatus"] in ("CREATING", "AVAILABLE"), details
        return details if details["BackupStatus"] == "AVAILABLE" else None
    return wait_for(available, DEADLINE_S, f"backup {arn} AVAILABLE")


def wait_active(client, table):
    def active():
        description = client.describe_table(TableName=table)["Table"]
        assert description["TableStatus"] in ("CREATING", "ACTIVE"), description["TableStatus"]
        return description if description["TableStatus"] == "ACTIVE" else None
    return wait_for(active, DEADLINE_S, f"table {table} ACTIVE")


def indexed_table(client, name):
    create_table(
        client, name, range_key=("sk", "N"), extra_attributes={"color": "S"},
        GlobalSecondaryIndexes=[{"IndexName": "by-color", "KeySchema": [{"AttributeName": "color", "KeyType": "HASH"}],
                                 "Projection": {"ProjectionType": "KEYS_ONLY"}}],
        LocalSecondaryIndexes=[{"IndexName": "by-pk-color", "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "color", "KeyType": "RANGE"}],
            "Projection": {"ProjectionType": "ALL"}}],
    )


def test_backup_is_a_snapshot_and_restores_with_its_indexes(store):
    client = store.client()
    indexed_table(client, "orders")
    put_items(client, "orders", 300)
    source = client.describe_table(TableName="orders")["Table"]

    details = client.create_backup(TableName="orders", BackupName="nightly")["BackupDetails"]
    assert ARN.match(details["BackupArn"]).group(1) == "orders"
    assert details["BackupName"] == "nightly" and details["BackupType"] == "USER"
    assert details["BackupStatus"] in ("CREATING", "AVAILABLE")
    # Writes after the backup was taken are not in it.
    client.put_item(TableName="orders", Item={"pk": {"S": "late"}, "sk": {"N": "1"}, "color": {"S": "red"}})
    client.delete_item(TableName="orders", Key={"pk": {"S": "item-0"}, "sk": {"N": "0"}})
    available = wait_available(client, details["BackupArn"])
    assert available["BackupSizeBytes"] == source["TableSizeBytes"]

    description = client.describe_backup(BackupArn=details["BackupArn"])["BackupDescription"]
    table = description["SourceTableDetails"]
    assert table["TableName"] == "orders" and table["TableArn"] == source["TableArn"]
    assert table["ItemCount"] == 300 and table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["KeySchema"] == source["KeySchema"]
    features = description["SourceTableFeatureDetails"]
    assert [i["IndexName"] for i in features["GlobalSecondaryIndexes"]] == ["by-color"]
    assert [i["IndexName"] for i in features["LocalSecondaryIndexes"]] == ["by-pk-color"]

    restored = client.restore_table_from_backup(TargetTableName="orders-restored",
                                                BackupArn=details["BackupArn"])["TableDescription"]
    assert restored["TableName"] == "orders-restored"
    assert restored["TableStatus"] in ("CREATING", "ACTIVE")
    assert restored["RestoreSummary"]["SourceBackupArn"] == details["BackupArn"]
    active = wait_active(client, "orders-restored")
    summary = active["RestoreSummary"]
    assert summary["RestoreInProgress"] is False and summary["SourceTableArn"] == source["TableArn"]
    # "Point in time or source backup time": the backup's creation time, not the restore's.
    assert summary["RestoreDateTime"] == details["BackupCreationDateTime"]
    assert restored["RestoreSummary"]["RestoreDateTime"] == details["BackupCreationDateTime"]
    assert active["ItemCount"] == 300 and active["TableSizeBytes"] == source["TableSizeBytes"]

    key = lambda item: (item["pk"]["S"], item["sk"]["N"])  # noqa: E731
    items = {key(i): i for i in scan_all(client, "orders-restored")}
    assert ("late", "1") not in items and ("item-0", "0") in items
    assert len(items) == 300
    assert items[("item-5", "12")] == {"pk": {"S": "item-5"}, "sk": {"N": "12"}, "n": {"N": "12"},
                                       "payload": {"S": "x" * 12}, "color": {"S": "red"}}
    reds = client.query(TableName="orders-restored", IndexName="by-color",
                        KeyConditionExpression="color = :c", ExpressionAttributeValues={":c": {"S": "red"}})
    assert reds["Count"] == 100
    local = client.query(TableName="orders-restored", IndexName="by-pk-color",
                         KeyConditionExpression="pk = :p AND color = :c",
                         ExpressionAttributeValues={":p": {"S": "item-1"}, ":c": {"S": "blue"}})
    assert local["Count"] == len([n for n in range(300) if n % 7 == 1 and n % 3 == 2])


def test_restore_overrides(store):
    client = store.client()
    indexed_table(client, "catalog")
    put_items(client, "catalog", 40)
    arn = client.create_backup(TableName="catalog", BackupName="first")["BackupDetails"]["BackupArn"]
    wait_available(client, arn)
    client.restore_table_from_backup(
        TargetTableName="catalog-provisioned", BackupArn=arn, BillingModeOverride="PROVISIONED",
        ProvisionedThroughputOverride={"ReadCapacityUnits": 7, "WriteCapacityUnits": 3},
        GlobalSecondaryIndexOverride=[{
            "IndexName": "by-n", "KeySchema": [{"AttributeName": "sk", "KeyType": "HASH"}],
            "Projection": {"ProjectionType": "ALL"},
            "ProvisionedThroughput": {"ReadCapacityUnits": 2, "WriteCapacityUnits": 2}}],
        LocalSecondaryIndexOverride=[],
    )
    active = wait_active(client, "catalog-provisioned")
    # Provisioned from its creation, like a table created provisioned: no BillingModeSummary.
    assert "BillingModeSummary" not in active, active.get("BillingModeSummary")
    assert active["ProvisionedThroughput"]["ReadCapacityUnits"] == 7
    assert [i["IndexName"] for i in active["GlobalSecondaryIndexes"]] == ["by-n"]
    assert "LocalSecondaryIndexes" not in active
    hit = client.query(TableName="catalog-provisioned", IndexName="by-n", KeyConditionExpression="sk = :n",
                       ExpressionAttributeValues={":n": {"N": "17"}})
    assert [i["n"]["N"] for i in hit["Items"]] == ["17"]

    with pytest.raises(ClientError) as excinfo:
        client.restore_table_from_backup(TargetTableName="catalog-bad", BackupArn=arn,
                                         BillingModeOverride="PROVISIONED")
    code, message, _ = error_of(excinfo)
    assert code == "ValidationException" and "ProvisionedThroughput" in message, message
    assert "catalog-bad" not in client.list_tables()["TableNames"]


def test_list_backups_filters_and_pages(store):
    client = store.client()
    for table in ("list-a", "list-b"):
        create_table(client, table)
        client.put_item(TableName=table, Item={"pk": {"S": "one"}})
    # One backup of a table at a time (BackupInUseException meanwhile, as DynamoDB answers).
    arns = []
    for n, t in enumerate(["list-a", "list-b", "list-a"]):
        arns.append(client.create_backup(TableName=t, BackupName=f"{t}-{n}")["BackupDetails"]["BackupArn"])
        wait_available(client, arns[-1])

    mine = client.list_backups(TableName="list-a")["BackupSummaries"]
    assert [b["BackupArn"] for b in mine] == [arns[0], arns[2]]
    assert all(b["TableName"] == "list-a" and b["BackupStatus"] == "AVAILABLE" and b["BackupSizeBytes"] > 0
               for b in mine)

    seen, start = [], None
    while True:
        kwargs = {"Limit": 1}
        if start:
            kwargs["ExclusiveStartBackupArn"] = start
        page = client.list_backups(**kwargs)
        assert len(page["BackupSummaries"]) <= 1
        seen += [b["BackupArn"] for b in page["BackupSummaries"]]
        start = page.get("LastEvaluatedBackupArn")
        if not start:
            break
    assert set(arns) <= set(seen) and len(seen) == len(set(seen))

    created = [b["BackupCreationDateTime"] for b in client.list_backups(TableName="list-b")["BackupSummaries"]]
    assert len(created) == 1
    inside = client.list_backups(TableName="list-b", TimeRangeLowerBound=created[0],
                                 TimeRangeUpperBound=created[0].timestamp() + 1)["BackupSummaries"]
    assert [b["BackupArn"] for b in inside] == [arns[1]]
    after = client.list_backups(TableName="list-b", TimeRangeLowerBound=created[0].timestamp() + 1)
    assert after["BackupSummaries"] == []
    assert client.list_backups(BackupType="SYSTEM")["BackupSummaries"] == []
    # botocore refuses Limit=0 itself; the store does too.
    status, answer = store.raw("ListBackups", {"Limit": 0})
    assert status == 400 and answer["__type"].endswith("#ValidationException"), answer


def test_errors_as_dynamodb_answers(store):
    client = store.client()
    create_table(client, "errs")
    missing_arn = "arn:aws:dynamodb:us-east-1:000000000000:table/errs/backup/01700000000000-0a1b2c3d"

    with pytest.raises(ClientError) as excinfo:
        client.create_backup(TableName="no-such-table", BackupName="bkp")
    assert error_of(excinfo)[0] == "TableNotFoundException"
    with pytest.raises(ClientError) as excinfo:
        client.create_backup(TableName="errs", BackupName="bad name!")
    assert error_of(excinfo)[0] == "ValidationException"
    for call in (lambda: client.describe_backup(BackupArn=missing_arn),
                 lambda: client.delete_backup(BackupArn=missing_arn),
                 lambda: client.restore_table_from_backup(TargetTableName="x-errs", BackupArn=missing_arn)):
        with pytest.raises(ClientError) as excinfo:
            call()
        assert error_of(excinfo)[0] == "BackupNotFoundException"
    with pytest.raises(ClientError) as excinfo:
        client.describe_backup(BackupArn="arn:aws:dynamodb:us-east-1:000000000000:table/errs/backup/../../x")
    assert error_of(excinfo)[0] == "ValidationException"

    arn = client.create_backup(TableName="errs", BackupName="bkp")["BackupDetails"]["BackupArn"]
    wait_available(client, arn)
    with pytest.raises(ClientError) as excinfo:
        client.restore_table_from_backup(TargetTableName="errs", BackupArn=arn)
    assert error_of(excinfo)[0] == "TableAlreadyExistsException"

    deleted = client.delete_backup(BackupArn=arn)["BackupDescription"]["BackupDetails"]
    assert deleted["BackupStatus"] == "DELETED" and deleted["BackupArn"] == arn
    with pytest.raises(ClientError) as excinfo:
        client.describe_backup(BackupArn=arn)
    assert error_of(excinfo)[0] == "BackupNotFoundException"
    assert arn not in [b["BackupArn"] for b in client.list_backups()["BackupSummaries"]]

    continuous = client.describe_continuous_backups(TableName="errs")["ContinuousBackupsDescription"]
    assert continuous["ContinuousBackupsStatus"] == "ENABLED"
    assert continuous["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "DISABLED"
    with pytest.raises(ClientError) as excinfo:
        client.describe_continuous_backups(TableName="no-such-table")
    assert error_of(excinfo)[0] == "TableNotFoundException"
    off = client.update_continuous_backups(TableName="errs",
                                           PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": False})
    assert off["ContinuousBackupsDescription"]["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "DISABLED"
    with pytest.raises(ClientError) as excinfo:
        client.restore_table_to_point_in_time(SourceTableName="errs", TargetTableName="errs-pitr",
                                              UseLatestRestorableTime=True)
    assert error_of(excinfo)[0] == "PointInTimeRecoveryUnavailableException"


def test_a_backup_arn_names_its_backup_whole(store):
    """A BackupArn with a backup's id under another table or region is not that backup: it is
    not found, and DeleteBackup with it leaves the backup alone."""
    client = store.client()
    create_table(client, "exact")
    put_items(client, "exact", 5, sort=False)
    arn = client.create_backup(TableName="exact", BackupName="bkp")["BackupDetails"]["BackupArn"]
    wait_available(client, arn)
    others = [arn.replace("table/exact/", "table/other-table/"),
              arn.replace(":us-east-1:", ":eu-west-1:"),
              arn.replace(":000000000000:", ":111111111111:")]
    assert all(other != arn for other in others), others
    for other in others:
        for call in (lambda: client.describe_backup(BackupArn=other),
                     lambda: client.delete_backup(BackupArn=other),
                     lambda: client.restore_table_from_backup(TargetTableName="exact-copy", BackupArn=other)):
            with pytest.raises(ClientError) as excinfo:
                call()
            assert error_of(excinfo)[0] == "BackupNotFoundException", (other, error_of(excinfo))
    assert "exact-copy" not in client.list_tables()["TableNames"]
    assert client.describe_backup(BackupArn=arn)["BackupDescription"]["BackupDetails"]["BackupStatus"] == "AVAILABLE"
    assert [b["BackupArn"] for b in client.list_backups(TableName="exact")["BackupSummaries"]] == [arn]


def available_backup(client, table, items):
    """A new table of `items` items and an AVAILABLE backup of it: (its ARN, its id)."""
    create_table(client, table)
    put_items(client, table, items, sort=False)
    arn = client.create_backup(TableName=table, BackupName="bkp")["BackupDetails"]["BackupArn"]
    wait_available(client, arn)
    return arn, arn.rsplit("/", 1)[1]


def test_damaged_backup_is_refused(store):
    client = store.client()
    arn, backup_id = available_backup(client, "fragile", 50)
    items = store.data_dir / "backups" / f"{backup_id}.items"
    data = bytearray(items.read_bytes())
    data[len(data) // 2] ^= 0x20
    items.write_bytes(bytes(data))
    with pytest.raises(ClientError) as excinfo:
        client.restore_table_from_backup(TargetTableName="fragile-restored", BackupArn=arn)
    code, message, _ = error_of(excinfo)
    assert code == "ValidationException" and "damaged" in message, message
    assert "fragile-restored" not in client.list_tables()["TableNames"]


def test_a_backup_whose_items_file_was_removed_is_listed_deleted(store):
    """A backup's items file removed from the backup directory by hand: the backup is DELETED
    in DescribeBackup and ListBackups (it said AVAILABLE), its restore is refused naming the
    file, and DeleteBackup removes what is left."""
    client = store.client()
    arn, backup_id = available_backup(client, "orphaned", 5)
    (store.data_dir / "backups" / f"{backup_id}.items").unlink()
    described = client.describe_backup(BackupArn=arn)["BackupDescription"]["BackupDetails"]
    assert described["BackupStatus"] == "DELETED", described
    listed = client.list_backups(TableName="orphaned")["BackupSummaries"]
    assert [(b["BackupArn"], b["BackupStatus"]) for b in listed] == [(arn, "DELETED")]
    with pytest.raises(ClientError) as excinfo:
        client.restore_table_from_backup(TargetTableName="orphaned-restored", BackupArn=arn)
    code, message, _ = error_of(excinfo)
    assert code == "ValidationException" and f"{backup_id}.items" in message and "removed" in message, message
    assert "orphaned-restored" not in client.list_tables()["TableNames"]
    client.delete_backup(BackupArn=arn)
    assert client.list_backups(TableName="orphaned")["BackupSummaries"] == []


def test_backup_dir_flag_and_kill_9_mid_backup_and_restore(tmp_path):
    require_binary()
    backup_dir = tmp_path / "elsewhere"
    store = StoreProcess(tmp_path / "data", args=["--backup-dir", str(backup_dir)]).start()
    try:
        client = store.client()
        create_table(client, "big", range_key=("sk", "N"))
        count = 3000
        put_items(client, "big", count)

        # Killed right after CreateBackup answered: afterwards the backup is whole or absent.
        arn = client.create_backup(TableName="big", BackupName="interrupted")["BackupDetails"]["BackupArn"]
        store.kill()
        store.start()
        client = store.client()
        assert not list(backup_dir.glob("*.partial")), list(backup_dir.iterdir())
        listed = client.list_backups(TableName="big")["BackupSummaries"]
        if listed:
            assert [b["BackupArn"] for b in listed] == [arn]
            assert client.describe_backup(BackupArn=arn)["BackupDescription"]["SourceTableDetails"]["ItemCount"] == count

        arn = client.create_backup(TableName="big", BackupName="whole")["BackupDetails"]["BackupArn"]
        wait_available(client, arn)
        backup_id = arn.rsplit("/", 1)[1]
        assert (backup_dir / f"{backup_id}.items").exists() and (backup_dir / f"{backup_id}.json").exists()
        assert not (Path(store.data_dir) / "backups" / f"{backup_id}.json").exists()

        # Killed right after the restore answered: after the restart the restore resumes, and
        # the table is never ACTIVE with only part of the items.
        client.restore_table_from_backup(TargetTableName="big-restored", BackupArn=arn)
        store.kill()
        store.start()
        client = store.client()
        active = wait_active(client, "big-restored")
        assert active["ItemCount"] == count
        assert len(scan_all(client, "big-restored")) == count
    finally:
        store.stop()
