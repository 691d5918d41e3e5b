"""A real full disk under the real binary: the data directory on a small tmpfs (needs root to
mount; skipped with the reason otherwise). Below the watermark writes are refused with a clear
error while deletes and reads go on, `/health` says read_only; when space returns writes resume
without a restart. Without a watermark the disk fills until a commit meets ENOSPC: that batch
fails, the store reopens its database by itself, and writes resume once there is room. No
acknowledged write is lost in either."""

import json
import os
import subprocess
import urllib.error
import urllib.request

import pytest
from botocore.exceptions import ClientError

from test_store_harness import StoreProcess, create_table, require_binary, wait_for

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]

FILESYSTEM_BYTES = 24 << 20
WATERMARK = "6MiB"
RESERVE = "2MiB"
# Taken at the start and given back later: "making room" as an operator would.
FILLER_BYTES = 8 << 20
ITEM_BYTES = 40_000
ITEMS_MAX = 2000
RECOVERY_DEADLINE_S = 30


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB tmpfs mounted under tmp_path, unmounted afterwards."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FILESYSTEM_BYTES}", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


class DiskStore(StoreProcess):
    def __init__(self, data_dir, extra):
        super().__init__(data_dir)
        self.extra = extra
        # The log stays off the small disk.
        self.log = data_dir.parent.parent / "store.log"

    def command(self):
        command, ready = super().command()
        ready = self.data_dir.parent.parent / "store.ready"
        command[command.index("--ready-file") + 1] = str(ready)
        # This test's own watermark replaces the suite's.
        at = command.index("--disk-free-bytes-min")
        del command[at:at + 2]
        return command + self.extra, ready


def health(store):
    try:
        with urllib.request.urlopen(store.url + "/health", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def fill(mount_point, name, size):
    with open(mount_point / name, "wb") as out:
        out.write(b"\0" * size)


def put(client, key, acknowledged):
    client.put_item(TableName="orders", Item={"pk": {"S": key}, "blob": {"S": key[:1] * ITEM_BYTES}})
    acknowledged[key] = key[:1] * ITEM_BYTES


def check_nothing_lost(client, acknowledged):
    for key, value in acknowledged.items():
        item = client.get_item(TableName="orders", Key={"pk": {"S": key}}, ConsistentRead=True).get("Item")
        if value is None:
            assert item is None, f"deleted item {key} came back"
        else:
            assert item is not None and item["blob"]["S"] == value, f"acknowledged item {key} lost"


def error_parts(error):
    """(code, message, HTTP status) of a botocore ClientError."""
    response = error.response
    return response["Error"]["Code"], response["Error"].get("Message", ""), response["ResponseMetadata"]["HTTPStatusCode"]


def write_until_refused(client, acknowledged, prefix):
    for i in range(ITEMS_MAX):
        try:
            put(client, f"{prefix}{i:05}", acknowledged)
        except ClientError as error:
            return error
    raise AssertionError(f"{ITEMS_MAX} writes of {ITEM_BYTES} bytes never filled a {FILESYSTEM_BYTES}-byte disk")


def write_until_accepted(client, acknowledged, key):
    def attempt():
        try:
            put(client, key, acknowledged)
            return True
        except ClientError:
            return False
    wait_for(attempt, RECOVERY_DEADLINE_S, "writes resume without a restart", interval_s=0.2)


def test_below_the_watermark_writes_are_refused_deletes_go_on_and_writes_resume(small_disk, tmp_path):
    require_binary()
    fill(small_disk, "filler", FILLER_BYTES)
    store = DiskStore(small_disk / "data", ["--disk-free-bytes-min", WATERMARK, "--disk-reserve-bytes", RESERVE])
    store.start()
    try:
        client = store.client()
        create_table(client, "orders")
        status, body = health(store)
        assert (status, body["status"]) == (200, "ready"), body
        assert body["disk"]["reserve_held_bytes"] == 2 << 20, body

        acknowledged = {}
        refused = write_until_refused(client, acknowledged, "a")
        code, message, http_status = error_parts(refused)
        assert (code, http_status) == ("ServiceUnavailable", 503), message
        assert "disk_free_bytes_min" in message and "Deletes still work" in message, message
        assert len(acknowledged) > 10, "the disk took some writes first"

        status, body = health(store)
        assert (status, body["status"]) == (503, "read_only"), body
        assert "disk below watermark" in body["reason"], body
        assert body["disk"]["reserve_held_bytes"] == 0, "released below the watermark"

        # Deletes and reads go on.
        for key in sorted(acknowledged)[:5]:
            client.delete_item(TableName="orders", Key={"pk": {"S": key}})
            acknowledged[key] = None
        check_nothing_lost(client, acknowledged)

        # The operator makes room: writes resume by themselves.
        os.remove(small_disk / "filler")
        write_until_accepted(client, acknowledged, "after")
        status, body = health(store)
        assert (status, body["status"]) == (200, "ready"), body
        check_nothing_lost(client, acknowledged)
    finally:
        store.stop()


def test_a_disk_full_without_watermark_fails_commits_and_heals_without_a_restart(small_disk, tmp_path):
    require_binary()
    fill(small_disk, "filler", FILLER_BYTES)
    store = DiskStore(small_disk / "data", ["--disk-free-bytes-min", "0", "--disk-reserve-bytes", "0"])
    store.start()
    try:
        client = store.client()
        create_table(client, "orders")
        acknowledged = {}
        failed = write_until_refused(client, acknowledged, "a")
        code, message, _ = error_parts(failed)
        assert code in ("InternalServerError", "ServiceUnavailable"), (code, message)

        def writer_reported():
            _, body = health(store)
            writer = body["writer"]
            return writer["storage_failures_total"] >= 1 and writer["last_error"] and writer["last_error_at_unix_ms"]
        wait_for(writer_reported, RECOVERY_DEADLINE_S, "the storage failure shows in /health")
        # Reads of what was acknowledged still work once the database is back. (An idle
        # checkpoint that meets the full disk reopens it again meanwhile: reads answer
        # ServiceUnavailable then, and are retried.)
        wait_for(lambda: health(store)[1]["writer"]["state"] == "ok", RECOVERY_DEADLINE_S, "the writer reopens")

        def all_read():
            try:
                check_nothing_lost(client, acknowledged)
                return True
            except ClientError as error:
                if error_parts(error)[0] != "ServiceUnavailable":
                    raise
                return False
        wait_for(all_read, RECOVERY_DEADLINE_S, "every acknowledged item reads back", interval_s=0.2)

        os.remove(small_disk / "filler")
        write_until_accepted(client, acknowledged, "after")
        for key in sorted(acknowledged)[:3]:
            client.delete_item(TableName="orders", Key={"pk": {"S": key}})
            acknowledged[key] = None
        status, body = health(store)
        assert (status, body["status"]) == (200, "ready"), body
        assert body["writer"]["reopens_total"] >= 1, body
        check_nothing_lost(client, acknowledged)
    finally:
        store.stop()


def fill_up(mount_point, name):
    """Takes every free byte of the filesystem."""
    chunk = b"\0" * (64 << 10)
    with open(mount_point / name, "wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError:
            pass
        try:
            # The last pages: a short write takes what is left.
            while out.write(b"\0" * 512):
                pass
        except OSError:
            pass


def test_a_store_on_a_full_disk_starts_with_its_reserve_and_says_so_without_one(small_disk, tmp_path):
    """A store stopped, then its disk filled to the last byte (another program, logs): the
    next start gives back its reserve before opening the database (whose open commits: here
    it must grow the file), so it starts, read-only but for deletes; a start that finds no
    room at all exits saying the disk is full and what to do. Once there is room, writes go
    on."""
    require_binary()
    store = DiskStore(small_disk / "data", ["--disk-free-bytes-min", WATERMARK, "--disk-reserve-bytes", RESERVE])
    store.start()
    # After an idle checkpoint the next open's commit must grow the file.
    wait_for(lambda: health(store)[1]["writer"]["checkpoints_total"] >= 1, RECOVERY_DEADLINE_S,
             "an idle checkpoint", interval_s=0.05)
    store.stop()
    assert (small_disk / "data" / "disk-reserve.bin").stat().st_size == 2 << 20
    fill_up(small_disk, "filler")

    store.start()
    try:
        client = store.client()
        status, body = health(store)
        assert (status, body["status"]) == (503, "read_only"), body
        assert body["disk"]["reserve_held_bytes"] == 0, body
        assert client.list_tables()["TableNames"] == []
    finally:
        store.stop()

    # No reserve to give back (a first start here): the start is refused with the cause and
    # the fix.
    fill_up(small_disk, "filler-2")
    fresh = DiskStore(small_disk / "data-2", ["--disk-free-bytes-min", WATERMARK, "--disk-reserve-bytes", RESERVE])
    command, _ = fresh.command()
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0, result.stderr[-2000:]
    assert "panicked" not in result.stderr, result.stderr[-2000:]
    assert "is full" in result.stderr and "Free space on that filesystem" in result.stderr, result.stderr[-2000:]

    os.remove(small_disk / "filler")
    os.remove(small_disk / "filler-2")
    store.start()
    try:
        client = store.client()
        create_table(client, "orders")
        acknowledged = {}
        write_until_accepted(client, acknowledged, "after")
        check_nothing_lost(client, acknowledged)
        assert health(store)[1]["disk"]["reserve_held_bytes"] == 2 << 20
    finally:
        store.stop()
