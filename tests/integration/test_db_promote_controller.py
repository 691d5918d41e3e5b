"""`mysql_promote` and `redis_promote` run by a real controller against real servers from Debian
(a MariaDB primary and replica, a Redis master and replica, started here), while an application
keeps writing to the old primaries (Jepsen-style: numbered writes, each either acknowledged or
refused):

- `switchyard failover`: both replicas in eu-west-1 are promoted under the order's generation
  (audit log and the promotion records agree), the old primaries are fenced (MariaDB read-only,
  Redis a replica) and rejoined as replicas, every write the old primaries acknowledged is on the
  new ones, and writes after the fence were refused, not lost; then `switchyard failback` moves
  both back under a newer generation.
- The promote window with the old primary cut off from the controller (it cannot be fenced at
  the database) while it keeps taking writes and a second replica keeps receiving from it: the
  new primary never takes the old one's later writes, the second replica is left fenced and
  named with its errant GTIDs instead of being rejoined, and when the old primary is reachable
  again a move back to it is refused with its errant transactions and their table.
"""

import json
import os
import subprocess
import threading
from pathlib import Path

import pytest

import harness
from harness import (BINARY, TOKEN, App, assert_config_ok, controller_toml, free_port, stop_all, two_regions_toml,
                     wait_until)
from test_controller import run_cli
from test_providers_databases import audit_records, find, sql, start_mariadb

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]

REDIS_USER, REDIS_PASSWORD = "switchyard", "redis-pass"
APP_GRANTS = """SET sql_log_bin = 0;
CREATE USER 'app'@'%' IDENTIFIED BY 'app-pass';
GRANT SELECT, INSERT ON shop.* TO 'app'@'%';
CREATE USER 'admin'@'%' IDENTIFIED BY 'admin-pass';
GRANT ALL PRIVILEGES ON *.* TO 'admin'@'%' WITH GRANT OPTION;
"""


def need(*binaries):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built (cargo build -p switchyard)")
    missing = [b for b in binaries if not find(b)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not found; scripts/install-test-deps.sh installs mariadb-server and redis-server")


def app_insert(port, n):
    """One numbered order as the shop's (unprivileged) account: 'ok', 'refused' (read-only) or
    'error' (anything else: connection killed or refused, which acknowledges nothing)."""
    result = subprocess.run(
        [find("mariadb"), "-h127.0.0.1", f"-P{port}", "-uapp", "-papp-pass", "-e", f"INSERT INTO shop.orders VALUES ({n})"],
        capture_output=True, text=True, timeout=30)
    if result.returncode == 0:
        return "ok"
    return "refused" if "1290" in result.stderr or "read-only" in result.stderr else "error"


def admin_sql(port, statement):
    """As the DBA (not the step's account, which the cut-off test locks)."""
    result = subprocess.run([find("mariadb"), "-h127.0.0.1", f"-P{port}", "-uadmin", "-padmin-pass", "-N", "-B", "-e",
                             statement], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"{statement}: {result.stderr}"
    return result.stdout.strip()


def redis_cli(port, *args):
    return subprocess.run([find("redis-cli"), "-h", "127.0.0.1", "-p", str(port), "--user", REDIS_USER, "--pass",
                           REDIS_PASSWORD, "--no-auth-warning", *args], capture_output=True, text=True, timeout=30)


def redis_set(port, n):
    result = redis_cli(port, "SET", f"session:{n}", str(n))
    if result.returncode == 0 and result.stdout.strip() == "OK":
        return "ok"
    return "refused" if "READONLY" in result.stdout + result.stderr else "error"


def redis_info(port):
    out = redis_cli(port, "INFO", "replication").stdout
    return dict(line.split(":", 1) for line in out.splitlines() if ":" in line)


def start_redis(tmp, name, port, master, processes):
    command = [find("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(tmp), "--dbfilename", f"{name}.rdb", "--user", "default", "off", "--user", REDIS_USER,
               "on", f">{REDIS_PASSWORD}", "~*", "&*", "+@all", "--masteruser", REDIS_USER, "--masterauth",
               REDIS_PASSWORD]
    if master:
        command += ["--replicaof", "127.0.0.1", str(master)]
    processes.append(subprocess.Popen(command, stdout=open(tmp / f"{name}.log", "ab"), stderr=subprocess.STDOUT))
    wait_until(f"{name} to answer", lambda: redis_cli(port, "PING").stdout.strip() == "PONG", 30)


def redis_pair(tmp, processes):
    """A Redis master (us-east-1) and a replica of it (eu-west-1), in sync; their ports."""
    master, replica = free_port(), free_port()
    start_redis(tmp, "redis-us", master, None, processes)
    start_redis(tmp, "redis-eu", replica, master, processes)
    wait_until("the Redis replica to sync", lambda: redis_info(replica).get("master_link_status") == "up")
    return master, replica


class Writer(threading.Thread):
    """Writes numbered items one after another until stopped; remembers each one's fate."""

    def __init__(self, attempt):
        super().__init__(daemon=True)
        self.attempt, self.results, self.halt = attempt, {}, threading.Event()

    def run(self):
        n = 1000
        while not self.halt.is_set():
            n += 1
            self.results[n] = self.attempt(n)

    def count(self, outcome):
        return sum(1 for r in list(self.results.values()) if r == outcome)

    def acknowledged(self):
        return {n for n, r in list(self.results.items()) if r == "ok"}

    def stop(self):
        self.halt.set()
        self.join(timeout=60)


def orders_replicated(port):
    """How many orders a replica has, or None while the table has not replicated yet."""
    result = subprocess.run([find("mariadb"), "-h127.0.0.1", f"-P{port}", "-uswitchyard", "-psw-pass", "-N", "-B", "-e",
                             "SELECT COUNT(*) FROM shop.orders"], capture_output=True, text=True, timeout=30)
    return result.stdout.strip() if result.returncode == 0 else None


def mariadb_pair(tmp, processes, replicas=1):
    """A primary (us-east-1) and `replicas` replicas replicating from it; `shop.orders` and the
    shop's account on each. Returns the ports, primary first."""
    ports = [free_port() for _ in range(1 + replicas)]
    for i, port in enumerate(ports):
        start_mariadb(tmp, f"db{i}", port, i + 1, i > 0, processes)
        sql(port, APP_GRANTS)
    sql(ports[0], "CREATE DATABASE shop; CREATE TABLE shop.orders (id INT PRIMARY KEY)")
    for port in ports[1:]:
        sql(port, f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={ports[0]}, MASTER_USER='repl', "
                  "MASTER_PASSWORD='repl-pass', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1; START SLAVE")
    sql(ports[0], "INSERT INTO shop.orders VALUES (1), (2)")
    for port in ports[1:]:
        wait_until("the replica to have the first orders", lambda p=port: orders_replicated(p) == "2")
    return ports


def config_text(tmp, us, eu, mysql_servers, redis_servers=None):
    password = tmp / "db.password"
    password.write_text("sw-pass\n")
    Path(f"{password}-repl").write_text("repl-pass\n")
    (tmp / "redis.password").write_text(f"{REDIS_PASSWORD}\n")
    redis = "" if redis_servers is None else f"""
[[runbook]]
name = "sessions"
kind = "redis_promote"
timeout_ms = 30000
retries = 0
[runbook.redis_promote]
servers = {redis_servers}
username = "{REDIS_USER}"
password = {{ file = "{tmp / 'redis.password'}" }}
promote_lag_max_ms = 5000
"""
    return controller_toml(tmp / "audit.jsonl") + two_regions_toml(us.port, eu.port) + f"""
[[runbook]]
name = "orders-db"
kind = "mysql_promote"
timeout_ms = 30000
retries = 0
[runbook.mysql_promote]
servers = {mysql_servers}
user = "switchyard"
password = {{ file = "{password}" }}
replication_user = "repl"
replication_password = {{ file = "{password}-repl" }}
promote_lag_max_ms = 5000
{redis}
[[runbook]]
name = "pointer"
kind = "pointer"
"""


def start_controller(tmp, config, processes):
    env = dict(os.environ, SWITCHYARD_CONTROL_TOKEN=TOKEN)
    assert_config_ok(config, env)
    _, url, log = harness.start_controller(config, tmp, processes, env=env)
    return url, log


def active(url, region):
    return f"active region: {region}" in run_cli("status", "--controller", url).stdout


def generation_of(accepted):
    """`accepted: ... (generation N)` -> N."""
    assert accepted.returncode == 0, accepted.stderr
    return int(accepted.stdout.rsplit("(generation ", 1)[1].split(")")[0])


def step_ok(audit, step, generation):
    return [r for r in audit_records(audit) if r.get("kind") == "step" and r.get("step") == step
            and r.get("outcome") == "ok" and r.get("generation") == generation]


def slave_status(port):
    """(source port, IO running, SQL running) of a MariaDB replica, or None."""
    result = subprocess.run([find("mariadb"), "-h127.0.0.1", f"-P{port}", "-uswitchyard", "-psw-pass", "-e",
                             "SHOW SLAVE STATUS\\G"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}
    if not fields.get("Master_Port"):
        return None
    return int(fields["Master_Port"]), fields.get("Slave_IO_Running"), fields.get("Slave_SQL_Running")


def order_ids(port):
    return {int(x) for x in admin_sql(port, "SELECT id FROM shop.orders").split()}


def redis_keys(port):
    return {int(k.split(":")[1]) for k in redis_cli(port, "--scan", "--pattern", "session:*").stdout.split()}


def test_failover_fences_promotes_keeps_every_acknowledged_write_and_fails_back(tmp_path):
    need("mariadbd", "mariadb-install-db", "mariadb", "redis-server", "redis-cli")
    processes, us, eu = [], App(), App()
    try:
        primary, replica = mariadb_pair(tmp_path, processes)
        r_master, r_replica = redis_pair(tmp_path, processes)
        config = tmp_path / "switchyard.toml"
        config.write_text(config_text(
            tmp_path, us, eu,
            f'{{ us-east-1 = ["127.0.0.1:{primary}"], eu-west-1 = ["127.0.0.1:{replica}"] }}',
            f'{{ us-east-1 = ["127.0.0.1:{r_master}"], eu-west-1 = ["127.0.0.1:{r_replica}"] }}'))
        url, log = start_controller(tmp_path, config, processes)
        audit = tmp_path / "audit.jsonl"
        wait_until("the initial placement", lambda: active(url, "us-east-1"), logs=[log])

        orders, sessions = Writer(lambda n: app_insert(primary, n)), Writer(lambda n: redis_set(r_master, n))
        orders.start()
        sessions.start()
        wait_until("the shop to write", lambda: orders.count("ok") >= 5 and sessions.count("ok") >= 5)
        generation = generation_of(run_cli("failover", "--controller", url))
        wait_until("the failover", lambda: active(url, "eu-west-1"), logs=[log])
        # The old primaries keep being written to: after the fence every write is refused.
        wait_until("writes to the fenced primaries to be refused",
                   lambda: orders.count("refused") >= 3 and sessions.count("refused") >= 3, logs=[log])
        orders.stop()
        sessions.stop()

        db = step_ok(audit, "orders-db", generation)
        assert db, audit.read_text()[-4000:]
        detail = db[-1]["detail"]
        assert f"fenced old primary 127.0.0.1:{primary}" in detail and f"promoted 127.0.0.1:{replica}" in detail, detail
        assert f"127.0.0.1:{primary} now replicates from 127.0.0.1:{replica}" in detail, detail
        cache = step_ok(audit, "sessions", generation)
        assert cache, audit.read_text()[-4000:]
        assert sql(replica, "SELECT @@GLOBAL.read_only") == "0"
        assert sql(primary, "SELECT @@GLOBAL.read_only") == "1"
        assert sql(replica, "SELECT generation FROM switchyard.promotion") == str(generation)
        wait_until("the old primary to follow the new one",
                   lambda: slave_status(primary) == (replica, "Yes", "Yes"))
        lost = orders.acknowledged() - order_ids(replica)
        assert not lost, f"orders acknowledged by the old primary but missing on the new one: {sorted(lost)}"
        assert redis_info(r_replica).get("role") == "master"
        assert redis_info(r_master).get("role") == "slave"
        assert redis_cli(r_replica, "GET", "switchyard:promotion").stdout.split()[0] == str(generation)
        lost = sessions.acknowledged() - redis_keys(r_replica)
        assert not lost, f"sessions acknowledged by the old master but missing on the new one: {sorted(lost)}"
        assert app_insert(replica, 7) == "ok" and redis_set(r_replica, 7) == "ok", "the new primaries take writes"

        back = generation_of(run_cli("failback", "--controller", url))
        assert back > generation
        wait_until("the failback", lambda: active(url, "us-east-1"), logs=[log])
        wait_until("both steps to finish the failback",
                   lambda: step_ok(audit, "orders-db", back) and step_ok(audit, "sessions", back), logs=[log])
        assert sql(primary, "SELECT @@GLOBAL.read_only") == "0"
        assert sql(replica, "SELECT @@GLOBAL.read_only") == "1"
        assert sql(primary, "SELECT generation FROM switchyard.promotion") == str(back)
        assert order_ids(primary) >= order_ids(replica) | {7}, "a planned failback loses nothing"
        wait_until("the eu server to follow us again", lambda: slave_status(replica) == (primary, "Yes", "Yes"))
        assert app_insert(primary, 8) == "ok"
        wait_until("a new order to replicate to eu", lambda: 8 in order_ids(replica))
        assert redis_info(r_master).get("role") == "master" and redis_info(r_replica).get("role") == "slave"
        assert redis_set(r_master, 8) == "ok"
        wait_until("a new session to replicate to eu", lambda: redis_cli(r_replica, "GET", "session:8").stdout.strip() == "8")
    finally:
        stop_all(processes, (us, eu), terminate_s=15)


def test_a_primary_cut_off_from_the_controller_keeps_writing_and_its_followers_never_rejoin_with_its_writes(tmp_path):
    need("mariadbd", "mariadb-install-db", "mariadb")
    processes, us, eu = [], App(), App()
    try:
        # db0: the primary (us-east-1); db1: the eu replica; db2: a second us replica.
        primary, replica, follower = mariadb_pair(tmp_path, processes, replicas=2)
        config = tmp_path / "switchyard.toml"
        config.write_text(config_text(
            tmp_path, us, eu,
            f'{{ us-east-1 = ["127.0.0.1:{primary}", "127.0.0.1:{follower}"], eu-west-1 = ["127.0.0.1:{replica}"] }}'))
        url, log = start_controller(tmp_path, config, processes)
        audit = tmp_path / "audit.jsonl"
        wait_until("the initial placement", lambda: active(url, "us-east-1"), logs=[log])
        wait_until("the promotion record to reach every replica",
                   lambda: all(sql(p, "SELECT COUNT(*) FROM switchyard.promotion") == "1" for p in (replica, follower)))

        # The controller loses the primary (its account is locked there, not replicated: a
        # partition between the controller and the primary's region), which stays writable and
        # keeps taking the shop's orders; both replicas still receive from it.
        admin_sql(primary, "SET sql_log_bin = 0; ALTER USER 'switchyard'@'%' ACCOUNT LOCK")
        orders = Writer(lambda n: app_insert(primary, n))
        orders.start()
        wait_until("the shop to write", lambda: orders.count("ok") >= 5)
        generation = generation_of(run_cli("failover", "--controller", url))
        wait_until("the failover", lambda: active(url, "eu-west-1"), logs=[log])
        wait_until("the step's record", lambda: step_ok(audit, "orders-db", generation), logs=[log])
        # Keep writing a little after the promotion: these can only land on the cut-off side.
        after = max(orders.results)
        wait_until("more orders on the cut-off primary", lambda: orders.count("ok") >= 5 and max(
            n for n, r in list(orders.results.items()) if r == "ok") > after + 5)
        orders.stop()

        detail = step_ok(audit, "orders-db", generation)[-1]["detail"]
        assert f"127.0.0.1:{primary} unreachable" in detail, detail
        assert f"promoted 127.0.0.1:{replica}" in detail, detail
        # The follower kept receiving from the old primary during the promotion. It is detached
        # before it is judged: if it got anything the new primary never saw, it is named and left
        # fenced; if not (no order reached it in between), it rejoins holding nothing more than
        # the new primary. Never both: rejoined with the cut-off primary's orders.
        rejoined = f"127.0.0.1:{follower} now replicates from 127.0.0.1:{replica}" in detail
        if rejoined:
            wait_until("the follower to follow the new primary", lambda: slave_status(follower) == (replica, "Yes", "Yes"))
            extra = order_ids(follower) - order_ids(replica)
            assert not extra, f"the follower rejoined with orders the new primary never saw: {sorted(extra)}"
        else:
            assert f"127.0.0.1:{follower} left fenced and detached, not rejoined" in detail, detail
            assert "errant transaction(s)" in detail and "shop.orders" in detail, detail
            status = slave_status(follower)
            assert status is None or status[0] != replica, f"the follower was pointed at the new primary: {status}"
        assert sql(follower, "SELECT @@GLOBAL.read_only") == "1"
        assert sql(replica, "SELECT @@GLOBAL.read_only") == "0"
        assert slave_status(replica) is None, "the new primary still replicates"
        # The new primary has none of what the cut-off primary took after the promotion.
        newest = max(n for n, r in orders.results.items() if r == "ok")
        assert newest in order_ids(primary) and newest not in order_ids(replica)

        # The controller reaches the old primary again; moving back to us-east-1 must never
        # promote, or rejoin, a server with errant transactions.
        admin_sql(primary, "SET sql_log_bin = 0; ALTER USER 'switchyard'@'%' ACCOUNT UNLOCK")
        back = generation_of(run_cli("switchover", "--to", "us-east-1", "--controller", url))
        moved = wait_until("the move back to be decided", lambda: [
            r for r in audit_records(audit) if r.get("kind") == "step" and r.get("step") == "orders-db"
            and r.get("generation") == back], logs=[log])
        detail = json.dumps(moved[-1])
        assert "errant transaction(s)" in detail and "shop.orders" in detail, detail
        if rejoined:
            # The clean follower is promoted; the old primary is fenced and left out.
            assert moved[-1]["outcome"] == "ok", detail
            assert f"promoted 127.0.0.1:{follower}" in detail, detail
            assert f"127.0.0.1:{primary} left fenced, not rejoined" in detail, detail
            assert sql(primary, "SELECT @@GLOBAL.read_only") == "1"
        else:
            assert moved[-1]["outcome"] != "ok" and f"127.0.0.1:{primary}" in detail, detail
            assert sql(replica, "SELECT @@GLOBAL.read_only") == "0", "the new primary stays writable"
            assert active(url, "eu-west-1")
    finally:
        stop_all(processes, (us, eu), terminate_s=15)
