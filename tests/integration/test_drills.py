"""The CI drills: `switchyard lab --regions 2` and, against it, `switchyard drill` with short
durations for `vantage-partition` (one vantage point cut off from the primary: no failover),
`region-outage` (kill -9 of the whole primary region: failover) and `failback` (the primary
comes back and traffic returns), each asserting its exit code and, from `--json`, the
scenario's expectations: failover happened or did not, zero acknowledged writes lost (writes
of an isolated region are reported apart), convergence after healing.

The drills share one lab (started once for the module); before each drill the test waits until
the lab is whole again (`switchyard status --lab`) and the primary region is active."""

import functools
import json
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pytest

import harness
from harness import BINARY, lab_status, running_lab

START_DEADLINE_S = 60
# Longer than the lab's hold (10 s) plus its stability window and a restart.
STEADY_DEADLINE_S = 90
DRILL_TIMEOUT_S = 180
PRIMARY = "us-east-1"
SECONDARY = "eu-west-1"

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]


wait_until = functools.partial(
    harness.wait_until, ignore=(OSError, urllib.error.URLError, ValueError, KeyError), poll_s=0.3)


status = lab_status


def active_region(base_port):
    with urllib.request.urlopen(f"http://127.0.0.1:{base_port + 1}/v1/active-region", timeout=5) as response:
        return json.loads(response.read())["region"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built")
    root = tmp_path_factory.mktemp("drills")
    with running_lab(BINARY, root, "--regions", "2", start_deadline_s=START_DEADLINE_S) as running:
        yield running.directory, running.base_port, root


def drill(lab, scenario, *, duration_s, settle_s, during=None):
    """Waits for a whole lab with the primary active, runs the drill, returns its JSON report
    and whether `during(base_port)` held at some point while the drill ran."""
    directory, base_port, root = lab
    wait_until("every lab component up", lambda: status(directory).returncode == 0, STEADY_DEADLINE_S)
    wait_until(f"{PRIMARY} active", lambda: active_region(base_port) == PRIMARY, STEADY_DEADLINE_S)
    report_path = root / f"{scenario}.json"
    output = root / f"{scenario}.out"
    with open(output, "w") as out:
        process = subprocess.Popen(
            [str(BINARY), "drill", scenario, "--lab", str(directory), "--warmup-s", "5", "--duration-s",
             str(duration_s), "--settle-s", str(settle_s), "--json", str(report_path), "--html",
             str(root / f"{scenario}.html"), "--no-progress"],
            stdout=out, stderr=subprocess.STDOUT,
        )
        seen = False
        deadline = time.monotonic() + DRILL_TIMEOUT_S
        while process.poll() is None:
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"{scenario} ran over {DRILL_TIMEOUT_S}s:\n{output.read_text()[-5000:]}")
            if during is not None and not seen:
                try:
                    seen = bool(during(base_port))
                except (OSError, urllib.error.URLError, ValueError, KeyError):
                    pass
            time.sleep(0.3)
    assert process.returncode == 0, f"{scenario} failed:\n{output.read_text()[-5000:]}"
    report = json.loads(report_path.read_text())
    assert report["scenario"] == scenario and report["passed"] is True
    failed = [e for e in report["expectations"] if not e["passed"]]
    assert not failed, failed
    assert "<svg" in (root / f"{scenario}.html").read_text()
    steps = [e for e in report["events"] if e["kind"] == "step"]
    assert steps and all(e["ok"] for e in steps), steps
    return report, seen


def assert_nothing_lost(report):
    check = report["check"]
    assert check["acknowledged"] > 0, check
    # Every acknowledged write is present or superseded by a later one; the isolated region's
    # writes (none in these scenarios) are counted apart.
    assert check["lost"] == 0 and check["isolated_lost"] == 0, check
    assert check["acknowledged"] == check["present"] + check["superseded"] + check["overwritten"], check
    assert check["divergent_keys"] == [], check
    assert check["unknown_values"] == 0 and check["failed_present"] == 0, check


def test_vantage_partition_does_not_fail_over(lab):
    def one_vantage_sees_the_primary_down(base_port):
        with urllib.request.urlopen(f"http://127.0.0.1:{base_port + 1}/v1/status", timeout=5) as response:
            verdict = json.loads(response.read())["verdicts"][PRIMARY]
        return verdict["votes_down"] == 1 and verdict["votes_up"] == 3

    report, cut = drill(lab, "vantage-partition", duration_s=10, settle_s=5, during=one_vantage_sees_the_primary_down)
    # Not vacuous: the cut reached one vantage point's checks, and only that one's.
    assert cut, "no moment where exactly one vantage point saw the primary down"
    measured = report["measurements"]
    assert measured["failovers"] == 0 and measured["region_changes"] == 0, measured
    assert measured["generation_end"] == measured["generation_start"], measured
    assert measured["rto_dns_ms"] is None, measured
    assert_nothing_lost(report)
    assert measured["converge_ms"] is not None, measured


def test_region_outage_fails_over(lab):
    report, _ = drill(lab, "region-outage", duration_s=15, settle_s=15)
    measured = report["measurements"]
    assert measured["failovers"] >= 1 and measured["false_failovers"] == 0, measured
    assert measured["dns_answer_before"] == ["127.0.0.11"], measured
    assert measured["dns_answer_switched_to"] == ["127.0.0.12"], measured
    assert measured["rto_dns_ms"] is not None and measured["rto_99_ms"] is not None, measured
    assert_nothing_lost(report)
    assert measured["converge_ms"] is not None, measured


def test_failback_returns_with_nothing_lost(lab):
    report, _ = drill(lab, "failback", duration_s=15, settle_s=30)
    measured = report["measurements"]
    assert measured["failovers"] >= 2, measured
    assert measured["failback_ms"] is not None, measured
    assert_nothing_lost(report)
    assert measured["converge_ms"] is not None, measured


def toxics(base_port):
    """Every toxic on the lab's network (the fault proxy's Toxiproxy API), and disabled links."""
    with urllib.request.urlopen(f"http://127.0.0.1:{base_port}/proxies", timeout=5) as response:
        proxies = json.loads(response.read())
    found = [(name, toxic["name"]) for name, proxy in proxies.items() for toxic in proxy.get("toxics", [])]
    found += [(name, "disabled") for name, proxy in proxies.items() if not proxy.get("enabled", True)]
    return found


def test_an_interrupted_drill_heals_the_faults_it_injected(lab):
    directory, base_port, root = lab
    wait_until("every lab component up", lambda: status(directory).returncode == 0, STEADY_DEADLINE_S)
    assert toxics(base_port) == []
    output = root / "interrupted.out"
    with open(output, "w") as out:
        process = subprocess.Popen(
            [str(BINARY), "drill", "slow-region", "--lab", str(directory), "--warmup-s", "2", "--duration-s",
             "120", "--settle-s", "5", "--no-progress"],
            stdout=out, stderr=subprocess.STDOUT,
        )
        try:
            injected = wait_until("the drill's latency toxics on the network",
                                  lambda: [t for t in toxics(base_port) if t[1].startswith("drill-slow")], 60)
            assert process.poll() is None
            process.send_signal(signal.SIGINT)
            returncode = process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    text = output.read_text()
    assert injected, text[-3000:]
    assert returncode != 0, text[-3000:]
    assert "interrupted: the faults this drill injected were healed" in text, text[-3000:]
    # The verdict says what happened: stopped, not failed by the system under test.
    assert "drill slow-region: INTERRUPTED" in text and "FAILED" not in text, text[-3000:]
    assert "stopped after " in text and " of 127.0 s" in text, text[-3000:]
    assert toxics(base_port) == [], text[-3000:]
