"""The lab end to end: `switchyard lab` starts every component as a child process (stores with
global tables, demo shops behind load balancers, DNS, the controller with three agents, the
fault-proxy network); the shop is used through DNS like a client would; a region's front door
is cut through the fault proxy's Toxiproxy API and the lab fails over; `lab ctl` kills and
restarts a component; SIGTERM stops everything."""

import functools
import http.cookiejar
import json
import random
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest

import harness
from harness import BINARY, lab_resolve

START_DEADLINE_S = 60
FAILOVER_DEADLINE_S = 30

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]


def get_json(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


wait_until = functools.partial(harness.wait_until, ignore=(OSError, urllib.error.URLError, ValueError), poll_s=0.2)


resolve = lab_resolve


def lab_cli(*args):
    return subprocess.run([str(BINARY), "lab", *args], capture_output=True, text=True, timeout=90)


def status_cli(directory):
    """`switchyard status --lab DIR`: the controller CLI's view of a whole lab."""
    return subprocess.run([str(BINARY), "status", "--lab", str(directory)], capture_output=True, text=True,
                          timeout=90)


def lab_is_up(process, directory):
    """Whether the lab is up by `switchyard status --lab` (or its process ended). The first time
    status says up, every component must be in the table: a lab still starting is not up."""
    if process.poll() is not None:
        return True
    status = status_cli(directory)
    if status.returncode != 0:
        return False
    assert "agent-3" in status.stdout and "controller" in status.stdout, status.stdout
    return True


@pytest.fixture
def lab(tmp_path):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built")
    directory = tmp_path / "lab"
    log = open(tmp_path / "lab.log", "w")
    for _ in range(10):
        # Below the kernel's ephemeral range (32768+), where outgoing connections take ports.
        base_port = random.randrange(20000, 32000, 500)
        # A relative --dir, as the README has users give it (the default is ./lab).
        process = subprocess.Popen(
            [str(BINARY), "lab", "--dir", "lab", "--base-port", str(base_port)],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
        )
        try:
            wait_until("switchyard status --lab saying up", lambda: lab_is_up(process, directory), START_DEADLINE_S)
        except AssertionError:
            process.kill()
            raise AssertionError((tmp_path / "lab.log").read_text()[-5000:])
        if process.poll() is None:
            break
        assert "not free" in (tmp_path / "lab.log").read_text(), (tmp_path / "lab.log").read_text()[-5000:]
    else:
        pytest.fail("no free port block for the lab")
    yield directory, base_port, process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, (tmp_path / "lab.log").read_text()[-5000:]
        state = json.loads((directory / "lab.json").read_text())
        for component in state["components"]:
            assert component["state"] in ("stopped", "exited (killed by SIGKILL)") or component["pid"] is None, \
                component
    for component in running_components(directory):
        raise AssertionError(f"{component['name']} (pid {component['pid']}) still runs")


def running_components(directory):
    """The lab's components (from lab.json) whose process still runs this binary."""
    state = json.loads((directory / "lab.json").read_text())
    running = []
    for component in state["components"]:
        if not component["pid"]:
            continue
        try:
            command = Path(f"/proc/{component['pid']}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if Path(command.decode(errors="replace")).resolve() == BINARY.resolve():
            running.append(component)
    return running


def test_lab_serves_the_shop_through_dns_and_fails_over(lab):
    directory, base_port, process = lab
    status = lab_cli("--status", "--dir", str(directory))
    assert status.returncode == 0, status.stdout + status.stderr
    assert "store-eu-west-1" in status.stdout and "controller" in status.stdout
    targets = (directory / "drill-targets.toml").read_text()
    assert '"replication:us-east-1:eu-west-1" = "repl-us-east-1-to-eu-west-1"' in targets

    controller = f"http://127.0.0.1:{base_port + 1}"
    pointer = wait_until("the controller choosing a region",
                         lambda: get_json(f"{controller}/v1/active-region")["region"] and
                         get_json(f"{controller}/v1/active-region"), START_DEADLINE_S)
    assert pointer["region"] == "us-east-1"
    assert wait_until("DNS answering", lambda: resolve(base_port), 10) == ["127.0.0.11"]
    # Files the generated configurations name land in the lab's folder, though --dir was
    # relative: the controller reads its config relative to config/, the drill targets run
    # from wherever a drill is started.
    wait_until("the controller's audit log in lab/data/",
               lambda: (directory / "data" / "controller-audit.jsonl").exists(), START_DEADLINE_S)
    assert not (directory / "config" / "lab").exists()
    assert f"--dir {directory.resolve()}" in targets, targets

    shop_port = base_port + 80
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def place(address):
        request = urllib.request.Request(f"http://{address}:{shop_port}/api/cart", method="POST",
                                         data=json.dumps({"product": "grinder"}).encode())
        opener.open(request, timeout=5).read()
        request = urllib.request.Request(f"http://{address}:{shop_port}/api/orders", method="POST", data=b"")
        with opener.open(request, timeout=5) as response:
            assert response.status == 201
            return json.loads(response.read())

    first = wait_until("a first order", lambda: place(resolve(base_port)[0]), START_DEADLINE_S)
    assert first["region"] == "us-east-1"

    # Cut us-east-1's front door: clients and health checks no longer reach it.
    request = urllib.request.Request(f"http://127.0.0.1:{base_port}/proxies/frontend-us-east-1", method="POST",
                                     data=json.dumps({"enabled": False}).encode())
    urllib.request.urlopen(request, timeout=5).read()
    moved = wait_until("failover to eu-west-1",
                       lambda: get_json(f"{controller}/v1/active-region")["region"] == "eu-west-1" and
                       get_json(f"{controller}/v1/active-region"), FAILOVER_DEADLINE_S)
    assert moved["generation"] > pointer["generation"]
    assert wait_until("DNS moving", lambda: resolve(base_port) == ["127.0.0.12"], FAILOVER_DEADLINE_S)
    second = wait_until("an order in eu-west-1", lambda: place(resolve(base_port)[0]), FAILOVER_DEADLINE_S)
    assert (second["region"], second["generation"]) == ("eu-west-1", moved["generation"])

    # Process faults through the supervisor.
    killed = lab_cli("ctl", "--dir", str(directory), "kill", "shop-eu-west-1-2")
    assert killed.returncode == 0, killed.stderr
    status = lab_cli("--status", "--dir", str(directory))
    assert status.returncode != 0 and "shop-eu-west-1-2 is exited (killed by SIGKILL)" in status.stderr, status.stderr
    # The table on stdout as when all is well, only the reason on stderr.
    assert status.stdout.startswith("component") and "store-us-east-1" in status.stdout, status.stdout
    assert "component" not in status.stderr, status.stderr
    status = status_cli(directory)
    assert status.returncode != 0 and "shop-eu-west-1-2 is exited (killed by SIGKILL)" in status.stderr, status.stderr
    restarted = lab_cli("ctl", "--dir", str(directory), "restart", "shop-eu-west-1-2")
    assert restarted.returncode == 0, restarted.stderr
    assert lab_cli("--status", "--dir", str(directory)).returncode == 0
    assert status_cli(directory).returncode == 0
    unknown = lab_cli("ctl", "--dir", str(directory), "stop", "no-such-component")
    assert unknown.returncode != 0 and "store-us-east-1" in unknown.stderr

    # Heal the network: after the lab's hold time the controller fails back, and both orders
    # are in the home region's store (the one written in eu-west-1 came by replication).
    request = urllib.request.Request(f"http://127.0.0.1:{base_port}/reset", method="POST", data=b"")
    urllib.request.urlopen(request, timeout=5).read()
    back = wait_until("failback to us-east-1",
                      lambda: get_json(f"{controller}/v1/active-region")["region"] == "us-east-1" and
                      get_json(f"{controller}/v1/active-region"), FAILOVER_DEADLINE_S + 30)
    assert back["generation"] > moved["generation"]
    assert wait_until("DNS moving back", lambda: resolve(base_port) == ["127.0.0.11"], FAILOVER_DEADLINE_S)
    store = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{base_port + 100}",
                         aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret")
    orders = {item["order_id"]["S"] for item in store.scan(TableName="shop_orders")["Items"]}
    assert {first["order_id"], second["order_id"]} <= orders, orders


def test_a_second_lab_in_the_same_directory_is_refused(lab):
    directory, base_port, _ = lab
    second = lab_cli("--dir", str(directory), "--base-port", str(base_port + 500))
    assert second.returncode != 0
    assert "already running" in second.stderr, second.stderr


def test_a_sigkilled_lab_leaves_nothing_running(lab):
    """SIGKILL gives the lab no chance to stop its components; they notice their supervisor is
    gone and exit on their own, so no orphan keeps the lab's ports."""
    directory, _, process = lab
    assert len(running_components(directory)) >= 10, "the lab's components run before the kill"
    process.kill()
    process.wait(timeout=10)
    wait_until("every component to exit after the lab's SIGKILL",
               lambda: running_components(directory) == [], 20)


def test_bad_input_is_refused_with_the_fix(tmp_path):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built")
    import socket

    for _ in range(5):
        with socket.socket() as taken:
            # Below the ephemeral range, so the lab's other ports are very likely free.
            for _ in range(20):
                try:
                    taken.bind(("127.0.0.1", random.randrange(20100, 32000)))
                    break
                except OSError:
                    continue
            taken.listen()
            port = taken.getsockname()[1]
            # Put the lab's store of us-east-1 (base + 100) on the taken port.
            result = lab_cli("--dir", str(tmp_path / "lab"), "--base-port", str(port - 100))
        assert result.returncode != 0
        assert "is not free" in result.stderr and "--base-port" in result.stderr, result.stderr
        # Another port of the block may be in use by someone else (a lab of an earlier test
        # still closing): then try another block.
        # A lab refused before it started leaves no directory it made.
        assert not (tmp_path / "lab").exists(), list((tmp_path / "lab").iterdir())
        if f"127.0.0.1:{port}" in result.stderr:
            break
    else:
        pytest.fail(f"every block tried had another port in use: {result.stderr[:500]}")
    result = lab_cli("--dir", str(tmp_path / "lab"), "--regions", "6")
    assert result.returncode != 0 and "2 to 5" in result.stderr, result.stderr
    result = lab_cli("--status", "--dir", str(tmp_path / "nowhere"))
    assert result.returncode != 0 and "switchyard lab --dir" in result.stderr, result.stderr
    result = status_cli(tmp_path / "nowhere")
    assert result.returncode != 0 and "switchyard lab --dir" in result.stderr, result.stderr
