"""Data directories written by earlier builds open with every item in place. The fixture
`tests/fixtures/store-data-fnv1a-keys.tgz` is a data directory written by the build before
per-table key hashes (its table's stored keys use plain FNV-1a): table `tbl` (pk S, sk N, GSI
`by_g` on g) holding 60 items, pk = s{i % 20}, sk = i, g = g{i % 3}."""

import tarfile
from pathlib import Path

import pytest

from test_store_harness import StoreProcess, require_binary

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "store-data-fnv1a-keys.tgz"

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]


def test_a_data_directory_from_before_per_table_key_hashes_reads_and_writes(tmp_path):
    require_binary()
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(tmp_path, filter="data")
    store = StoreProcess(tmp_path / "olddir")
    store.start()
    try:
        client = store.client()
        item = client.get_item(TableName="tbl", Key={"pk": {"S": "s3"}, "sk": {"N": "23"}})["Item"]
        assert item["g"] == {"S": "g2"}
        query = client.query(TableName="tbl", KeyConditionExpression="pk = :p",
                             ExpressionAttributeValues={":p": {"S": "s5"}})
        assert sorted(int(i["sk"]["N"]) for i in query["Items"]) == [5, 25, 45]
        by_g = client.query(TableName="tbl", IndexName="by_g", KeyConditionExpression="g = :g",
                            ExpressionAttributeValues={":g": {"S": "g1"}})
        assert by_g["Count"] == 20
        seen = []
        for segment in range(4):
            seen += [(i["pk"]["S"], i["sk"]["N"]) for i in
                     client.scan(TableName="tbl", Segment=segment, TotalSegments=4)["Items"]]
        assert len(seen) == len(set(seen)) == 60, "segments are disjoint and complete"
        # Writes land under the table's old hash: the overwrite replaces the item, no duplicate.
        client.put_item(TableName="tbl", Item={"pk": {"S": "s3"}, "sk": {"N": "23"}, "g": {"S": "new"}})
        assert client.get_item(TableName="tbl", Key={"pk": {"S": "s3"}, "sk": {"N": "23"}})["Item"]["g"] == {"S": "new"}
        assert client.scan(TableName="tbl", Select="COUNT")["Count"] == 60
        new_g = client.query(TableName="tbl", IndexName="by_g", KeyConditionExpression="g = :g",
                             ExpressionAttributeValues={":g": {"S": "new"}})
        assert new_g["Count"] == 1
    finally:
        store.stop()
