"""The `rfc2136` and `haproxy` runbook steps from the outside: `switchyard config check` points
at each mistake in their `[runbook.KIND]` tables with line:column, and `switchyard lab
--providers` runs a real BIND9 primary, HAProxy and moto's server (the AWS API: a Route 53
hosted zone and an SSM parameter; moto stands in for AWS, which cannot run here) that the
lab's controller drives, so `switchyard drill region-outage` reports an RTO per provider.
Killing the lab with SIGKILL takes BIND9, HAProxy and moto down too. (The steps against BIND9 and HAProxy alone are tested in
crates/providers/tests/it.)"""

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import harness
from harness import BINARY, running_lab

START_DEADLINE_S = 90
STEADY_DEADLINE_S = 90
DRILL_TIMEOUT_S = 180
GONE_DEADLINE_S = 20
# The stability window (10 s in the lab) after the drill, then the failback runbook.
FAILBACK_DEADLINE_S = 90

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]


wait_until = functools.partial(harness.wait_until, poll_s=0.3)


def run(*args, timeout=60):
    return subprocess.run([str(BINARY), *args], capture_output=True, text=True, timeout=timeout)


HEAD = """[controller]
vantage = "controller"
audit_log = "audit.jsonl"

[[regions]]
name = "us-east-1"
priority = 1

[[regions]]
name = "eu-west-1"
priority = 2

[[checks]]
name = "use1-app"
region = "us-east-1"
kind = { type = "http", url = "http://127.0.0.11/health" }

[[checks]]
name = "euw1-app"
region = "eu-west-1"
kind = { type = "http", url = "http://127.0.0.12/health" }
"""

STEPS = """
[[runbook]]
name = "bind"
kind = "rfc2136"

[runbook.rfc2136]
server = "192.0.2.53"
zone = "shop.example."
name = "www.shop.example."
type = "A"
key = { file = "switchyard.key" }

[runbook.rfc2136.values]
"us-east-1" = ["192.0.2.1"]
"eu-west-1" = ["192.0.2.2"]

[[runbook]]
name = "lb"
kind = "haproxy"

[runbook.haproxy]
socket = "/run/haproxy/admin.sock"

[runbook.haproxy.regions]
"us-east-1" = ["shop/us1", "shop/us2"]
"eu-west-1" = ["shop_eu"]
"""

KEY = 'key "switchyard" {\n\talgorithm hmac-sha256;\n\tsecret "2HK0YGgkgF7e+w1Yk1tBF5h5qGFQf3c1l0jC2hL6R3A=";\n};\n'


def line_of(text, needle):
    return text.splitlines().index(needle) + 1


def test_config_check_accepts_the_steps_and_points_at_each_mistake(tmp_path):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built (cargo build -p switchyard)")
    (tmp_path / "switchyard.key").write_text(KEY)
    good = tmp_path / "good.toml"
    good.write_text(HEAD + STEPS)
    checked = run("config", "check", str(good))
    assert checked.returncode == 0, checked.stderr

    bad_text = (HEAD + STEPS
                .replace('name = "www.shop.example."', 'name = "www.other.example."')
                .replace('type = "A"', 'type = "MX"')
                .replace('"eu-west-1" = ["192.0.2.2"]', '"eu-west-1" = ["192.0.2.2"]\n"mars-1" = ["192.0.2.9"]')
                .replace('key = { file = "switchyard.key" }', 'key = { file = "absent.key" }')
                .replace('socket = "/run/haproxy/admin.sock"', 'socket = "/run/haproxy/admin.sock"\nstandby = "off"')
                .replace('"eu-west-1" = ["shop_eu"]', '"eu-west-1" = ["shop_eu", "bad name"]')
                + '\n[[runbook]]\nname = "bare"\nkind = "rfc2136"\n')
    bad = tmp_path / "bad.toml"
    bad.write_text(bad_text)
    result = run("config", "check", str(bad))
    assert result.returncode == 1, result.stdout
    errors = result.stderr
    expected = [
        ('name = "www.other.example."', "name 'www.other.example.' is not inside zone 'shop.example.'"),
        ('type = "MX"', "type 'MX' is not supported"),
        ('"mars-1" = ["192.0.2.9"]', "values names region 'mars-1', which is not configured"),
        ('key = { file = "absent.key" }', "cannot read"),
        ('standby = "off"', "standby = 'off'"),
        ('"eu-west-1" = ["shop_eu", "bad name"]', "'bad name' is not BACKEND/SERVER"),
        ('kind = "rfc2136"', "has no [runbook.rfc2136] table"),
    ]
    for line_text, message in expected:
        # The last `kind = "rfc2136"` is the bare step's.
        lines = bad_text.splitlines()
        line = len(lines) - lines[::-1].index(line_text) if line_text.startswith("kind") else line_of(bad_text, line_text)
        assert f"{bad}:{line}:" in errors and message in errors, f"{message} at line {line}:\n{errors}"
        problem = next(l for l in errors.splitlines() if message in l)
        assert problem.startswith(f"{bad}:{line}:"), f"{message!r} is not at line {line}: {problem}"
    assert "fix:" in errors
    assert "2HK0Y" not in errors, "the secret never shows"


def pids_of(pattern):
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return {int(p) for p in found.stdout.split()}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built")
    missing = [p for p in ("named", "haproxy") if not (shutil.which(p) or Path(f"/usr/sbin/{p}").exists())]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: apt-get install bind9 haproxy (scripts/install-test-deps.sh)")
    # moto's server comes with the test venv (tests/requirements.txt); the lab finds it on PATH.
    venv_bin = Path(sys.prefix) / "bin"
    if not (venv_bin / "moto_server").exists():
        pytest.skip("moto_server not installed: pip install 'moto[server]' (scripts/install-test-deps.sh)")
    env = dict(os.environ, PATH=f"{venv_bin}:{os.environ.get('PATH', '')}")
    root = tmp_path_factory.mktemp("providers")
    with running_lab(BINARY, root, "--regions", "2", "--providers", start_deadline_s=START_DEADLINE_S,
                     env=env) as lab:
        yield lab.directory, lab.base_port, root, lab


def test_a_region_outage_moves_every_provider_and_the_drill_times_each(lab):
    directory, base_port, root, _running = lab
    audit = directory / "data" / "controller-audit.jsonl"

    controller = f"http://127.0.0.1:{base_port + 1}"

    def settled_on_the_primary():
        # The drill faults whichever region is active when it starts. On a loaded machine the
        # lab's start can fail over once (and fail back after the stability window), so wait
        # for us-east-1 to hold the pointer with every provider step of its generation done.
        with urllib.request.urlopen(f"{controller}/v1/active-region", timeout=5) as response:
            pointer = json.loads(response.read())
        if pointer["region"] != "us-east-1":
            return False
        steps = [json.loads(l) for l in audit.read_text().splitlines() if '"kind":"step"' in l]
        done = {s["step"] for s in steps if s["outcome"] == "ok" and s["generation"] == pointer["generation"]}
        return done >= {"bind9", "haproxy", "route53", "ssm"}

    wait_until("us-east-1 active with its runbook's provider steps done", settled_on_the_primary,
               STEADY_DEADLINE_S, ignore=(OSError, urllib.error.URLError, ValueError, KeyError))
    report_path = root / "region-outage.json"
    output = root / "region-outage.out"
    result = subprocess.run(
        [str(BINARY), "drill", "region-outage", "--lab", str(directory), "--warmup-s", "5", "--duration-s", "12",
         "--settle-s", "8", "--json", str(report_path), "--no-progress"],
        capture_output=True, text=True, timeout=DRILL_TIMEOUT_S,
    )
    output.write_text(result.stdout + result.stderr)
    assert result.returncode == 0, output.read_text()[-5000:]
    report = json.loads(report_path.read_text())
    by_name = {e["name"]: e for e in report["expectations"]}
    runbooks = [l for l in audit.read_text().splitlines() if '"kind":"step"' not in l][-12:]
    for provider in ("rfc2136", "haproxy", "route53", "ssm"):
        expectation = by_name[f"RTO({provider})"]
        assert expectation["passed"] and "eu-west-1" in expectation["actual"], \
            (expectation, report["measurements"]["providers"], runbooks)
    measured = {p["provider"]: p for p in report["measurements"]["providers"]}
    assert measured["rfc2136"]["before"] == "us-east-1" and measured["rfc2136"]["rto_ms"] is not None
    assert measured["haproxy"]["switched_to"] == "eu-west-1"
    for provider in ("route53", "ssm"):
        assert measured[provider]["before"] == "us-east-1" and measured[provider]["switched_to"] == "eu-west-1", \
            measured[provider]
    steps = [json.loads(l) for l in audit.read_text().splitlines() if '"kind":"step"' in l]
    moved = [s for s in steps if s["step"] == "bind9" and s["outcome"] == "ok" and "127.0.0.12" in s["detail"]]
    assert moved and "verified" in moved[0]["detail"], steps[-6:]
    route53 = [s for s in steps if s["step"] == "route53" and s["outcome"] == "ok" and "127.0.0.12" in s["detail"]]
    assert route53 and "INSYNC" in route53[0]["detail"], steps[-8:]
    # `status` shows each step's last attempt: what each provider was told and answered.
    shown = run("status", "--controller", controller, "--json")
    assert shown.returncode == 0, shown.stderr
    last = {s["name"]: s for s in json.loads(shown.stdout)["steps"]}
    for name, kind in (("bind9", "rfc2136"), ("haproxy", "haproxy"), ("route53", "route53"), ("ssm", "ssm_parameter")):
        assert last[name]["kind"] == kind and last[name]["last"]["outcome"] == "ok", last[name]
        assert last[name]["last"]["generation"] >= 2, last[name]
    assert "127.0.0.12" in last["route53"]["last"]["detail"], last["route53"]
    table = run("status", "--controller", controller)
    assert table.returncode == 0 and "ssm_parameter" in table.stdout and "route53" in table.stdout, table.stdout

    # The automatic failback (the lab's stability window) moves every provider back. Route 53
    # is the hard one: the failback writes a value written before (generation 1), which plain
    # moto refused as "already exists" although the batch deletes the old value first (Route
    # 53 applies a batch in order), and the controller took that for a stale write and fenced
    # itself. The lab runs moto with its correction (crates/lab/src/moto_lab.py).
    failover_generation = max(s["generation"] for s in route53)

    def failback_route53():
        steps = [json.loads(l) for l in audit.read_text().splitlines() if '"kind":"step"' in l]
        return [s for s in steps if s["step"] == "route53" and s["generation"] > failover_generation]

    wait_until("the failback's route53 step", failback_route53, FAILBACK_DEADLINE_S)
    back = failback_route53()[0]
    assert back["outcome"] == "ok" and "127.0.0.11" in back["detail"], back
    status = json.loads(run("status", "--controller", controller, "--json").stdout)
    assert status["engine"]["fenced"] is False, status["engine"]


def test_a_killed_lab_takes_bind9_haproxy_and_moto_along(lab):
    directory, base_port, _root, running = lab
    process, log_path = running.process, running.log_path
    named = pids_of(str(directory / "config" / "named.conf"))
    haproxy = pids_of(str(directory / "config" / "haproxy.cfg"))
    moto = pids_of(f"moto_lab.py -H 127.0.0.1 -p {base_port + 6}")
    assert named and haproxy and moto, log_path.read_text()[-3000:]
    running.killed()
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    wait_until("BIND9, HAProxy and moto to exit with the lab",
               lambda: not (pids_of(str(directory / "config" / "named.conf"))
                            | pids_of(str(directory / "config" / "haproxy.cfg"))
                            | pids_of(f"moto_lab.py -H 127.0.0.1 -p {base_port + 6}")),
               GONE_DEADLINE_S)
