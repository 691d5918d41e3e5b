"""A `mysql_promote` step in a real controller against two real MariaDB servers: the primary
region's app dies while the standby's replica has lost its replication link, so the step refuses
to promote (the audit log names the missing GTIDs and the placement stays); `switchyard failover
--force-data-loss` then retries the same move, which promotes the replica and says what was lost."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import (BINARY, TOKEN, App, assert_config_ok, controller_toml, free_port, start_controller, stop_all,
                     two_regions_toml, wait_until)
from test_controller import run_cli

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]

USERS = """SET sql_log_bin = 0;
DROP USER IF EXISTS ''@'localhost';
CREATE USER 'switchyard'@'%' IDENTIFIED BY 'sw-pass';
GRANT ALL PRIVILEGES ON *.* TO 'switchyard'@'%' WITH GRANT OPTION;
CREATE USER 'repl'@'%' IDENTIFIED BY 'repl-pass';
GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%';
"""


def find(name):
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if Path(p).exists()), None)


def sql(port, statement):
    result = subprocess.run(
        [find("mariadb"), "-h127.0.0.1", f"-P{port}", "-uswitchyard", "-psw-pass", "-N", "-B", "-e", statement],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"{statement}: {result.stderr}"
    return result.stdout.strip()


def can_login(port):
    return subprocess.run([find("mariadb"), "-h127.0.0.1", f"-P{port}", "-uswitchyard", "-psw-pass", "-e", "SELECT 1"],
                          capture_output=True, timeout=30).returncode == 0


def start_mariadb(tmp, name, port, server_id, read_only, processes):
    data, scratch = tmp / name, tmp / f"{name}-tmp"
    scratch.mkdir()
    env = dict(os.environ, TMPDIR=str(scratch))
    root = ["--user=root"] if os.geteuid() == 0 else []
    install = subprocess.run([find("mariadb-install-db"), "--no-defaults", f"--datadir={data}",
                              "--auth-root-authentication-method=normal", "--skip-test-db", *root],
                             env=env, capture_output=True, text=True, timeout=120)
    assert install.returncode == 0, install.stderr
    init = tmp / f"{name}-init.sql"
    init.write_text(USERS)
    log = open(tmp / f"{name}.log", "ab")
    processes.append(subprocess.Popen(
        [find("mariadbd"), "--no-defaults", f"--datadir={data}", f"--port={port}", "--bind-address=127.0.0.1",
         f"--socket={tmp / (name + '.sock')}", f"--pid-file={tmp / (name + '.pid')}", f"--init-file={init}",
         "--skip-name-resolve", "--innodb-buffer-pool-size=16M", f"--server-id={server_id}",
         f"--log-bin={name}-bin", "--log-slave-updates", "--gtid-strict-mode=1", f"--read-only={int(read_only)}",
         *root], env=env, stdout=log, stderr=log))
    wait_until(f"{name} to accept logins", lambda: can_login(port), 60)


def config_text(us, eu, audit, primary, replica, password):
    return controller_toml(audit) + two_regions_toml(us.port, eu.port) + f"""
[[runbook]]
name = "orders-db"
kind = "mysql_promote"
timeout_ms = 20000
retries = 0
[runbook.mysql_promote]
servers = {{ us-east-1 = ["127.0.0.1:{primary}"], eu-west-1 = ["127.0.0.1:{replica}"] }}
user = "switchyard"
password = {{ file = "{password}" }}
replication_user = "repl"
replication_password = {{ file = "{password}-repl" }}
promote_lag_max_ms = 300

[[runbook]]
name = "pointer"
kind = "pointer"
"""


def audit_records(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def step_reports(path, outcome):
    return [r for r in audit_records(path)
            if r.get("kind") == "step" and r.get("step") == "orders-db" and r.get("outcome") == outcome]


def test_a_refused_promotion_stops_the_failover_until_the_operator_forces_it(tmp_path):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built (cargo build -p switchyard)")
    if not (find("mariadbd") and find("mariadb-install-db") and find("mariadb")):
        pytest.skip("mariadbd not found; install the Debian package mariadb-server (scripts/install-test-deps.sh does)")
    processes = []
    us, eu = App(), App()
    try:
        primary, replica = free_port(), free_port()
        start_mariadb(tmp_path, "primary", primary, 1, False, processes)
        start_mariadb(tmp_path, "replica", replica, 2, True, processes)
        sql(primary, "CREATE DATABASE shop; CREATE TABLE shop.orders (id INT PRIMARY KEY)")
        sql(replica, f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={primary}, MASTER_USER='repl', "
                     "MASTER_PASSWORD='repl-pass', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1; START SLAVE")
        sql(primary, "INSERT INTO shop.orders VALUES (1), (2)")

        password = tmp_path / "db.password"
        password.write_text("sw-pass\n")
        Path(f"{password}-repl").write_text("repl-pass\n")
        audit = tmp_path / "audit.jsonl"
        config = tmp_path / "switchyard.toml"
        config.write_text(config_text(us, eu, audit, primary, replica, password))
        env = dict(os.environ, SWITCHYARD_CONTROL_TOKEN=TOKEN)
        assert_config_ok(config, env)
        _, url, log = start_controller(config, tmp_path, processes, env=env)
        # The initial placement (us-east-1) runs the step too: the primary is already there, and
        # its promotion record replicates.
        wait_until("the initial placement", lambda: "active region: us-east-1" in run_cli(
            "status", "--controller", url).stdout, logs=[log])
        assert any("already primary" in r["detail"] for r in step_reports(audit, "ok")), audit.read_text()[-3000:]
        wait_until("the replica to have the orders and the record",
                   lambda: sql(replica, "SELECT COUNT(*) FROM shop.orders") == "2"
                   and sql(replica, "SELECT COUNT(*) FROM switchyard.promotion") == "1")
        # The link to the standby breaks; the primary takes three more orders.
        sql(replica, "STOP SLAVE IO_THREAD")
        sql(primary, "INSERT INTO shop.orders VALUES (3); INSERT INTO shop.orders VALUES (4); "
                     "INSERT INTO shop.orders VALUES (5)")

        us.stop()
        refusals = wait_until("the step to refuse", lambda: step_reports(audit, "refused"), logs=[log])
        detail = json.dumps(refusals[-1])
        assert "lacks 3 transaction(s)" in detail and "0-1-" in detail, detail
        assert "--force-data-loss" in detail, detail
        assert "active region: us-east-1" in run_cli("status", "--controller", url).stdout
        assert sql(primary, "SELECT @@GLOBAL.read_only") == "0", "the old primary got its writes back"

        forced = run_cli("failover", "--force-data-loss", "--controller", url)
        assert forced.returncode == 0, forced.stderr
        assert "retried accepting data loss" in forced.stdout, forced.stdout
        wait_until("the forced failover", lambda: "active region: eu-west-1" in run_cli(
            "status", "--controller", url).stdout, logs=[log])
        ok = [r for r in step_reports(audit, "ok") if "they are lost" in json.dumps(r)]
        assert ok, audit.read_text()[-3000:]
        assert sql(replica, "SELECT @@GLOBAL.read_only") == "0"
        assert sql(replica, "SELECT COUNT(*) FROM shop.orders") == "2"
        assert sql(primary, "SELECT @@GLOBAL.read_only") == "1", "the old primary is fenced"
        started = [r["note"] for r in audit_records(audit)
                   if r.get("kind") == "engine" and r["note"].get("type") == "runbook_started"]
        assert [n.get("force_data_loss", False) for n in started][-1] is True, started
        assert not started[0].get("force_data_loss", False), "only the forced attempt carries it"
    finally:
        stop_all(processes, (us, eu), terminate_s=15)
