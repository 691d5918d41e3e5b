"""Media sync (`kind = "media_sync"`, `switchyard media sync|lag`) against real servers:
a real rsync daemon (Debian's `rsync`, started here with its own rsyncd.conf) and moto's S3
(ListObjectsV2, GetObject, PutObject, HeadObject, multipart uploads, signed by the binary's
AWS SDK). Asserts that objects arrive with the same sizes and ETags, that the lag goes to 0,
that `--delete` stays off unless asked (extra files on the standby survive), the limits of a
run, `config check`'s line numbers, and the controller's media_lag in `status`, `/metrics`
(checked by promtool), the dashboard (rendered by headless Chromium when installed) and its
runbook."""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request

import boto3
import pytest

from harness import (BINARY, CHECKED_HEAD, App, complete_jsonl, controller_toml, free_port, http_check_toml,
                     media_sync_toml, regions_toml, running_moto, start_controller, wait_until)

START_DEADLINE_S = 30
CHANGE_DEADLINE_S = 30

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def run_cli(*args, timeout=60):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built (cargo build -p switchyard)")
    env = dict(os.environ, SWITCHYARD_LOG="warn", **AWS_ENV)
    env.pop("SWITCHYARD_ACTIVE_REGION", None)
    return subprocess.run([str(BINARY), *args], env=env, capture_output=True, text=True, timeout=timeout)




def wait_for(what, condition, deadline_s=CHANGE_DEADLINE_S):
    return wait_until(what, condition, deadline_s)


@pytest.fixture
def rsync_daemon(tmp_path):
    """A real rsync daemon on loopback with one writable module, `eu`."""
    if shutil.which("rsync") is None:
        pytest.skip("rsync missing: apt-get install rsync (scripts/install-test-deps.sh does)")
    module = tmp_path / "eu"
    module.mkdir()
    # A second module, outside the media one, for the record of the last complete sync.
    (tmp_path / "eu-state").mkdir()
    port = free_port()
    conf = tmp_path / "rsyncd.conf"
    conf.write_text(f"""
use chroot = no
pid file = {tmp_path / 'rsyncd.pid'}
uid = {os.getuid()}
gid = {os.getgid()}
[eu]
path = {module}
read only = false
[eu-state]
path = {tmp_path / 'eu-state'}
read only = false
""")
    daemon = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={conf}", f"--port={port}",
                               "--address=127.0.0.1", f"--log-file={tmp_path / 'rsyncd.log'}"])

    def accepting():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return daemon.poll() is not None and pytest.fail("rsync --daemon exited")

    wait_for("the rsync daemon", accepting, START_DEADLINE_S)
    yield f"rsync://127.0.0.1:{port}/eu/", module
    daemon.terminate()
    daemon.wait(timeout=10)


HEAD = CHECKED_HEAD + """
[[checks]]
name = "us-app"
region = "us"
kind = { type = "tcp", address = "127.0.0.1:2" }

[[checks]]
name = "eu-app"
region = "eu"
kind = { type = "tcp", address = "127.0.0.1:2" }
"""


def record_url(tmp_path, url, region):
    """A record_url for `url`: a folder outside it, on the same side (a daemon's other module)."""
    url = str(url)
    if url.startswith("rsync://"):
        return url.rstrip("/").rsplit("/", 1)[0] + "/eu-state/"
    folder = tmp_path / f"records-{region}"
    folder.mkdir(exist_ok=True)
    if ":" in url.split("/", 1)[0]:
        return f"{url.split(':', 1)[0]}:{folder}/"
    return f"{folder}/"


def record_of(tmp_path, region):
    """The record file of `region` (its record_url as record_url() names it)."""
    folder = tmp_path / ("eu-state" if region == "eu-daemon" else f"records-{region}")
    return folder / "media.switchyard-media-synced"


def rsync_config(tmp_path, source, target, extra="", name="switchyard.toml"):
    config = tmp_path / name
    places = {"us": {"url": source}, "eu": {"url": target}}
    if "delete = true" in extra:
        for region, place in places.items():
            place["record_url"] = record_url(tmp_path, place["url"], region)
    config.write_text(HEAD + media_sync_toml("rsync", places, "run_timeout_ms = 30000\n" + extra))
    return config


def media(kind, config, *extra):
    result = run_cli("media", kind, "--config", str(config), "--json", *extra)
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return result, lines


def shop_media(folder):
    """A few product images and uploads; the oldest is a day old."""
    files = {
        "catalog/product/a/b/ab-shoe.jpg": os.urandom(3000),
        "catalog/product/c/d/cd-hat.png": os.urandom(1500),
        "wysiwyg/banner.webp": os.urandom(700),
        "2026/12/upload with space.pdf": os.urandom(42),
    }
    for relative, data in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    day_ago = time.time() - 86_400
    os.utime(folder / "wysiwyg/banner.webp", (day_ago, day_ago))
    return files


def test_rsync_to_a_real_daemon_copies_what_the_standby_lacks_and_keeps_its_extra_files(tmp_path, rsync_daemon):
    daemon_url, eu = rsync_daemon
    us = tmp_path / "us"
    us.mkdir()
    files = shop_media(us)
    (eu / "only-on-the-standby.jpg").write_bytes(b"kept")
    config = rsync_config(tmp_path, us, daemon_url)

    result, [lag] = media("lag", config)
    assert result.returncode == 0, result.stderr
    assert (lag["from"], lag["to"], lag["ok"]) == ("us", "eu", True), lag
    assert lag["lag"]["objects"] == len(files), lag
    assert lag["lag"]["bytes"] == sum(len(d) for d in files.values()), lag
    assert lag["lag"]["oldest_age_seconds"] >= 86_000, lag
    assert not (eu / "catalog").exists(), "a lag measurement must copy nothing"

    result, [synced] = media("sync", config)
    assert result.returncode == 0, result.stderr
    assert synced["ok"] and synced["copied_objects"] == len(files), synced
    assert synced["copied_bytes"] == sum(len(d) for d in files.values()), synced
    assert synced["remaining"]["objects"] == 0 and synced["deleted_objects"] == 0, synced
    for relative, data in files.items():
        copied = eu / relative
        assert copied.read_bytes() == data, relative
        assert int(copied.stat().st_mtime) == int((us / relative).stat().st_mtime), relative
    assert (eu / "only-on-the-standby.jpg").read_bytes() == b"kept", "delete is off by default"

    result, [lag] = media("lag", config)
    assert result.returncode == 0 and lag["lag"]["objects"] == 0 and lag["lag"]["bytes"] == 0, lag

    # The other way round (pulling from the daemon): the standby's own file is what us lacks.
    result, [back] = media("lag", config, "--from", "eu")
    assert result.returncode == 0, result.stderr
    assert back["lag"]["objects"] == 1 and back["lag"]["sample"] == ["only-on-the-standby.jpg"], back

    # A file on the receiver that is newer but different (a restore of the standby's media, an
    # edit there): the active region's copy is the truth. Before, --update skipped it forever
    # and the lag said 0; now it is counted, and `media sync` from the active region replaces it.
    newer = eu / "catalog/product/a/b/ab-shoe.jpg"
    newer.write_bytes(b"edited on the standby")
    future = time.time() + 3600
    os.utime(newer, (future, future))
    result, [lag] = media("lag", config)
    assert lag["lag"]["objects"] == 1 and lag["lag"]["sample"] == ["catalog/product/a/b/ab-shoe.jpg"], lag
    result, [synced] = media("sync", config)
    assert result.returncode == 0 and synced["copied_objects"] == 1, synced
    assert synced["remaining"]["objects"] == 0, synced
    assert newer.read_bytes() == files["catalog/product/a/b/ab-shoe.jpg"]

    # delete = true (opt-in) removes what the sender deleted since the last complete sync, and
    # nothing else: the first run has no record of one yet, so it deletes nothing and writes it.
    deleting = rsync_config(tmp_path, us, daemon_url, extra="delete = true", name="deleting.toml")
    result, [synced] = media("sync", deleting)
    assert result.returncode == 0 and synced["deleted_objects"] == 0, synced
    assert "no record of a complete sync" in synced["note"], synced
    assert record_of(tmp_path, "us").exists() and record_of(tmp_path, "eu-daemon").exists()
    assert not (us / ".switchyard-media-synced").exists() and not (eu / ".switchyard-media-synced").exists(), \
        "the record (every synced path) is kept outside the served folders"
    (us / "wysiwyg/banner.webp").unlink()
    result, [synced] = media("sync", deleting)
    assert result.returncode == 0 and synced["deleted_objects"] == 1, synced
    assert not (eu / "wysiwyg/banner.webp").exists()
    assert (eu / "only-on-the-standby.jpg").read_bytes() == b"kept", "never on both sides: not deleted"
    assert "kept 1 entries the receiver holds" in synced["note"], synced
    result, [lag] = media("lag", deleting)
    assert lag["lag"]["objects"] == 0, "the record is neither copied nor counted"


def test_rsync_failback_with_delete_keeps_the_uploads_the_old_region_could_not_copy(tmp_path, rsync_daemon):
    """us is active and synced to eu (delete = true). us takes an upload, then fails and the
    copy at the failover cannot run; eu takes uploads and deletes one of the synced files. At
    the failback eu -> us deletes what eu deleted, and keeps us's upload, which was never on
    both sides (before, rsync --delete removed it: the upload was lost)."""
    daemon_url, eu = rsync_daemon
    us = tmp_path / "us"
    us.mkdir()
    files = shop_media(us)
    config = rsync_config(tmp_path, us, daemon_url, extra="delete = true")
    result, [synced] = media("sync", config)
    assert result.returncode == 0 and synced["copied_objects"] == len(files), synced
    (us / "2026/12/uploaded-just-before-the-outage.jpg").write_bytes(b"only in us")
    (eu / "2026/12/uploaded-during-the-outage.jpg").write_bytes(b"made in eu")
    (eu / "catalog/product/c/d/cd-hat.png").unlink()
    (eu / "catalog/product/c/d").rmdir()
    # A record altered on the receiver (an upload of that name, say) to name the upload cannot
    # get it deleted: the sender's record must name an entry too.
    record = record_of(tmp_path, "us")
    record.write_text(record.read_text() + "f:10:2026/12/05-00:00:00|2026/12/uploaded-just-before-the-outage.jpg\n")
    result, [back] = media("sync", config, "--from", "eu")
    assert result.returncode == 0, result.stderr + result.stdout
    assert (us / "2026/12/uploaded-just-before-the-outage.jpg").read_bytes() == b"only in us"
    assert (us / "2026/12/uploaded-during-the-outage.jpg").read_bytes() == b"made in eu"
    assert not (us / "catalog/product/c/d/cd-hat.png").exists(), "deleted in eu after the last sync"
    assert back["deleted_objects"] == 2, back  # the file and its folder
    assert "kept 1 entries" in back["note"], back
    # The next sync us -> eu brings the kept upload over; nothing is deleted in eu.
    result, [forward] = media("sync", config)
    assert result.returncode == 0 and forward["deleted_objects"] == 0, forward
    assert (eu / "2026/12/uploaded-just-before-the-outage.jpg").read_bytes() == b"only in us"
    assert (eu / "2026/12/uploaded-during-the-outage.jpg").read_bytes() == b"made in eu"


def test_rsync_delete_keeps_a_new_upload_under_a_name_the_sender_deleted(tmp_path, rsync_daemon):
    """A file both sides held is deleted on the active side, and the standby then takes a new
    upload under the same name: the next copy deletes only what is still as it was copied."""
    daemon_url, eu = rsync_daemon
    us = tmp_path / "us"
    us.mkdir()
    shop_media(us)
    config = rsync_config(tmp_path, us, daemon_url, extra="delete = true")
    result, [synced] = media("sync", config)
    assert result.returncode == 0 and synced["deleted_objects"] == 0, synced
    (us / "wysiwyg/banner.webp").unlink()
    (us / "catalog/product/c/d/cd-hat.png").unlink()
    (eu / "wysiwyg/banner.webp").write_bytes(b"a new banner uploaded in eu")
    result, [synced] = media("sync", config)
    assert result.returncode == 0, result.stderr + result.stdout
    assert synced["deleted_objects"] == 1, synced
    assert not (eu / "catalog/product/c/d/cd-hat.png").exists(), "unchanged since the copy: deleted"
    assert (eu / "wysiwyg/banner.webp").read_bytes() == b"a new banner uploaded in eu"
    assert "kept 1 entries" in synced["note"], synced


def test_one_rsync_run_stays_within_objects_per_run_max(tmp_path, rsync_daemon):
    daemon_url, eu = rsync_daemon
    us = tmp_path / "us"
    us.mkdir()
    files = shop_media(us)
    config = rsync_config(tmp_path, us, daemon_url, extra="objects_per_run_max = 3")
    result, [first] = media("sync", config)
    assert result.returncode == 0, result.stderr
    assert first["copied_objects"] == 3 and first["limited"] == "objects_per_run_max = 3", first
    assert first["remaining"]["objects"] == len(files) - 3, first
    result, [second] = media("sync", config)
    assert second["copied_objects"] == len(files) - 3 and second["limited"] is None, second
    assert second["remaining"]["objects"] == 0, second
    assert sum(1 for p in eu.rglob("*") if p.is_file()) == len(files)


def test_a_capped_rsync_run_copies_names_with_non_ascii_bytes_newlines_and_dashes(tmp_path, rsync_daemon):
    """objects_per_run_max hands rsync the chosen names on its stdin; rsync printed them
    escaped (`caf\\#303\\#251.jpg`), and fed back so the run failed on the first such name."""
    daemon_url, eu = rsync_daemon
    us = tmp_path / "us"
    names = ["café.jpg", "new\nline.jpg", "-dash.jpg", "2026/12/ünï cödé.png", "plain.jpg"]
    for name in names:
        (us / name).parent.mkdir(parents=True, exist_ok=True)
        (us / name).write_bytes(name.encode())
    config = rsync_config(tmp_path, us, daemon_url, extra="objects_per_run_max = 2")
    copied = 0
    for _ in range(5):
        result, [synced] = media("sync", config)
        assert result.returncode == 0 and synced["ok"], result.stdout + result.stderr
        copied += synced["copied_objects"]
        if synced["limited"] is None:
            break
    assert copied == len(names) and synced["remaining"]["objects"] == 0, synced
    for name in names:
        assert (eu / name).read_bytes() == name.encode(), name


def test_a_file_too_big_for_one_run_is_resumed_and_never_blocks_the_rest(tmp_path, rsync_daemon):
    """A file that cannot be copied within run_timeout_ms (here: bwlimit_kib = 1000, a 3 MB
    video, 1 s per run): before, each run started it over and the files after it never came.
    Now the part copied is kept in .switchyard-partial on the receiver, the next run resumes it,
    and the part is never copied back nor counted as the file."""
    daemon_url, eu = rsync_daemon
    us = tmp_path / "us"
    (us / "video").mkdir(parents=True)
    big = os.urandom(3_000_000)
    (us / "video/tour.mp4").write_bytes(big)
    (us / "zz-after.jpg").write_bytes(b"after")
    config = rsync_config(tmp_path, us, daemon_url,
                          extra="bwlimit_kib = 1000").read_text().replace("run_timeout_ms = 30000", "run_timeout_ms = 1000")
    (tmp_path / "slow.toml").write_text(config)
    cut = 0
    for _ in range(10):
        result, [synced] = media("sync", tmp_path / "slow.toml")
        if synced["ok"]:
            break
        cut += 1
        assert "resumes it" in synced["error"], synced
        # Cut off mid-copy, the part is kept. A run may also be cut off after its copy
        # completed (in the partial files' clean-up or the verification after it): then the
        # whole file is in place (rsync renames it there only once complete), and the next run
        # finds nothing left to copy.
        part, whole = eu / "video/.switchyard-partial/tour.mp4", eu / "video/tour.mp4"
        wait_for("the part kept, or the file complete", lambda: part.exists() or whole.exists(), 10)
        if whole.exists():
            continue
        # The part is not the file: still missing, and never sent back the other way.
        result, [lag] = media("lag", tmp_path / "slow.toml")
        assert lag["lag"]["objects"] >= 1, lag
        result, [back] = media("lag", tmp_path / "slow.toml", "--from", "eu")
        assert ".switchyard-partial" not in json.dumps(back), back
    assert cut >= 1 and synced["ok"] and synced["remaining"]["objects"] == 0, synced
    assert (eu / "video/tour.mp4").read_bytes() == big
    assert (eu / "zz-after.jpg").read_bytes() == b"after"
    assert not (eu / "video/.switchyard-partial").exists()


def test_the_part_of_a_file_deleted_at_the_source_is_removed_and_no_other(tmp_path, rsync_daemon):
    """A copy cut off leaves its part in .switchyard-partial; before, when the source file was
    deleted before the next run, the part stayed on the receiver forever. The next copy now
    removes it, and leaves the part of a file still at the source (here one the run's limit
    kept it from copying) for the run that resumes it."""
    daemon_url, eu = rsync_daemon
    us = tmp_path / "us"
    (us / "video").mkdir(parents=True)
    (us / "video/tour.mp4").write_bytes(os.urandom(3_000_000))
    slow = rsync_config(tmp_path, us, daemon_url, extra="bwlimit_kib = 1000", name="slow.toml")
    slow.write_text(slow.read_text().replace("run_timeout_ms = 30000", "run_timeout_ms = 1000"))
    result, [synced] = media("sync", slow)
    assert not synced["ok"] and "resumes it" in synced["error"], synced
    part = eu / "video/.switchyard-partial/tour.mp4"
    wait_for("the part kept", part.exists, 10)

    # The upload is deleted before the next run. Another file's part (its copy cut off
    # elsewhere) waits for a run that has room for it: objects_per_run_max = 1 copies only
    # a-first.jpg this time.
    (us / "video/tour.mp4").unlink()
    (us / "a-first.jpg").write_bytes(b"first")
    (us / "video/later.mp4").write_bytes(b"later, in full")
    later_part = eu / "video/.switchyard-partial/later.mp4"
    later_part.write_bytes(b"later")
    config = rsync_config(tmp_path, us, daemon_url, extra="objects_per_run_max = 1")
    result, [synced] = media("sync", config)
    assert result.returncode == 0 and synced["ok"], result.stdout + result.stderr
    assert synced["limited"] is not None and synced["copied_objects"] == 1, synced
    assert "removed 1 partial files" in (synced.get("note") or ""), synced
    assert not part.exists()
    assert later_part.read_bytes() == b"later", "its source exists: never touched"
    assert (eu / "a-first.jpg").read_bytes() == b"first"

    # The next run copies later.mp4 (rsync removes its part once complete); nothing is left.
    result, [synced] = media("sync", config)
    assert synced["ok"] and "partial" not in (synced.get("note") or ""), synced
    assert (eu / "video/later.mp4").read_bytes() == b"later, in full"
    assert not (eu / "video/.switchyard-partial").exists()


def test_rsync_deletions_count_against_objects_per_run_max(tmp_path, rsync_daemon):
    """delete = true with rsync: --max-delete gets what objects_per_run_max leaves after the
    copies; rsync's exit 25 (deletions stopped) is a limited run, not a failure."""
    daemon_url, eu = rsync_daemon
    us = tmp_path / "us"
    us.mkdir()
    for i in range(3):
        (us / f"removed-{i}.jpg").write_bytes(b"old")
        # Kept on both sides: the 3 deletions leave half of the receiver's files, within the
        # deletion bound's floor.
        (us / f"kept-{i}.jpg").write_bytes(b"kept")
    # A complete sync first: only what both sides held then is ever deleted.
    setup = rsync_config(tmp_path, us, daemon_url, extra="delete = true", name="setup.toml")
    result, [synced] = media("sync", setup)
    assert result.returncode == 0 and synced["copied_objects"] == 6, synced
    for i in range(3):
        (us / f"removed-{i}.jpg").unlink()
    (us / "new.jpg").write_bytes(b"new")
    config = rsync_config(tmp_path, us, daemon_url, extra="delete = true\nobjects_per_run_max = 2")
    result, [first] = media("sync", config)
    assert result.returncode == 0, result.stderr + result.stdout
    assert (first["copied_objects"], first["deleted_objects"]) == (1, 1), first
    assert first["limited"] == "objects_per_run_max = 2", first
    assert len(list(eu.glob("removed-*"))) == 2
    result, [second] = media("sync", config)
    assert result.returncode == 0, result.stderr + result.stdout
    assert (second["copied_objects"], second["deleted_objects"], second["limited"]) == (0, 2, None), second
    assert sorted(p.name for p in eu.iterdir()) == ["kept-0.jpg", "kept-1.jpg", "kept-2.jpg", "new.jpg"]


def test_rsync_deletes_nothing_from_an_empty_source_and_copies_no_symlink_leaving_the_tree(tmp_path, rsync_daemon):
    """An unmounted (empty) source folder with delete = true would empty the receiver; a
    symlink pointing outside the media tree would become a link to the receiving host's own
    files."""
    daemon_url, eu = rsync_daemon
    us = tmp_path / "us"
    us.mkdir()
    (us / "catalog").mkdir()
    for i in range(3):
        (eu / f"photo-{i}.jpg").write_bytes(b"on the standby")
    config = rsync_config(tmp_path, us, daemon_url, extra="delete = true")
    result, [synced] = media("sync", config)
    assert result.returncode == 1 and not synced["ok"], result.stderr + result.stdout
    assert "deletions refused: the source lists no file at all" in synced["error"], synced
    assert sorted(p.name for p in eu.glob("photo-*")) == [f"photo-{i}.jpg" for i in range(3)]

    # With files, the copy runs; the standby's own photos were never on both sides, so they stay.
    (us / "catalog/a.jpg").write_bytes(b"a")
    result, [synced] = media("sync", config)
    assert result.returncode == 0, result.stderr + result.stdout
    assert synced["deleted_objects"] == 0 and synced["copied_objects"] == 1, synced
    assert (eu / "catalog/a.jpg").read_bytes() == b"a"
    assert sorted(p.name for p in eu.glob("photo-*")) == [f"photo-{i}.jpg" for i in range(3)]

    # Symlinks out of the tree are not copied, one inside is (between two local folders: an
    # rsync daemon without chroot munges every symlink anyway).
    (us / "catalog/passwd.jpg").symlink_to("/etc/passwd")
    (us / "catalog/up.jpg").symlink_to("../../../secret")
    (us / "catalog/same.jpg").symlink_to("a.jpg")
    local = tmp_path / "eu-local"
    local.mkdir()
    result, [synced] = media("sync", rsync_config(tmp_path, us, local, name="local.toml"))
    assert result.returncode == 0, result.stderr + result.stdout
    assert (local / "catalog/a.jpg").read_bytes() == b"a"
    assert os.readlink(local / "catalog/same.jpg") == "a.jpg"
    assert not os.path.lexists(local / "catalog/passwd.jpg")
    assert not os.path.lexists(local / "catalog/up.jpg")
    # ...but not in silence: warned about and counted in the lag (before: a lag of 0, and a
    # symlinked subfolder's images never reached the standby without anyone knowing).
    assert synced["remaining"]["objects"] == 2, synced
    assert "WARNING: 2 symlinks point out of the folder" in synced["note"], synced
    result, [lag] = media("lag", rsync_config(tmp_path, us, local, name="local.toml"))
    assert lag["lag"]["objects"] == 2 and any("passwd.jpg -> /etc/passwd" in s for s in lag["lag"]["sample"]), lag
    # The same through the rsync daemon (the receiving side says it): one without chroot
    # munges every symlink, so none is copied there, and all three are counted.
    result, [lag] = media("lag", rsync_config(tmp_path, us, daemon_url, name="daemon.toml"))
    assert lag["lag"]["objects"] == 3, lag


def test_rsync_refuses_to_delete_a_sub_mount_the_sender_lost(tmp_path, rsync_daemon):
    """`catalog/` is a mount of its own on the sending side (NFS, EFS) and is not mounted: the
    folder is there, empty. Before, --delete removed every catalog image on the standby
    ("deleted N", exit 0); now the run copies what it can, deletes nothing and fails, naming the
    folder; an intended deletion goes with delete_fraction_max raised."""
    daemon_url, eu = rsync_daemon
    us = tmp_path / "us"
    catalog = [f"catalog/product/{i % 3}/{i}.jpg" for i in range(9)]
    for relative in catalog + [f"wysiwyg/{i}.png" for i in range(40)]:
        (us / relative).parent.mkdir(parents=True, exist_ok=True)
        (us / relative).write_bytes(relative.encode())
    config = rsync_config(tmp_path, us, daemon_url, extra="delete = true")
    result, [synced] = media("sync", config)
    assert result.returncode == 0 and synced["copied_objects"] == 49, synced
    shutil.rmtree(us / "catalog")
    (us / "catalog").mkdir()
    (us / "wysiwyg/new.png").write_bytes(b"new")
    result, [refused] = media("sync", config)
    assert result.returncode == 1 and not refused["ok"], result.stdout
    assert "holds nothing under catalog/ any more" in refused["error"], refused
    assert "all 9 files" in refused["error"] and "delete_fraction_max" in refused["error"], refused
    assert "copied 1 objects" in refused["error"], refused
    assert all((eu / relative).exists() for relative in catalog), "nothing deleted"
    assert (eu / "wysiwyg/new.png").read_bytes() == b"new", "the copy went ahead"
    # Half the files gone at once (more than a quarter): refused as well.
    for i in range(20):
        (us / f"wysiwyg/{i}.png").unlink()
    for relative in catalog:
        (us / relative).parent.mkdir(parents=True, exist_ok=True)
        (us / relative).write_bytes(relative.encode())
    result, [refused] = media("sync", config)
    assert result.returncode == 1 and "would delete 20 of the 49 files" in refused["error"], refused
    assert (eu / "wysiwyg/0.png").exists()
    # Intended: the bound raised for one run.
    intended = rsync_config(tmp_path, us, daemon_url, extra="delete = true\ndelete_fraction_max = 1",
                            name="intended.toml")
    result, [synced] = media("sync", intended)
    assert result.returncode == 0 and synced["deleted_objects"] == 20, synced
    assert not (eu / "wysiwyg/0.png").exists() and (eu / "wysiwyg/39.png").exists()


def test_the_record_moves_out_of_the_served_folders_and_still_decides_the_deletions(tmp_path, rsync_daemon):
    """An older version kept `.switchyard-media-synced` at the top of both media folders, where
    the web server served it (Apache does by default): every synced path, WooCommerce's random
    download names too. The first run with record_url moves it out of both, keeping what it
    says, so a file deleted at the source since is still deleted on the standby."""
    daemon_url, eu = rsync_daemon
    us = tmp_path / "us"
    us.mkdir()
    files = shop_media(us)
    # As the older version left it: synced, and the same record on both sides.
    subprocess.run(["rsync", "-rlpt", f"{us}/", daemon_url], check=True, capture_output=True, timeout=60)
    listed = subprocess.run(["rsync", "-rn", "--out-format=%i|%l|%M|%n", f"{us}/", f"{tmp_path / 'empty'}/"],
                            env=dict(os.environ, TZ="UTC", LC_ALL="C"), check=True, capture_output=True,
                            text=True, timeout=60).stdout.splitlines()
    entries = []
    for line in filter(lambda line: line.count("|") >= 3, listed):
        item, length, when, path = line.split("|", 3)
        if path != "./":
            entries.append(("d" if item[1] == "d" else f"f:{length}:{when}") + "|" + path)
    old = "# switchyard media_sync v2: entries both sides held after the last complete sync (STATE|PATH)\n" \
        + "".join(e + "\n" for e in entries)
    (us / ".switchyard-media-synced").write_text(old)
    (eu / ".switchyard-media-synced").write_text(old)
    (us / "wysiwyg/banner.webp").unlink()
    config = rsync_config(tmp_path, us, daemon_url, extra="delete = true")
    result, [synced] = media("sync", config)
    assert result.returncode == 0, result.stderr + result.stdout
    assert synced["deleted_objects"] == 1 and not (eu / "wysiwyg/banner.webp").exists(), synced
    assert not (us / ".switchyard-media-synced").exists() and not (eu / ".switchyard-media-synced").exists()
    moved = record_of(tmp_path, "eu-daemon").read_text()
    assert "|catalog/product/a/b/ab-shoe.jpg\n" in moved and "banner.webp" not in moved, moved
    assert record_of(tmp_path, "us").read_text() == moved
    assert len(files) == 4


def test_rsync_errors_name_the_exit_code_and_rsyncs_words(tmp_path, rsync_daemon):
    daemon_url, _ = rsync_daemon
    us = tmp_path / "us"
    us.mkdir()
    config = rsync_config(tmp_path, us, daemon_url.replace("/eu/", "/no-such-module/"))
    result, [line] = media("lag", config)
    assert result.returncode == 1
    assert not line["ok"] and "rsync exit 5" in line["error"] and "Unknown module" in line["error"], line
    closed = rsync_config(tmp_path, us, f"rsync://127.0.0.1:{free_port()}/eu/", name="closed.toml")
    result, [line] = media("sync", closed)
    assert result.returncode == 1 and "rsync exit 10" in line["error"], line


def test_config_check_points_at_media_mistakes_with_line_numbers(tmp_path):
    config = tmp_path / "bad.toml"
    lines = HEAD.strip("\n").splitlines() + ["[policy]", "failback_media_objects_max = 5"]
    config.write_text("\n".join(lines) + "\n")
    result = run_cli("config", "check", str(config))
    assert result.returncode == 1
    assert f"{config}:{len(lines)}:" in result.stderr and "no runbook step has kind = \"media_sync\"" in result.stderr, \
        result.stderr

    config.write_text(HEAD + """
[[runbook]]
name = "media"
kind = "media_sync"

[runbook.media_sync]
mode = "rsync"
concurrency = 0
delete_fraction_max = 1.5

[runbook.media_sync.locations]
us = { url = "relative/media" }
eu = { url = "rsync://10.0.0.9/media/", region = "us-east-1" }
""")
    text = config.read_text().splitlines()
    line = {needle: text.index(next(t for t in text if t.startswith(needle))) + 1
            for needle in ["kind = \"media_sync\"", "concurrency", "delete_fraction_max", "us = ", "eu = "]}
    result = run_cli("config", "check", str(config))
    assert result.returncode == 1
    errors = result.stderr
    assert f"{config}:{line['concurrency']}:" in errors and "concurrency = 0 is outside 1..=32" in errors, errors
    assert f"{config}:{line['delete_fraction_max']}:" in errors and "delete_fraction_max = 1.5 is outside (0, 1]" \
        in errors, errors
    assert f"{config}:{line['us = ']}:" in errors and "is a relative folder" in errors, errors
    bw = rsync_config(tmp_path, "/srv/media", "rsync://10.0.0.9/media/", extra="bwlimit_kib = 0", name="bw.toml")
    bw_line = bw.read_text().splitlines().index("bwlimit_kib = 0") + 1
    result = run_cli("config", "check", str(bw))
    assert result.returncode == 1 and f"{bw}:{bw_line}:" in result.stderr and "bwlimit_kib = 0 is outside" \
        in result.stderr, result.stderr
    assert f"{config}:{line['eu = ']}:" in errors and "region of region 'eu' is an S3 setting" in errors, errors

    both_remote = rsync_config(tmp_path, "deploy@web-us:/srv/media/", "rsync://10.0.0.9/media/", name="remote.toml")
    result = run_cli("config", "check", str(both_remote))
    assert result.returncode == 1 and "are all remote" in result.stderr, result.stderr

    no_record = tmp_path / "no-record.toml"
    no_record.write_text(HEAD + media_sync_toml("rsync", {
        "us": {"url": "/srv/media/", "record_url": "/srv/media/state/"},
        "eu": {"url": "rsync://10.0.0.9/media/"}}, "delete = true"))
    text = no_record.read_text().splitlines()
    line = {needle: text.index(next(t for t in text if t.startswith(needle))) + 1 for needle in ["us = ", "eu = "]}
    result = run_cli("config", "check", str(no_record))
    assert result.returncode == 1
    assert f"{no_record}:{line['us = ']}:" in result.stderr and "is inside url's folder" in result.stderr, \
        result.stderr
    assert f"{no_record}:{line['eu = ']}:" in result.stderr and "delete = true needs record_url for region 'eu'" \
        in result.stderr, result.stderr

    short = rsync_config(tmp_path, "/srv/media", "rsync://10.0.0.9/media/", name="short.toml")
    short.write_text(short.read_text().replace("timeout_ms = 60000", "timeout_ms = 5000"))
    result = run_cli("config", "check", str(short))
    assert result.returncode == 1 and "cuts the copy off before its run_timeout_ms = 30000" in result.stderr, \
        result.stderr


@pytest.fixture
def moto_s3():
    # Small parts, so a multipart upload of a few KiB is legal (S3's own minimum is 5 MiB).
    with running_moto(env=dict(os.environ, S3_UPLOAD_PART_MIN_SIZE="256")) as url:
        yield url


def s3_config(tmp_path, moto, extra="", name="s3.toml"):
    config = tmp_path / name
    config.write_text(HEAD + media_sync_toml(
        "s3", {"us": {"url": "s3://shop-media-us/pub/media/", "region": "us-east-1", "endpoint_url": moto},
               "eu": {"url": "s3://shop-media-eu/pub/media/", "region": "eu-west-1", "endpoint_url": moto}},
        "run_timeout_ms = 30000\nconcurrency = 3\nlist_page_keys = 7\n" + extra))
    return config


def test_s3_replication_against_moto_copies_verifies_and_keeps_extra_objects(tmp_path, moto_s3):
    keys = dict(endpoint_url=moto_s3, aws_access_key_id="testing", aws_secret_access_key="testing")
    s3 = boto3.client("s3", region_name="us-east-1", **keys)
    s3.create_bucket(Bucket="shop-media-us")
    s3.create_bucket(Bucket="shop-media-eu", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    # Several ListObjectsV2 pages (list_page_keys = 7 below) on the source.
    objects = {f"pub/media/catalog/{i:04d}.jpg": f"image {i}".encode() for i in range(40)}
    for key, data in objects.items():
        s3.put_object(Bucket="shop-media-us", Key=key, Body=data, ContentType="image/jpeg")
    # A multipart object: its ETag is not the MD5 of its bytes.
    upload = s3.create_multipart_upload(Bucket="shop-media-us", Key="pub/media/video/tour.mp4",
                                        ContentType="video/mp4")
    parts = []
    for number, chunk in enumerate([b"a" * 1024, b"b" * 1024, b"c" * 100], start=1):
        answer = s3.upload_part(Bucket="shop-media-us", Key="pub/media/video/tour.mp4", PartNumber=number,
                                UploadId=upload["UploadId"], Body=chunk)
        parts.append({"PartNumber": number, "ETag": answer["ETag"]})
    s3.complete_multipart_upload(Bucket="shop-media-us", Key="pub/media/video/tour.mp4",
                                 UploadId=upload["UploadId"], MultipartUpload={"Parts": parts})
    multipart_etag = s3.head_object(Bucket="shop-media-us", Key="pub/media/video/tour.mp4")["ETag"]
    assert "-" in multipart_etag
    # Outside the prefix (not media), and an object only the standby has.
    s3.put_object(Bucket="shop-media-us", Key="var/log/system.log", Body=b"not media")
    s3.put_object(Bucket="shop-media-eu", Key="pub/media/only-on-the-standby.jpg", Body=b"kept")
    total = len(objects) + 1
    total_bytes = sum(len(d) for d in objects.values()) + 2148

    config = s3_config(tmp_path, moto_s3)
    result, [lag] = media("lag", config)
    assert result.returncode == 0, result.stderr + result.stdout
    assert lag["lag"]["objects"] == total and lag["lag"]["bytes"] == total_bytes, lag
    assert lag["lag"]["oldest_age_seconds"] is not None, lag

    # Bounded: one run copies at most objects_per_run_max.
    limited = s3_config(tmp_path, moto_s3, extra="objects_per_run_max = 10", name="limited.toml")
    result, [first] = media("sync", limited)
    assert result.returncode == 0, result.stderr + result.stdout
    assert first["copied_objects"] == 10 and first["limited"] == "objects_per_run_max = 10", first
    assert first["remaining"]["objects"] == total - 10, first

    result, [synced] = media("sync", config)
    assert result.returncode == 0, result.stderr + result.stdout
    assert synced["copied_objects"] == total - 10 and synced["remaining"]["objects"] == 0, synced

    for key, data in list(objects.items())[:20]:
        head = s3.head_object(Bucket="shop-media-eu", Key=key)
        assert head["ContentLength"] == len(data), key
        assert head["ETag"].strip('"') == hashlib.md5(data).hexdigest(), key
        assert head["ContentType"] == "image/jpeg", key
    copy = s3.get_object(Bucket="shop-media-eu", Key="pub/media/video/tour.mp4")
    assert copy["Body"].read() == b"a" * 1024 + b"b" * 1024 + b"c" * 100
    assert copy["Metadata"]["switchyard-source-etag"] == multipart_etag.strip('"'), copy["Metadata"]
    assert copy["ContentType"] == "video/mp4"
    listed = s3.list_objects_v2(Bucket="shop-media-eu", Prefix="pub/media/only")["KeyCount"]
    assert listed == 1, "delete is off by default: the standby's own object stays"
    assert "Contents" not in s3.list_objects_v2(Bucket="shop-media-eu", Prefix="var/")

    result, [lag] = media("lag", config)
    assert result.returncode == 0 and lag["lag"]["objects"] == 0 and lag["lag"]["bytes"] == 0, lag

    # A changed object on the source (another size and ETag) is copied again.
    s3.put_object(Bucket="shop-media-us", Key="pub/media/catalog/0007.jpg", Body=b"a new photo, longer")
    result, [lag] = media("lag", config)
    assert lag["lag"]["objects"] == 1 and lag["lag"]["sample"] == ["catalog/0007.jpg"], lag
    result, [synced] = media("sync", config)
    assert synced["copied_objects"] == 1, synced
    assert s3.get_object(Bucket="shop-media-eu", Key="pub/media/catalog/0007.jpg")["Body"].read() \
        == b"a new photo, longer"


def test_s3_keys_climbing_out_of_the_prefix_are_not_copied(tmp_path, moto_s3):
    """A key like pub/media/../../index.php is one object in S3, but a path out of the media to
    anything that normalises it: it is not copied (nor counted in the lag)."""
    keys = dict(endpoint_url=moto_s3, aws_access_key_id="testing", aws_secret_access_key="testing")
    s3 = boto3.client("s3", region_name="us-east-1", **keys)
    s3.create_bucket(Bucket="shop-media-us")
    s3.create_bucket(Bucket="shop-media-eu", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.put_object(Bucket="shop-media-us", Key="pub/media/a.jpg", Body=b"a")
    s3.put_object(Bucket="shop-media-us", Key="pub/media/../../index.php", Body=b"<?php evil();")
    assert "pub/media/../../index.php" in {o["Key"] for o in s3.list_objects_v2(Bucket="shop-media-us")["Contents"]}
    result, [synced] = media("sync", s3_config(tmp_path, moto_s3))
    assert result.returncode == 0, result.stderr + result.stdout
    assert synced["copied_objects"] == 1 and synced["remaining"]["objects"] == 0, synced
    assert {o["Key"] for o in s3.list_objects_v2(Bucket="shop-media-eu")["Contents"]} == {"pub/media/a.jpg"}


def test_s3_delete_removes_only_copies_the_active_side_deleted_within_objects_per_run_max(tmp_path, moto_s3):
    """delete = true: copies Switchyard made on the standby whose source the active bucket no
    longer holds are deleted (DeleteObject), counted against the same objects_per_run_max as
    the copies; an object the standby's app wrote itself (an upload made there during an
    outage, not brought back yet) stays, and so do objects outside the prefix and everything in
    the active bucket."""
    keys = dict(endpoint_url=moto_s3, aws_access_key_id="testing", aws_secret_access_key="testing")
    s3 = boto3.client("s3", region_name="us-east-1", **keys)
    s3.create_bucket(Bucket="shop-media-us")
    s3.create_bucket(Bucket="shop-media-eu", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    source = {f"pub/media/new-{i}.jpg": f"new {i}".encode() for i in range(2)}
    for key, data in source.items():
        s3.put_object(Bucket="shop-media-us", Key=key, Body=data)
    removed = [f"pub/media/removed-{i}.jpg" for i in range(4)]
    for key in removed:
        s3.put_object(Bucket="shop-media-us", Key=key, Body=b"deleted on the active side later")
    # On both sides throughout: the 4 deletions leave half of the receiver's objects, within
    # the deletion bound's floor.
    steady = [f"pub/media/steady-{i}.jpg" for i in range(4)]
    for key in steady:
        s3.put_object(Bucket="shop-media-us", Key=key, Body=b"steady")
    s3.put_object(Bucket="shop-media-eu", Key="var/backup.tgz", Body=b"not media")
    own = "pub/media/uploaded-in-eu.jpg"
    s3.put_object(Bucket="shop-media-eu", Key=own, Body=b"an upload made in eu, never copied to us")

    def listed(bucket, prefix=""):
        return {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])}

    # Copied to the standby, then deleted on the active side.
    result, [kept] = media("sync", s3_config(tmp_path, moto_s3, extra="objects_per_run_max = 10", name="keep.toml"))
    assert result.returncode == 0 and kept["copied_objects"] == 10 and kept["deleted_objects"] == 0, kept
    for key in removed:
        s3.delete_object(Bucket="shop-media-us", Key=key)
    # Without delete, nothing goes.
    result, [kept] = media("sync", s3_config(tmp_path, moto_s3, extra="objects_per_run_max = 10", name="keep.toml"))
    assert result.returncode == 0 and kept["deleted_objects"] == 0, kept
    assert set(removed) | {own} <= listed("shop-media-eu")
    for key in source:
        s3.delete_object(Bucket="shop-media-eu", Key=key)

    config = s3_config(tmp_path, moto_s3, extra="delete = true\nobjects_per_run_max = 4", name="delete.toml")
    result, [first] = media("sync", config)
    assert result.returncode == 0, result.stderr + result.stdout
    # 2 copies + 2 deletions = objects_per_run_max; the other 2 wait for the next run.
    assert (first["copied_objects"], first["deleted_objects"]) == (2, 2), first
    assert first["limited"] == "objects_per_run_max = 4", first
    assert len(listed("shop-media-eu", "pub/media/removed-")) == 2
    result, [second] = media("sync", config)
    assert result.returncode == 0, result.stderr + result.stdout
    assert (second["copied_objects"], second["deleted_objects"], second["limited"]) == (0, 2, None), second
    assert "kept 1 objects the receiver wrote itself" in second["note"], second
    assert listed("shop-media-eu") == set(source) | set(steady) | {"var/backup.tgz", own}, \
        "only copies the active side deleted go; the standby's own upload stays"
    assert listed("shop-media-us") == set(source) | set(steady), "the active bucket is never touched"
    result, [third] = media("sync", config)
    assert (third["copied_objects"], third["deleted_objects"]) == (0, 0), third


def test_s3_deletes_nothing_when_the_source_lists_empty_or_loses_most_objects(tmp_path, moto_s3):
    """A wiped or recreated source bucket, a MinIO on an unmounted disk, an edited prefix: the
    source lists nothing. Before, delete = true removed every copy on the standby ("deleted 5",
    exit 0); now nothing is deleted and the run fails, saying why and what would go."""
    keys = dict(endpoint_url=moto_s3, aws_access_key_id="testing", aws_secret_access_key="testing")
    s3 = boto3.client("s3", region_name="us-east-1", **keys)
    s3.create_bucket(Bucket="shop-media-us")
    s3.create_bucket(Bucket="shop-media-eu", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    source = {f"pub/media/catalog/{i}.jpg": f"photo {i}".encode() for i in range(5)}
    source.update({f"pub/media/wysiwyg/{i}.png": f"banner {i}".encode() for i in range(35)})
    for key, data in source.items():
        s3.put_object(Bucket="shop-media-us", Key=key, Body=data)
    config = s3_config(tmp_path, moto_s3, extra="delete = true")
    result, [synced] = media("sync", config)
    assert result.returncode == 0 and synced["copied_objects"] == 40, synced

    def count(bucket):
        return len(s3.list_objects_v2(Bucket=bucket, Prefix="pub/media/").get("Contents", []))

    for key in list(source)[:5]:
        s3.delete_object(Bucket="shop-media-us", Key=key)
    result, [synced] = media("sync", config)
    assert result.returncode == 0 and synced["deleted_objects"] == 5, "a few deletions go as before"
    for key in list(source)[5:]:
        s3.delete_object(Bucket="shop-media-us", Key=key)
    result, [refused] = media("sync", config)
    assert result.returncode == 1 and not refused["ok"], result.stdout
    assert "deletions refused: the source lists no file at all" in refused["error"], refused
    assert "all 35 files" in refused["error"] and "wysiwyg/0.png" in refused["error"], refused
    assert count("shop-media-eu") == 35, "nothing deleted"
    # Most, not all, gone: above delete_fraction_max (a quarter by default).
    s3.put_object(Bucket="shop-media-us", Key="pub/media/wysiwyg/0.png", Body=b"banner 0")
    result, [refused] = media("sync", config)
    assert result.returncode == 1 and "would delete 34 of the 35 files" in refused["error"], refused
    assert count("shop-media-eu") == 35
    intended = s3_config(tmp_path, moto_s3, extra="delete = true\ndelete_fraction_max = 1", name="intended.toml")
    result, [synced] = media("sync", intended)
    assert result.returncode == 0 and synced["deleted_objects"] == 34, synced
    assert count("shop-media-eu") == 1


def test_s3_copies_into_an_sse_kms_bucket_verify(tmp_path, moto_s3):
    """The standby bucket encrypts with SSE-KMS by default: the copy is verified by its size
    and the recorded source ETag (AWS's ETags of such objects are not MD5s)."""
    keys = dict(endpoint_url=moto_s3, aws_access_key_id="testing", aws_secret_access_key="testing")
    s3 = boto3.client("s3", region_name="us-east-1", **keys)
    s3.create_bucket(Bucket="shop-media-us")
    s3.create_bucket(Bucket="shop-media-eu", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.put_bucket_encryption(Bucket="shop-media-eu", ServerSideEncryptionConfiguration={"Rules": [
        {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "alias/media"}}]})
    s3.put_object(Bucket="shop-media-us", Key="pub/media/a.jpg", Body=b"a photo")
    result, [synced] = media("sync", s3_config(tmp_path, moto_s3))
    assert result.returncode == 0 and synced["copied_objects"] == 1, result.stdout + result.stderr
    assert synced["remaining"]["objects"] == 0, synced
    head = s3.head_object(Bucket="shop-media-eu", Key="pub/media/a.jpg")
    assert head.get("ServerSideEncryption") == "aws:kms", head


def test_s3_an_object_the_standby_wrote_after_the_source_is_counted_and_replaced_by_media_sync(tmp_path, moto_s3):
    """An object the standby wrote itself after the active side's version (not a copy): before,
    S3 mode took it as the source's, so the lag said nothing differed and no copy fixed it,
    while rsync mode counts such a file. Now the lag counts it and `media sync` from the active
    region replaces it (the runbook step's copy keeps it: the providers' tests)."""
    keys = dict(endpoint_url=moto_s3, aws_access_key_id="testing", aws_secret_access_key="testing")
    s3 = boto3.client("s3", region_name="us-east-1", **keys)
    s3.create_bucket(Bucket="shop-media-us")
    s3.create_bucket(Bucket="shop-media-eu", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.put_object(Bucket="shop-media-us", Key="pub/media/banner.webp", Body=b"the active side's")
    s3.put_object(Bucket="shop-media-us", Key="pub/media/same.jpg", Body=b"same")
    s3.put_object(Bucket="shop-media-eu", Key="pub/media/same.jpg", Body=b"same")
    source_time = s3.head_object(Bucket="shop-media-us", Key="pub/media/banner.webp")["LastModified"]

    def written_later():
        s3.put_object(Bucket="shop-media-eu", Key="pub/media/banner.webp", Body=b"the standby's own, newer")
        return s3.head_object(Bucket="shop-media-eu", Key="pub/media/banner.webp")["LastModified"] > source_time

    # LastModified counts whole seconds: written again until it is a later one.
    wait_for("the standby's object to be newer", written_later, 5)
    config = s3_config(tmp_path, moto_s3)
    result, [lag] = media("lag", config)
    assert result.returncode == 0, result.stderr + result.stdout
    assert lag["lag"]["objects"] == 1 and lag["lag"]["sample"] == ["banner.webp"], lag

    result, [synced] = media("sync", config)
    assert result.returncode == 0 and synced["ok"], result.stderr + result.stdout
    assert synced["copied_objects"] == 1 and synced["remaining"]["objects"] == 0, synced
    assert s3.get_object(Bucket="shop-media-eu", Key="pub/media/banner.webp")["Body"].read() == b"the active side's"
    result, [lag] = media("lag", config)
    assert lag["lag"]["objects"] == 0, lag


def test_the_controller_measures_media_lag_shows_it_and_runs_the_step_on_failover(tmp_path, rsync_daemon):
    """The real controller: media_lag in /v1/status, `switchyard status`, /metrics (promtool
    clean) and the dashboard; a failover runs the media_sync step (audited with its
    generation) and the lag of the new standby is measured from the new active region; then
    failback waits for an upload made during the outage until `media sync` copies it home."""
    daemon_url, eu = rsync_daemon
    us = tmp_path / "us"
    us.mkdir()
    files = shop_media(us)
    apps = [App(), App()]
    audit = tmp_path / "audit.jsonl"
    config = tmp_path / "controller.toml"
    config.write_text(controller_toml(audit, policy="""failback_media_objects_max = 0
min_hold_ms = 1000
stability_window_ms = 3000               # two media measurements (every 1 s) at least""")
                      + regions_toml("us", "eu") + http_check_toml("us-app", "us", apps[0].port)
                      + http_check_toml("eu-app", "eu", apps[1].port) + """
[[runbook]]
name = "pointer"
kind = "pointer"
""" + media_sync_toml("rsync", {"us": {"url": us}, "eu": {"url": daemon_url}},
                      "run_timeout_ms = 30000\nlag_interval_ms = 1000"))
    env = dict(os.environ, SWITCHYARD_LOG="info", NO_COLOR="1")
    controller, base, log = start_controller(config, tmp_path, env=env, deadline_s=CHANGE_DEADLINE_S)
    try:
        def status():
            with urllib.request.urlopen(base + "/v1/status", timeout=5) as response:
                return json.load(response)

        def eu_figure():
            figures = [f for f in status()["media"] if f["to"] == "eu" and f["objects"] is not None]
            return figures[0] if figures else None

        figure = wait_for("the media lag of eu", eu_figure)
        assert figure["from"] == "us" and figure["objects"] == len(files), figure
        assert figure["bytes"] == sum(len(d) for d in files.values()), figure
        assert figure["oldest_age_seconds"] >= 86_000, figure

        shown = subprocess.run([str(BINARY), "status", "--controller", base], capture_output=True, text=True,
                               timeout=30, env=env)
        assert shown.returncode == 0, shown.stderr
        row = next(line for line in shown.stdout.splitlines() if "us -> eu" in line)
        assert "us -> eu" in row and f" {len(files)} " in row, shown.stdout

        with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert f'switchyard_controller_media_missing_objects{{step="media",region="eu"}} {len(files)}' in metrics, \
            metrics
        assert "switchyard_controller_media_missing_bytes" in metrics
        assert "switchyard_controller_media_oldest_missing_age_seconds" in metrics
        # The Grafana dashboard in docs/ has media panels, and queries only series served here.
        from test_metrics_promtool import assert_dashboard_uses_real_series, dashboard_series
        assert {"switchyard_controller_media_missing_objects", "switchyard_controller_media_missing_bytes",
                "switchyard_controller_media_oldest_missing_age_seconds"} <= dashboard_series(
                    "switchyard_controller_media_")
        assert_dashboard_uses_real_series("switchyard_controller_", metrics)
        if shutil.which("promtool"):
            lint = subprocess.run(["promtool", "check", "metrics"], input=metrics, capture_output=True, text=True,
                                  timeout=30)
            assert lint.returncode == 0, lint.stdout + lint.stderr

        # The dashboard's Media table, as a browser renders it (when Chromium is installed).
        from test_dashboard_chromium import chromium, chromium_binary, rows
        if chromium_binary():
            dom = chromium(tmp_path / "chromium-profile", "--virtual-time-budget=3000", "--dump-dom",
                           base + "/dashboard")
            media_rows = rows(dom, "media")
            assert any("us → eu" in row and f" {len(files)} " in row for row in media_rows), media_rows

        # us fails: the failover's media step copies what us had to eu before the move ends.
        apps[0].stop()

        def steps():
            lines = audit.read_text().splitlines() if audit.exists() else []
            records = [json.loads(line) for line in lines if '"kind":"step"' in line and '"step":"media"' in line]
            return [r for r in records if "us -> eu" in r["detail"]]

        ran = wait_for("the media step's audit record", steps)
        assert ran[-1]["outcome"] == "ok" and ran[-1]["generation"] >= 2, ran
        assert f"us -> eu: copied {len(files)} objects" in ran[-1]["detail"], ran
        for relative, data in files.items():
            assert (eu / relative).read_bytes() == data
        # Now eu is active, and us (down, its folder still here) is measured from eu.
        wait_for("the media lag of us from eu",
                 lambda: any(f["from"] == "eu" and f["to"] == "us" and f["objects"] == 0 for f in status()["media"]))

        # An upload lands in eu during the outage; us comes back. Failback waits for the media
        # (failback_media_objects_max = 0) and says why, until `media sync` copies it home.
        upload = eu / "2026/12/during-the-outage.jpg"
        upload.parent.mkdir(parents=True, exist_ok=True)
        upload.write_bytes(b"new photo")
        apps[0] = App(port=apps[0].port)
        wait_for("failback waiting for the media",
                 lambda: any("us lacks 1 media objects, above failback_media_objects_max = 0" in reason
                             for reason in status()["engine"]["reasons"]))

        def active():
            with urllib.request.urlopen(base + "/v1/active-region", timeout=5) as response:
                return json.load(response)["region"]

        assert active() == "eu"
        result = subprocess.run([str(BINARY), "media", "sync", "--config", str(config), "--from", "eu", "--json"],
                                capture_output=True, text=True, timeout=60, env=env)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["copied_objects"] == 1, result.stdout
        assert (us / "2026/12/during-the-outage.jpg").read_bytes() == b"new photo"
        wait_for("the failback to us once its media are complete", lambda: active() == "us")
    finally:
        controller.kill()
        controller.wait(timeout=10)
        apps[1].stop()


CONTROL_TOKEN = "media-control-token-0123456789abcdef"


def on_failover_controller(tmp_path, us_url, eu_folder, on_failover):
    """A controller with two healthy regions, us active, whose runbook is the media step
    (us -> eu, `on_failover` as given) before the pointer: the pointer moves only once the
    media step passed. Returns (base URL, audit log, the process, the health servers)."""
    apps = [App(), App()]
    audit = tmp_path / "audit.jsonl"
    config = tmp_path / "controller.toml"
    config.write_text(controller_toml(audit, policy="min_hold_ms = 600000\nrunbook_retry_ms = 500")
                      + regions_toml("us", "eu")
                      + "".join(http_check_toml(f"{region}-app", region, app.port, {"interval_ms": 200, "timeout_ms": 300})
                                for region, app in (("us", apps[0]), ("eu", apps[1])))
                      + media_sync_toml("rsync", {"us": {"url": us_url}, "eu": {"url": eu_folder}},
                                        f'run_timeout_ms = 15000\non_failover = "{on_failover}"',
                                        "timeout_ms = 20000\nretries = 0") + """
[[runbook]]
name = "pointer"
kind = "pointer"
""")
    checked = run_cli("config", "check", str(config))
    assert checked.returncode == 0, checked.stderr
    env = dict(os.environ, SWITCHYARD_LOG="info", NO_COLOR="1", SWITCHYARD_CONTROL_TOKEN=CONTROL_TOKEN)
    controller, base, _log = start_controller(config, tmp_path, env=env, deadline_s=CHANGE_DEADLINE_S)
    wait_for("us to be active", lambda: active_region(base) == "us")
    return base, audit, controller, apps


def active_region(base):
    request = urllib.request.Request(base + "/v1/active-region",
                                     headers={"Authorization": f"Bearer {CONTROL_TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)["region"]


def audit_records(audit, **fields):
    # The controller is appending to it: a line caught half-written is read next time.
    return [r for r in complete_jsonl(audit) if all(r.get(k) == v for k, v in fields.items())]


def manual_failover(base):
    env = dict(os.environ, SWITCHYARD_CONTROL_TOKEN=CONTROL_TOKEN)
    result = subprocess.run([str(BINARY), "failover", "--controller", base], env=env, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.rsplit("(generation ", 1)[1].split(")")[0])


def test_on_failover_required_holds_the_failover_until_the_media_are_copied(tmp_path):
    """`on_failover = "required"`: the old region's rsync daemon is unreachable, so the
    failover's media step fails, the runbook stops before the pointer and us stays active;
    the controller retries, and once the daemon answers the retry copies the media and the
    move completes."""
    if shutil.which("rsync") is None:
        pytest.skip("rsync missing: apt-get install rsync (scripts/install-test-deps.sh does)")
    us_module, eu = tmp_path / "us-module", tmp_path / "eu"
    us_module.mkdir()
    eu.mkdir()
    files = shop_media(us_module)
    port = free_port()
    base, audit, controller, apps = on_failover_controller(tmp_path, f"rsync://127.0.0.1:{port}/us/", eu,
                                                           "required")
    daemon = None
    try:
        shown = run_cli("runbook", "show", "--config", str(tmp_path / "controller.toml"))
        assert shown.returncode == 0 and 'a failed copy stops the runbook before the steps after it' in shown.stdout, \
            shown.stdout + shown.stderr
        generation = manual_failover(base)
        failed = wait_for("the media step to fail", lambda: [
            r for r in audit_records(audit, kind="step", step="media") if r["outcome"] != "ok"])
        assert failed[0]["generation"] == generation, failed
        assert "rsync exit 10" in failed[0]["detail"], failed
        assert not audit_records(audit, kind="step", step="pointer", generation=generation), \
            "the pointer must not move past a failed required media step"
        assert active_region(base) == "us"
        assert not any(p.is_file() for p in eu.rglob("*"))

        # The old region's daemon comes up: a retry copies and the move completes.
        conf = tmp_path / "rsyncd.conf"
        conf.write_text(f"use chroot = no\npid file = {tmp_path / 'rsyncd.pid'}\n[us]\npath = {us_module}\n"
                        "read only = true\n")
        daemon = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={conf}", f"--port={port}",
                                   "--address=127.0.0.1", f"--log-file={tmp_path / 'rsyncd.log'}"])
        wait_for("the failover to complete once the media copy works", lambda: active_region(base) == "eu")
        copied = [r for r in audit_records(audit, kind="step", step="media", outcome="ok")
                  if r["generation"] > generation]
        assert copied and f"us -> eu: copied {len(files)} objects" in copied[-1]["detail"], copied
        for relative, data in files.items():
            assert (eu / relative).read_bytes() == data, relative
    finally:
        controller.kill()
        controller.wait(timeout=10)
        if daemon:
            daemon.terminate()
            daemon.wait(timeout=10)
        for app in apps:
            app.stop()


def test_on_failover_skip_moves_without_copying(tmp_path, rsync_daemon):
    """`on_failover = "skip"`: the failover does not copy at all (even with the old region
    reachable), says so in the audit log, and the pointer moves."""
    daemon_url, us_module = rsync_daemon
    shop_media(us_module)
    eu = tmp_path / "eu-local"
    eu.mkdir()
    base, audit, controller, apps = on_failover_controller(tmp_path, daemon_url, eu, "skip")
    try:
        shown = run_cli("runbook", "show", "--config", str(tmp_path / "controller.toml"))
        assert shown.returncode == 0 and 'on a failover nothing is copied; failbacks copy (`on_failover = "skip"`)' \
            in shown.stdout, shown.stdout + shown.stderr
        generation = manual_failover(base)
        wait_for("the failover", lambda: active_region(base) == "eu")
        [step] = audit_records(audit, kind="step", step="media", generation=generation)
        assert step["outcome"] == "ok", step
        assert 'not copied on a failover (on_failover = "skip")' in step["detail"], step
        assert not any(p.is_file() for p in eu.rglob("*")), "skip must copy nothing"
    finally:
        controller.kill()
        controller.wait(timeout=10)
        for app in apps:
            app.stop()
