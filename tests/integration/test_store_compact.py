"""`switchyard store --compact`: the database file never shrinks while the store runs (redb
reuses freed pages inside it), so the space of deleted items goes back to the filesystem only
through an offline compaction; it keeps every item left, and refuses a running store."""

import subprocess

import pytest

from test_store_harness import BINARY, REGION, create_table, scan_all, started_store

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]

ITEMS = 1500
KEPT = 100
PAYLOAD = "x" * 4000


def compact(data_dir):
    return subprocess.run([str(BINARY), "store", "--region", REGION, "--data-dir", str(data_dir), "--compact"],
                          capture_output=True, text=True, timeout=300)


def test_compaction_gives_back_deleted_space_keeps_the_rest_and_refuses_a_running_store(tmp_path_factory):
    store = started_store(tmp_path_factory, "compact")
    try:
        client = store.client()
        create_table(client, "carts")
        for start in range(0, ITEMS, 25):
            client.batch_write_item(RequestItems={"carts": [
                {"PutRequest": {"Item": {"pk": {"S": f"c{i:05}"}, "v": {"S": PAYLOAD}}}}
                for i in range(start, min(start + 25, ITEMS))]})
        for start in range(KEPT, ITEMS, 25):
            client.batch_write_item(RequestItems={"carts": [
                {"DeleteRequest": {"Key": {"pk": {"S": f"c{i:05}"}}}} for i in range(start, min(start + 25, ITEMS))]})
        refused = compact(store.data_dir)
        assert refused.returncode != 0, refused.stdout
        assert "is another store running on this --data-dir" in refused.stderr, refused.stderr
    finally:
        store.stop()
    file = store.data_dir / "store.redb"
    before = file.stat().st_size
    done = compact(store.data_dir)
    assert done.returncode == 0, done.stderr
    assert "given back to the filesystem" in done.stdout, done.stdout
    after = file.stat().st_size
    assert after * 3 < before, (before, after, done.stdout)
    store.start()
    try:
        items = scan_all(store.client(), "carts")
        assert sorted(item["pk"]["S"] for item in items) == [f"c{i:05}" for i in range(KEPT)]
        assert all(item["v"]["S"] == PAYLOAD for item in items)
    finally:
        store.stop()
