"""`switchyard guard` against real servers from Debian (a MariaDB primary and replica, a Redis
master and replica) and a real controller, while the shop keeps writing to the old primary:

- The controller fails over while it cannot reach the old primary (its account is locked there:
  a partition between the controller and the primary's region, not between the primary and its
  applications). The step promotes eu-west-1's replica and the pointer moves; the guard in
  us-east-1, on the primary's side of the cut, fences the primary: from then on every one of
  the shop's writes there is refused, and the new primary is left alone.
- `[guard] isolation_fence_ms`: with the controller frozen (SIGSTOP: connections are accepted,
  nothing answers), the guard fences its region's MariaDB primary and pauses its Redis master
  once nobody has named the region active for that long, and undoes exactly that when the
  controller answers again with nothing moved. The configuration is refused (with its line and
  fix) while the controller could fail the region over before the guard fences it.
"""

import json
import os
import re
import signal
import subprocess
import urllib.error
import urllib.request

import shutil

import pytest

import harness
from harness import BINARY, TOKEN, App, controller_toml, stop_all, two_regions_toml, wait_until
from test_controller import run_cli
from test_db_promote_controller import (REDIS_PASSWORD, REDIS_USER, Writer, active, admin_sql, app_insert,
                                        config_text, generation_of, mariadb_pair, need, order_ids, redis_info,
                                        redis_pair, redis_set, start_controller, step_ok)

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]


def start_guard(tmp, config, url, processes, region="us-east-1", name="guard", listen=None):
    """`switchyard guard` for `region` with its state file in `tmp` (one per region's folder),
    logging to NAME.log, serving /health and /metrics on port `listen` if given; waits until it
    guards."""
    log = tmp / f"{name}.log"
    env = dict(os.environ, SWITCHYARD_CONTROL_TOKEN=TOKEN, NO_COLOR="1")
    args = ["guard", "--config", str(config), "--region", region, "--controller", url,
            "--state-file", str(tmp / "guard-state.json")]
    if listen:
        args += ["--listen", f"127.0.0.1:{listen}"]
    process = harness.spawn(args, log, processes, env)
    wait_until("the guard to start", lambda: "guarding this region's database primaries" in log.read_text(),
               logs=[log])
    return process, log


def guard_health(port):
    """The guard's /health: (HTTP status, body)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def server_outcome(health, port):
    return next((s["outcome"] for s in health["servers"] if s["server"] == f"127.0.0.1:{port}"), None)


def read_only(port):
    return admin_sql(port, "SELECT @@GLOBAL.read_only") == "1"


# What the mariadb client prints when the server closes its connection mid-query.
LOST_CONNECTION = "ERROR 2013"


def read_only_polled(port):
    """For polling: whether the server is read-only, or None (ask again) when the question's own
    connection was killed. A fence sets read_only, then kills every client connection but its
    own (`KILL CONNECTION`), a poll that lands in between too."""
    try:
        return read_only(port)
    except AssertionError as error:
        if LOST_CONNECTION in str(error):
            return None
        raise


def never_ok_after_refused(results):
    """The numbers acknowledged after the first refused write (none once fenced)."""
    ordered = sorted(results.items())
    first = next((n for n, r in ordered if r == "refused"), None)
    assert first is not None, "no write was refused"
    return [n for n, r in ordered if n > first and r == "ok"]


def redis_write_waits(port, n):
    """Whether a write to the server waits (paused) rather than being acknowledged in 2 s; the
    key `session:N` is set when it was not paused yet."""
    try:
        result = subprocess.run(
            [harness_find("redis-cli"), "-h", "127.0.0.1", "-p", str(port), "--user", REDIS_USER, "--pass",
             REDIS_PASSWORD, "--no-auth-warning", "SET", f"session:{n}", str(n)],
            capture_output=True, text=True, timeout=2)
    except subprocess.TimeoutExpired:
        return True
    return False


def harness_find(name):
    from test_providers_databases import find
    return find(name)


def test_the_guard_fences_a_primary_the_failover_could_not_reach(tmp_path):
    need("mariadbd", "mariadb-install-db", "mariadb")
    processes, us, eu = [], App(), App()
    try:
        primary, replica = mariadb_pair(tmp_path, processes)
        servers = f'{{ us-east-1 = ["127.0.0.1:{primary}"], eu-west-1 = ["127.0.0.1:{replica}"] }}'
        config = tmp_path / "switchyard.toml"
        config.write_text(config_text(tmp_path, us, eu, servers))
        # The guard's copy logs in with an account of its own (the DBA's here): the controller's
        # is the one the partition locks.
        (tmp_path / "admin.password").write_text("admin-pass\n")
        guard_config = tmp_path / "guard.toml"
        guard_config.write_text(config.read_text().replace('user = "switchyard"', 'user = "admin"').replace(
            str(tmp_path / "db.password") + '"', str(tmp_path / "admin.password") + '"', 1))
        url, log = start_controller(tmp_path, config, processes)
        audit = tmp_path / "audit.jsonl"
        wait_until("the initial placement", lambda: active(url, "us-east-1"), logs=[log])
        status_port = harness.free_port()
        _, guard_log = start_guard(tmp_path, guard_config, url, processes, listen=status_port)
        # /health: rounds go on, the pointer names us, nothing fenced.
        code, health = wait_until("the guard's first round", lambda: (lambda h: h if h[0] == 200 else None)(
            guard_health(status_port)), logs=[guard_log])
        assert health["status"] == "ok" and health["region"] == "us-east-1", health
        assert health["decision"] == "hold" and health["active_region"] == "us-east-1", health
        assert health["heard"] == "fresh" and health["fresh_answer_ago_ms"] is not None, health

        admin_sql(primary, "SET sql_log_bin = 0; ALTER USER 'switchyard'@'%' ACCOUNT LOCK")
        orders = Writer(lambda n: app_insert(primary, n))
        orders.start()
        wait_until("the shop to write", lambda: orders.count("ok") >= 5)
        assert not read_only(primary), "the guard fenced the primary of the active region"
        generation = generation_of(run_cli("failover", "--controller", url))
        wait_until("the failover", lambda: active(url, "eu-west-1"), logs=[log])
        detail = wait_until("the step's record", lambda: step_ok(audit, "orders-db", generation), logs=[log])[-1][
            "detail"]
        assert f"127.0.0.1:{primary} unreachable" in detail, detail
        wait_until("the guard to fence the old primary", lambda: read_only_polled(primary), logs=[guard_log])
        wait_until("the shop's writes there to be refused", lambda: orders.count("refused") >= 3, logs=[guard_log])
        orders.stop()
        # /health and /metrics say so: fencing for the move, the primary fenced (then refusing
        # writes, each round after the first), the replica of eu not this guard's.
        code, health = guard_health(status_port)
        assert code == 200 and health["decision"] == "fence", health
        assert "the controller made eu-west-1 the active region" in health["reason"], health
        assert health["active_region"] == "eu-west-1" and health["servers_failing"] == 0, health
        assert server_outcome(health, primary) in ("fenced", "refusing"), health
        assert server_outcome(health, replica) is None, health
        from test_metrics_promtool import assert_dashboard_uses_real_series, check as promtool_check
        if shutil.which("promtool"):
            text = promtool_check("guard", f"http://127.0.0.1:{status_port}/metrics")
        else:
            with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/metrics", timeout=5) as response:
                text = response.read().decode()
        assert_dashboard_uses_real_series("switchyard_guard", text)
        assert 'switchyard_guard_fencing{reason="elsewhere"} 1' in text, text
        fenced = re.search(rf'switchyard_guard_server_outcomes_total\{{step="orders-db",server="127\.0\.0\.1:{primary}",'
                           r'outcome="fenced"\} (\d+)', text)
        assert fenced and int(fenced.group(1)) == 1, text

        assert not never_ok_after_refused(orders.results), "a write was acknowledged after the fence"
        text = guard_log.read_text()
        assert re.search(rf"127\.0\.0\.1:{primary} fenced \(it took writes; \d+ client connection", text), text
        assert "the controller made eu-west-1 the active region" in text, text
        # The new primary is not the guard's: writable, its orders its own.
        assert admin_sql(replica, "SELECT @@GLOBAL.read_only") == "0"
        assert app_insert(replica, 7) == "ok"
        assert 7 in order_ids(replica)
    finally:
        stop_all(processes, (us, eu), terminate_s=15)


def isolation_config(tmp, us, eu, mysql_servers, redis_servers, down_confirm_ms):
    text = config_text(tmp, us, eu, mysql_servers, redis_servers)
    head = controller_toml(tmp / "audit.jsonl")
    assert text.startswith(head)
    policy = controller_toml(tmp / "audit.jsonl", policy=f"min_hold_ms = 600000\ndown_confirm_ms = {down_confirm_ms}")
    return policy + "\n[guard]\nisolation_fence_ms = 3000\n" + text[len(head):]


def test_an_isolated_region_fences_itself_and_unfences_when_the_controller_answers_again(tmp_path):
    need("mariadbd", "mariadb-install-db", "mariadb", "redis-server", "redis-cli")
    processes, us, eu = [], App(), App()
    try:
        # Refused while the controller could fail us-east-1 over before the guard acts: its
        # checks (fall 2, fast_interval_ms 100) and no down_confirm_ms.
        mysql = '{ us-east-1 = ["127.0.0.1:1"], eu-west-1 = ["127.0.0.1:2"] }'
        early = tmp_path / "early.toml"
        early.write_text(isolation_config(tmp_path, us, eu, mysql, None, 0))
        checked = subprocess.run([str(BINARY), "config", "check", str(early)], capture_output=True, text=True,
                                 timeout=30)
        assert checked.returncode != 0, checked.stdout
        line = next(i for i, l in enumerate(early.read_text().splitlines(), 1) if l.startswith("isolation_fence_ms"))
        assert f"early.toml:{line}:" in checked.stderr and "isolation_fence_ms = 3000" in checked.stderr, checked.stderr
        needed = int(re.search(r"down_confirm_ms to at least (\d+)", checked.stderr).group(1))

        primary, replica = mariadb_pair(tmp_path, processes)
        r_master, r_replica = redis_pair(tmp_path, processes)
        config = tmp_path / "switchyard.toml"
        config.write_text(isolation_config(
            tmp_path, us, eu, f'{{ us-east-1 = ["127.0.0.1:{primary}"], eu-west-1 = ["127.0.0.1:{replica}"] }}',
            f'{{ us-east-1 = ["127.0.0.1:{r_master}"], eu-west-1 = ["127.0.0.1:{r_replica}"] }}', needed))
        controller, url, log = harness.start_controller(config, tmp_path, processes)
        wait_until("the initial placement", lambda: active(url, "us-east-1"), logs=[log])
        guard, guard_log = start_guard(tmp_path, config, url, processes)
        assert app_insert(primary, 10) == "ok" and redis_set(r_master, 10) == "ok"

        controller.send_signal(signal.SIGSTOP)
        try:
            wait_until("the guard to fence its isolated primary", lambda: read_only_polled(primary), deadline_s=30,
                       logs=[guard_log])
            assert app_insert(primary, 11) == "refused"
            attempts = iter(range(100, 200))
            wait_until("the Redis master's writes to wait", lambda: redis_write_waits(r_master, next(attempts)),
                       logs=[guard_log])
            assert redis_info(r_master).get("role") == "master", "a pause, not a demotion"
            text = guard_log.read_text()
            assert "no controller member has given a fresh answer" in text, text
            # The other region's servers are not this guard's.
            assert redis_info(r_replica).get("role") == "slave"
            # The guard dies while cut off; its successor goes on from the state file: it fences
            # at once (the silence before counts) and knows which servers to give back.
            guard.kill()
            guard.wait(timeout=10)
            guard, guard_log = start_guard(tmp_path, config, url, processes, name="guard-2")
            assert "going on from the state file" in guard_log.read_text()
            wait_until("the new guard to keep the Redis master paused",
                       lambda: "writes paused" in guard_log.read_text(), logs=[guard_log])
        finally:
            controller.send_signal(signal.SIGCONT)
        wait_until("the guard to unfence the primary", lambda: read_only_polled(primary) is False, deadline_s=30,
                   logs=[guard_log, log])
        wait_until("the Redis master to take writes", lambda: redis_set(r_master, 12) == "ok", logs=[guard_log])
        assert app_insert(primary, 12) == "ok"
        assert "undoing the isolation fence" in guard_log.read_text()
        assert active(url, "us-east-1"), "nothing moved"
        assert order_ids(primary) >= {10, 12} and 11 not in order_ids(primary)
    finally:
        stop_all(processes, (us, eu), terminate_s=15)


def test_guards_in_both_regions_never_fight_a_failover_or_a_failback(tmp_path):
    """With every server reachable the runbook does the fencing; a guard in each region must
    then leave every primary a runbook promotes writable, also in the moment of a failback when
    the old region's pointer still names the other region while its server is promoted."""
    need("mariadbd", "mariadb-install-db", "mariadb", "redis-server", "redis-cli")
    processes, us, eu = [], App(), App()
    try:
        primary, replica = mariadb_pair(tmp_path, processes)
        r_master, r_replica = redis_pair(tmp_path, processes)
        config = tmp_path / "switchyard.toml"
        text = config_text(
            tmp_path, us, eu, f'{{ us-east-1 = ["127.0.0.1:{primary}"], eu-west-1 = ["127.0.0.1:{replica}"] }}',
            f'{{ us-east-1 = ["127.0.0.1:{r_master}"], eu-west-1 = ["127.0.0.1:{r_replica}"] }}')
        # A step between the promotions and the pointer that takes a while (a DNS change would):
        # for several of the guards' rounds the new primary is writable while the pointer still
        # names the region the role leaves.
        pointer = '[[runbook]]\nname = "pointer"'
        assert text.count(pointer) == 1
        config.write_text(text.replace(pointer, '[[runbook]]\nname = "dns"\nkind = "command"\nprogram = "sleep"\n'
                                                'args = ["2"]\n\n' + pointer))
        url, log = start_controller(tmp_path, config, processes)
        audit = tmp_path / "audit.jsonl"
        wait_until("the initial placement", lambda: active(url, "us-east-1"), logs=[log])
        guard_dir = {region: tmp_path / region for region in ("us-east-1", "eu-west-1")}
        logs = {}
        for region, folder in guard_dir.items():
            folder.mkdir()
            _, logs[region] = start_guard(folder, config, url, processes, region=region)

        def refused_seen(region, port):
            return f"127.0.0.1:{port} refuses writes already" in logs[region].read_text()

        # eu's guard fences nothing of its own (its servers are replicas), and says so.
        wait_until("eu's guard to see its replica refuse writes", lambda: refused_seen("eu-west-1", replica),
                   logs=[logs["eu-west-1"]])
        generation = generation_of(run_cli("failover", "--controller", url))
        wait_until("the failover", lambda: active(url, "eu-west-1") and step_ok(audit, "orders-db", generation)
                   and step_ok(audit, "sessions", generation), logs=[log])
        # The runbook fenced us; us's guard has looked since (its round after the move).
        moved = re.compile(r"first fence round done: 0 fenced, 0 paused \(Redis\), 2 refusing writes already.*"
                           rf"reason=the controller made eu-west-1 the active region \(generation {generation}\)")
        wait_until("us's guard to finish a round after the move", lambda: moved.search(logs["us-east-1"].read_text()),
                   logs=[logs["us-east-1"]])
        assert app_insert(replica, 20) == "ok" and redis_set(r_replica, 20) == "ok"

        back = generation_of(run_cli("failback", "--controller", url))
        wait_until("the failback", lambda: active(url, "us-east-1") and step_ok(audit, "orders-db", back)
                   and step_ok(audit, "sessions", back), logs=[log])
        done = re.compile(r"first fence round done: 0 fenced, 0 paused \(Redis\), 2 refusing writes already.*"
                          rf"reason=the controller made us-east-1 the active region \(generation {back}\)")
        wait_until("eu's guard to finish a round after the failback",
                   lambda: done.search(logs["eu-west-1"].read_text()), logs=[logs["eu-west-1"]])
        assert admin_sql(primary, "SELECT @@GLOBAL.read_only") == "0", logs["us-east-1"].read_text()
        assert app_insert(primary, 21) == "ok"
        assert redis_set(r_master, 21) == "ok"
        for region in logs:
            text = logs[region].read_text()
            assert " fenced (it took writes" not in text and "writes paused" not in text, f"{region}: {text}"
    finally:
        stop_all(processes, (us, eu), terminate_s=15)
