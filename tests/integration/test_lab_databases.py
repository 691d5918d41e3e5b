"""`switchyard lab --databases`: per region a real MariaDB and Redis from Debian, started by the
lab (primary in the active region, replicas elsewhere, replication through the fault proxy), the
controller's runbook promoting them (`mysql_promote`, `redis_promote`) before it moves the
traffic, and the demo shop keeping its orders in MariaDB and its sessions in Redis. Against it:

- `region-outage` with `--semi-sync`: kill -9 of the primary region, databases included; the
  report's database figures say both standbys were promoted (with a promotion time), no
  acknowledged order was lost and no write landed on the fenced side after the promotion;
- `db-lag` (a lab of its own): the standby's MariaDB applies far behind when the primary region
  dies; the `mysql_promote` step must refuse, and the report shows the would-be loss.

Skipped only when the MariaDB or Redis binaries are absent (scripts/install-test-deps.sh
installs mariadb-server and redis-server)."""

import functools
import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

import harness
from harness import BINARY, running_lab

# MariaDB's first start (mariadb-install-db) takes a few seconds per region.
START_DEADLINE_S = 120
STEADY_DEADLINE_S = 60
DRILL_TIMEOUT_S = 240
PRIMARY = "us-east-1"

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]


def find(name):
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if Path(p).exists()), None)


def need_servers():
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built (cargo build -p switchyard)")
    missing = [b for b in ("mariadbd", "mariadb-install-db", "redis-server") if not find(b)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed; scripts/install-test-deps.sh installs mariadb-server "
                    "and redis-server")


wait_until = functools.partial(harness.wait_until, ignore=(OSError, ValueError, KeyError), poll_s=0.3)


def active_region(base_port):
    with urllib.request.urlopen(f"http://127.0.0.1:{base_port + 1}/v1/active-region", timeout=5) as response:
        return json.loads(response.read())["region"]


def step_ok(directory, step):
    audit = directory / "data" / "controller-audit.jsonl"
    records = [json.loads(line) for line in audit.read_text().splitlines() if line.strip()]
    return any(r.get("kind") == "step" and r.get("step") == step and r.get("outcome") == "ok" for r in records)


def run_drill(directory, root, scenario, duration_s, settle_s):
    report_path, output = root / f"{scenario}.json", root / f"{scenario}.out"
    with open(output, "w") as out:
        process = subprocess.run(
            [str(BINARY), "drill", scenario, "--lab", str(directory), "--warmup-s", "6", "--duration-s",
             str(duration_s), "--settle-s", str(settle_s), "--json", str(report_path), "--no-progress"],
            stdout=out, stderr=subprocess.STDOUT, timeout=DRILL_TIMEOUT_S)
    text = output.read_text()
    assert report_path.exists(), text[-5000:]
    return process.returncode, json.loads(report_path.read_text()), text


def database(report, kind):
    found = [d for d in report["databases"]["databases"] if d["kind"] == kind]
    assert found, report["databases"]
    return found[0]


def ready(lab):
    """The first placement promoted both databases, so the shop in the primary region writes."""
    directory, base_port = lab
    wait_until(f"{PRIMARY} active", lambda: active_region(base_port) == PRIMARY, STEADY_DEADLINE_S)
    wait_until("the first promotion of both databases",
               lambda: step_ok(directory, "orders-db") and step_ok(directory, "sessions"), STEADY_DEADLINE_S)


def test_region_outage_promotes_both_databases_and_loses_no_acknowledged_order_with_semi_sync(tmp_path):
    need_servers()
    with running_lab(BINARY, tmp_path, "--regions", "2", "--databases", "--semi-sync", "--quiet",
                     start_deadline_s=START_DEADLINE_S) as lab:
        directory, _ = lab
        ready(lab)
        targets = (directory / "drill-targets.toml").read_text()
        assert 'database_processes = ["mariadb-us-east-1", "redis-us-east-1", "guard-us-east-1"]' in targets, targets
        code, report, text = run_drill(directory, tmp_path, "region-outage", duration_s=15, settle_s=8)
        assert code == 0 and report["passed"] is True, text[-5000:]
        orders, sessions = database(report, "mariadb"), database(report, "redis")
        for db in (orders, sessions):
            assert db["promoted"] is True, db
            assert db["fault_to_writable_ms"] is not None and db["detection_to_writable_ms"] is not None, db
            assert db["split_brain_writes"] == 0, db
            assert db["check_error"] is None, db
        # Not vacuous: the shop took orders in MariaDB during the drill, every one is on the
        # promoted standby (semi-sync: acknowledged means a replica has it).
        assert orders["acknowledged"] > 0 and orders["acknowledged_lost"] == 0, orders
        assert orders["checked_on"].endswith(":%d" % (lab.base_port + 200 + 60)), orders
        assert report["databases"]["semi_sync"] is True
        names = {e["name"]: e for e in report["expectations"]}
        assert names["mariadb acknowledged orders lost (semi-sync)"]["passed"] is True, names
        assert "mariadb: detection → writable standby" in text, text[-3000:]


def test_db_lag_refuses_to_promote_a_standby_beyond_promote_lag_max_ms(tmp_path):
    need_servers()
    with running_lab(BINARY, tmp_path, "--regions", "2", "--databases", "--quiet",
                     start_deadline_s=START_DEADLINE_S) as lab:
        directory, _ = lab
        ready(lab)
        code, report, text = run_drill(directory, tmp_path, "db-lag", duration_s=12, settle_s=3)
        orders = database(report, "mariadb")
        assert orders["promoted"] is False, orders
        assert orders["refused"] and "promote_lag_max_ms" in orders["refused"], orders
        # The would-be loss: orders the standby received during the delay and had not applied.
        assert orders["would_be_lost"] and orders["would_be_lost"] > 0, orders
        assert orders["acknowledged"] > 0, orders
        names = {e["name"]: e for e in report["expectations"]}
        refusal = names["mariadb promotion refused beyond promote_lag_max_ms"]
        assert refusal["passed"] is True, refusal
        assert "mariadb: promotion refused, would lose" in text, text[-3000:]
        assert code == 0 and report["passed"] is True, text[-5000:]


def test_db_partition_the_guard_stops_the_cut_off_old_primary_writing(tmp_path):
    """The primary region cut off from everything but its own clients, its databases included:
    the controller cannot fence the old primary, which its shops keep writing to; the region's
    guard hears the move through the region's pointer link and fences it."""
    need_servers()
    with running_lab(BINARY, tmp_path, "--regions", "2", "--databases", "--quiet",
                     start_deadline_s=START_DEADLINE_S) as lab:
        directory, _ = lab
        ready(lab)
        targets = (directory / "drill-targets.toml").read_text()
        assert '"database:us-east-1" = ["mariadb-us-east-1", "redis-us-east-1"]' in targets, targets
        code, report, text = run_drill(directory, tmp_path, "db-partition", duration_s=15, settle_s=8)
        orders = database(report, "mariadb")
        assert orders["promoted"] is True, orders
        assert "unreachable" in (orders["detail"] or ""), orders
        names = {e["name"]: e for e in report["expectations"]}
        guarded = names["mariadb writes on the cut-off old primary stopped by its guard"]
        assert guarded["passed"] is True, guarded
        guard_log = (directory / "logs" / "guard-us-east-1.log")
        assert guard_log.exists(), sorted(p.name for p in (directory / "logs").iterdir())
        log = guard_log.read_text()
        assert "the controller made eu-west-1 the active region" in log, log[-3000:]
        # Its /health (port block + 64) says the same: rounds going on, fencing for the move.
        _, base_port = lab
        with urllib.request.urlopen(f"http://127.0.0.1:{base_port + 100 + 64}/health", timeout=5) as response:
            health = json.loads(response.read())
        assert health["status"] == "ok" and health["region"] == "us-east-1", health
        assert health["decision"] == "fence" and health["active_region"] == "eu-west-1", health
        assert code == 0 and report["passed"] is True, text[-5000:]
