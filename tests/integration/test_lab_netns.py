"""`switchyard lab --netns`: each region's processes in a network namespace of their own, so
`lab ctl cut-network` cuts a real link (packets vanish in the kernel: no refusal, no reset).
The lab fails over when the primary's network is cut, serves the shop from the secondary, comes
back after heal-network, and removes its namespaces when it stops. Needs root and iproute2;
skipped where the machine does not allow network namespaces."""

import functools
import json
import os
import subprocess
import urllib.error
import urllib.request

import dns.exception
import dns.message
import dns.query
import pytest

import harness
from harness import BINARY, assert_fault_drill, lab_ctl, lab_resolve, running_lab

START_DEADLINE_S = 60
FAILOVER_DEADLINE_S = 30

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]


def namespaces_allowed():
    if os.geteuid() != 0:
        return False
    probe = f"sy-probe-{os.getpid()}"
    created = subprocess.run(["ip", "netns", "add", probe], capture_output=True)
    if created.returncode != 0:
        return False
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return True


wait_until = functools.partial(
    harness.wait_until, ignore=(OSError, urllib.error.URLError, ValueError, dns.exception.DNSException), poll_s=0.2)


resolve = lab_resolve


def products(address, base_port):
    with urllib.request.urlopen(f"http://{address}:{base_port + 80}/api/products", timeout=3) as response:
        return json.loads(response.read())["products"]


ctl = lab_ctl


def netns_list():
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_a_cut_network_link_fails_the_region_over(tmp_path):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built")
    if not namespaces_allowed():
        pytest.skip("network namespaces need root and iproute2 here")
    with running_lab(BINARY, tmp_path, "--netns", start_deadline_s=START_DEADLINE_S) as (directory, base_port):
        names = [f"sy{base_port}r0", f"sy{base_port}r1"]
        assert all(name in netns_list() for name in names), netns_list()
        state = json.loads((directory / "lab.json").read_text())
        store = next(c for c in state["components"] if c["name"] == "store-us-east-1")
        # The region's processes live in their namespace, not the lab's.
        assert os.readlink(f"/proc/{store['pid']}/ns/net") != os.readlink("/proc/self/ns/net")
        # The controller's first decision may take a moment after the lab is up.
        wait_until("DNS to answer with us-east-1", lambda: resolve(base_port) == ["127.0.0.11"], FAILOVER_DEADLINE_S)
        wait_until("the shop to answer through the namespace's link", lambda: products("127.0.0.11", base_port),
                   FAILOVER_DEADLINE_S)

        cut = ctl(directory, "cut-network", "us-east-1")
        assert cut.returncode == 0, cut.stderr
        wait_until("DNS to answer with eu-west-1", lambda: resolve(base_port) == ["127.0.0.12"], FAILOVER_DEADLINE_S)
        assert products("127.0.0.12", base_port)
        with pytest.raises((OSError, urllib.error.URLError)):
            products("127.0.0.11", base_port)  # cut: the connection times out

        healed = ctl(directory, "heal-network", "us-east-1")
        assert healed.returncode == 0, healed.stderr
        wait_until("us-east-1 reachable again", lambda: products("127.0.0.11", base_port), FAILOVER_DEADLINE_S)
        unknown = ctl(directory, "cut-network", "mars")
        assert unknown.returncode != 0 and "no region 'mars'" in unknown.stderr, unknown.stderr

        # The same cut as a drill, once traffic is back on us-east-1 (the lab fails back after
        # its hold). Its RTO bounds are not asserted here (a loaded machine may miss them):
        # the cut was made and healed, the controller failed over, nothing was lost.
        wait_until("failback to us-east-1", lambda: resolve(base_port) == ["127.0.0.11"], 90)
        assert_fault_drill(directory, tmp_path / "isolation.json", "region-isolation", 10)
    assert not any(name in netns_list() for name in names), "the lab removes its namespaces"
