"""Clock skew between two real `switchyard store` processes, one of them under libfaketime
(Debian's `faketime`; the binary is dynamically linked, so LD_PRELOAD shifts its wall clock):
offsets reported in /health and /metrics, the alarm at its threshold, a peer's future stamps
not inherited (bounded stamps), and a split past the 5-minute signing window alarmed and healed
with nothing lost."""

import functools
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from harness import BINARY, free_port, wait_until
from test_global_tables import KEY, Region, contents, create_orders

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
WAIT_S = 60

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]


class SkewedRegion(Region):
    """A region started by flags whose wall clock runs `offset` ahead (libfaketime syntax:
    "+2s", "+400s"; None for the real clock). Monotonic time is left alone, so timers work."""

    def __init__(self, *args, offset=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.offset = offset

    def start(self):
        import os
        import subprocess

        ready = self.data_dir / "ready"
        if ready.exists():
            ready.unlink()
        env = dict(os.environ, SWITCHYARD_REPLICATION_KEY=KEY)
        if self.offset:
            env.update(LD_PRELOAD=str(LIBFAKETIME), FAKETIME=self.offset, FAKETIME_DONT_FAKE_MONOTONIC="1",
                       FAKETIME_NO_CACHE="1")
        command = [str(BINARY), "store", "--region", self.name, "--listen", f"127.0.0.1:{self.port}",
                   "--data-dir", str(self.data_dir), "--ready-file", str(ready)] + self.extra_args
        for peer in self.peers:
            command += ["--peer", f"{peer.name}={peer.url}"]
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))
        deadline = time.monotonic() + 20
        while not ready.exists():
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            assert time.monotonic() < deadline, f"{self.name} not ready"
            time.sleep(0.05)


def health_of(region):
    """The store's /health document, also when it answers 503 (degraded)."""
    try:
        with urllib.request.urlopen(f"{region.url}/health", timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        return json.loads(error.read())


def clock_of(region):
    return health_of(region)["replication"]["clock"]


def metrics_of(region):
    with urllib.request.urlopen(f"{region.url}/metrics", timeout=5) as response:
        return response.read().decode()


wait_for = functools.partial(wait_until, deadline_s=WAIT_S, poll_s=0.2)


def skewed_pair(tmp_path, eu_offset, eu_args=()):
    """us-east-1 on the real clock and eu-west-1 `eu_offset` ahead, peers of each other, started;
    yields both and stops them."""
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built")
    if not LIBFAKETIME.exists():
        pytest.skip("libfaketime is not installed (Debian package faketime)")
    us = SkewedRegion("us-east-1", free_port(), tmp_path / "us-east-1", [])
    eu = SkewedRegion("eu-west-1", free_port(), tmp_path / "eu-west-1", [], list(eu_args), offset=eu_offset)
    for region, peer in ((us, eu), (eu, us)):
        region.data_dir.mkdir()
        region.peers = [peer]
    us.start()
    eu.start()
    yield us, eu
    for region in (us, eu):
        region.stop()


@pytest.fixture
def skewed(tmp_path):
    # eu-west-1's own alarm threshold is above the skew: it sees the offset but raises nothing.
    yield from skewed_pair(tmp_path, "+2s", ["--clock-offset-alarm-ms", "5000"])


def test_clock_skew_is_measured_bounded_and_a_split_heals(skewed):
    us, eu = skewed
    client = us.client()
    create_orders(client)
    client.get_waiter("table_exists").wait(TableName="orders")
    client.update_table(TableName="orders", ReplicaUpdates=[{"Create": {"RegionName": "eu-west-1"}}])

    # Both regions measure the offset; only us-east-1's threshold (the default) is crossed.
    seen = wait_for("us-east-1 to measure eu-west-1's clock",
                    lambda: (c := clock_of(us)) and "eu-west-1" in c["peers"] and c)
    offset = seen["peers"]["eu-west-1"]["offset_ms"]
    assert 1000 <= offset <= 2100, seen
    assert seen["alarm"] is True and seen["beyond_signing_window"] == [], seen
    assert "switchyard_store_clock_offset_alarm 1" in metrics_of(us)
    theirs = wait_for("eu-west-1 to measure us-east-1's clock",
                      lambda: (c := clock_of(eu)) and "us-east-1" in c["peers"] and c)
    assert -2100 <= theirs["peers"]["us-east-1"]["offset_ms"] <= -1000, theirs
    assert theirs["alarm"] is False, "under eu-west-1's 5000 ms threshold"

    # eu-west-1 writes from 2 s in the future: us-east-1 takes the writes without following its
    # clock past the 1 s bound, and a later write in us-east-1 to the same item still wins.
    eu_client = eu.client()
    eu_client.put_item(TableName="orders", Item={"id": {"S": "o1"}, "by": {"S": "eu"}})
    wait_for("eu-west-1's write in us-east-1",
             lambda: client.get_item(TableName="orders", Key={"id": {"S": "o1"}}, ConsistentRead=True).get("Item"))
    assert clock_of(us)["stamps_capped_total"] >= 1
    client.put_item(TableName="orders", Item={"id": {"S": "o1"}, "by": {"S": "us"}})
    wait_for("us-east-1's later write to win in eu-west-1",
             lambda: eu_client.get_item(TableName="orders", Key={"id": {"S": "o1"}},
                                        ConsistentRead=True).get("Item", {}).get("by") == {"S": "us"})

    # Past the signing window the regions split: each refuses the other's changes, and says so.
    eu.stop()
    eu.offset = "+400s"
    eu.start()
    wait_for("the split in us-east-1's health", lambda: clock_of(us)["beyond_signing_window"] == ["eu-west-1"])
    split = health_of(us)
    assert split["status"] == "degraded" and "clock skew" in split["reason"], split
    client.put_item(TableName="orders", Item={"id": {"S": "during-us"}})
    eu.client().put_item(TableName="orders", Item={"id": {"S": "during-eu"}})

    # NTP fixes the clock: the regions converge with both writes, and the alarm clears.
    eu.stop()
    eu.offset = None
    eu.start()
    wait_for("convergence after the split",
             lambda: (a := contents(us)) == contents(eu) and {i["id"]["S"] for i in a} >= {"o1", "during-us", "during-eu"})
    wait_for("the split alarm to clear", lambda: clock_of(us)["beyond_signing_window"] == [])
    assert health_of(us)["status"] == "ready"


@pytest.fixture
def jumped(tmp_path):
    yield from skewed_pair(tmp_path, "+2d")


def test_a_region_whose_clock_jumped_ahead_expires_nothing_its_peers_do_not_agree_is_due(jumped):
    """eu-west-1's clock runs two days ahead (a bad NTP source, a VM restored with the wrong
    time). Its TTL sweeper holds back by how far us-east-1's clock is behind it, so an item that
    expires tomorrow by the true time stays (a TTL delete would replicate to every region),
    while one that is due by every clock goes."""
    us, eu = jumped
    # Fully held (a week) until the first measurement of us-east-1's clock, then by two days.
    wait_for("eu-west-1 to hold its sweeps back by us-east-1's clock",
             lambda: 36 * 3600 * 1000 < clock_of(eu)["ttl_and_retention_held_back_ms"] < 3 * 24 * 3600 * 1000)
    client = eu.client()
    client.create_table(TableName="carts", BillingMode="PAY_PER_REQUEST",
                        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}])
    client.get_waiter("table_exists").wait(TableName="carts")
    client.update_time_to_live(TableName="carts",
                               TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires"})
    true_now = int(time.time())
    for id_, expires in (("due", true_now - 3600), ("tomorrow", true_now + 86400)):
        client.put_item(TableName="carts", Item={"id": {"S": id_}, "expires": {"N": str(expires)}})

    def ids():
        return {i["id"]["S"] for i in client.scan(TableName="carts", ConsistentRead=True)["Items"]}

    wait_for("the item due by every clock to expire", lambda: "due" not in ids())
    assert ids() == {"tomorrow"}, "expired by eu-west-1's clock alone, and by no other"
