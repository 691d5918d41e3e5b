"""`switchyard lab --controllers 3`: three etcd members (Debian's etcd) and three controllers in
`[controller.ha]`, every link through the fault proxy. `switchyard status --lab` names the
leader; kill -9 the leader and another member takes over and fails the shop over."""

import json
import re
import shutil
import urllib.request

import pytest

from harness import running_lab
from test_lab import BINARY, get_json, lab_cli, resolve, running_components, status_cli, wait_until

START_DEADLINE_S = 90
# Generous liveness bounds (not timing assertions): the figures go in BENCHMARKS.md.
TAKEOVER_DEADLINE_S = 45
SITES = ["us-east-1", "eu-west-1", "tie-breaker"]

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]


def controllers(directory):
    """`switchyard status --lab`'s controller lines: {component: line}."""
    status = status_cli(directory)
    lines = {}
    for line in status.stdout.splitlines() + status.stderr.splitlines():
        match = re.match(r"\s+(controller-\S+)\s+(.*)$", line)
        if match and "leader:" in match.group(2):
            lines[match.group(1)] = match.group(2)
    return lines


def leader(directory, alive):
    """The member every live member names, once exactly one of them acts."""
    lines = controllers(directory)
    if any(f"controller-{site}" not in lines for site in alive):
        return None
    acting = [site for site in alive if "acting)" in lines[f"controller-{site}"]]
    if len(acting) != 1:
        return None
    if all(f"leader: {acting[0]} at " in lines[f"controller-{site}"] for site in alive):
        return acting[0]
    return None


@pytest.fixture
def ha_lab(tmp_path):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built")
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (Debian package etcd-server; scripts/install-test-deps.sh installs it)")
    with running_lab(BINARY, tmp_path, "--controllers", "3", start_deadline_s=START_DEADLINE_S) as lab:
        yield lab.directory, lab.base_port, lab.process
    directory = lab.directory
    for component in running_components(directory):
        raise AssertionError(f"{component['name']} (pid {component['pid']}) still runs")


def test_three_controllers_elect_one_leader_and_survive_its_kill(ha_lab):
    directory, base_port, _ = ha_lab
    state = json.loads((directory / "lab.json").read_text())
    names = [c["name"] for c in state["components"]]
    for site in SITES:
        assert f"etcd-{site}" in names and f"controller-{site}" in names, names
    assert "controller" not in names

    first = wait_until("one leader named by every member", lambda: leader(directory, SITES), START_DEADLINE_S)
    # `lab --status` says the same as `status --lab`, the controllers' lines included.
    own = lab_cli("--status", "--dir", str(directory))
    assert "controllers (etcd):" in own.stdout and f"controller-{first}" in own.stdout, own.stdout
    # Member 0 listens where the single controller would; every member serves the pointer.
    pointer = wait_until("the first placement", lambda: get_json(
        f"http://127.0.0.1:{base_port + 1}/v1/active-region")["region"] == "us-east-1", START_DEADLINE_S)
    assert pointer
    assert wait_until("DNS answering", lambda: resolve(base_port), 10) == ["127.0.0.11"]

    # kill -9 the leader: another member takes over, names itself, and acts on a failure.
    killed = lab_cli("ctl", "--dir", str(directory), "kill", f"controller-{first}")
    assert killed.returncode == 0, killed.stderr
    rest = [site for site in SITES if site != first]
    second = wait_until("another member to lead", lambda: leader(directory, rest), TAKEOVER_DEADLINE_S)
    assert second != first
    status = status_cli(directory)
    assert status.returncode != 0 and f"controller-{first} is exited (killed by SIGKILL)" in status.stderr

    request = urllib.request.Request(f"http://127.0.0.1:{base_port}/proxies/frontend-us-east-1", method="POST",
                                     data=json.dumps({"enabled": False}).encode())
    urllib.request.urlopen(request, timeout=5).read()
    assert wait_until("DNS moving to eu-west-1", lambda: resolve(base_port) == ["127.0.0.12"], TAKEOVER_DEADLINE_S)
    audit = (directory / "data" / f"controller-{second}-audit.jsonl").read_text()
    assert '"event":"leading"' in audit
