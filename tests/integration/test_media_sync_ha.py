"""Media lag with several controllers on a real etcd (`[controller.ha]`): every member, the
followers too, measures the media lag from the active region it serves (the pointer as etcd
records it), so `status` on any member and a new leader's failback gate have a fresh figure
without it being shared through etcd."""

import os
import subprocess

import pytest

from harness import TOKEN, assert_config_ok, media_sync_toml, start_controller, wait_until
import test_controller_ha
from test_controller_ha import START_DEADLINE_S, config_text
from test_media_sync import shop_media

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]

MEMBERS = ["m1", "m2"]


# The HA tests' fixture: a group (etcd, the apps, DNS) for members to join.
group = test_controller_ha.group


def start_member(group, member, media):
    config = group.tmp / f"{member}.toml"
    config.write_text(config_text(group.us, group.eu, group.tmp, member, [group.etcd.url], group.dns.admin) + media)
    assert_config_ok(config)
    env = dict(os.environ, SWITCHYARD_CONTROL_TOKEN=TOKEN, SWITCHYARD_LOG="info")
    group.members[member] = start_controller(config, group.tmp, env=env, deadline_s=START_DEADLINE_S, name=member)


def test_every_member_measures_the_media_lag_itself(group):
    if subprocess.run(["which", "rsync"], capture_output=True).returncode != 0:
        pytest.skip("rsync missing: apt-get install rsync (scripts/install-test-deps.sh does)")
    us, eu = group.tmp / "media-us", group.tmp / "media-eu"
    us.mkdir()
    eu.mkdir()
    files = shop_media(us)
    media = media_sync_toml("rsync", {"us-east-1": {"url": us}, "eu-west-1": {"url": eu}},
                            "run_timeout_ms = 30000\nlag_interval_ms = 1000")
    for member in MEMBERS:
        start_member(group, member, media)
    leader = wait_until("a leader named by every member", group.leader, START_DEADLINE_S, group.logs())

    def figure(member):
        status = group.status(member) or {}
        return next((f for f in status.get("media", [])
                     if f["from"] == "us-east-1" and f["to"] == "eu-west-1" and f["objects"] is not None), None)

    for member in MEMBERS:
        seen = wait_until(f"{member}'s media lag", lambda m=member: figure(m), START_DEADLINE_S, group.logs())
        assert seen["objects"] == len(files), (member, seen)
    follower = next(m for m in MEMBERS if m != leader)

    # A new upload: the follower's own next measurement sees it (nothing of it goes through etcd).
    (us / "2026/12/new-upload.jpg").write_bytes(b"new")
    wait_until("the follower to measure the new upload",
               lambda: (figure(follower) or {}).get("objects") == len(files) + 1, START_DEADLINE_S, group.logs())
    assert not (group.status(follower) or {})["ha"]["acting"], "the figure came from a follower"
