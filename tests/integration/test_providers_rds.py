"""`rds_promote` and `aurora_global_failover` run by a real controller against `fake_rds.py`, a
fake of the RDS Query API that follows AWS's documented API for the operations used (moto lacks
them: it never clears ReadReplicaSourceDBInstanceIdentifier and has no
FailoverGlobalCluster/SwitchoverGlobalCluster). The binary's AWS SDK signs and parses every
call, so the requests and XML answers are the real ones.

- `config check` points at bad ARNs and timings with line numbers.
- RDS: `switchyard failover` promotes the eu read replica once (tagged with the order's
  generation, waited for until standalone and available), the audit log records it; a failback
  to the old source is refused (RDS cannot demote) and the placement stays.
- RDS, the source's region lost (its RDS API answers 503): an unplanned failover promotes the
  replica all the same, and says the other region could not be read.
- Aurora: a planned switchover moves the writer (SwitchoverGlobalCluster), a failback moves it
  back; an unplanned failover is refused until `--force-data-loss`, which uses
  FailoverGlobalCluster with AllowDataLoss, signed for the target's region while the writer's
  region answers 503. An empty `<FailoverState/>` (no move in progress, as AWS documents it) is
  not taken for a move.
"""

import os
import subprocess

import pytest

from fake_rds import FakeRds
import harness
from harness import BINARY, TOKEN, App, assert_config_ok, controller_toml, stop_all, two_regions_toml, wait_until
from test_providers_databases import audit_records

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]

ACCOUNT = "111122223333"
US_DB, EU_DB = f"arn:aws:rds:us-east-1:{ACCOUNT}:db:shop-use1", f"arn:aws:rds:eu-west-1:{ACCOUNT}:db:shop-euw1"
US_CL, EU_CL = f"arn:aws:rds:us-east-1:{ACCOUNT}:cluster:shop-use1", f"arn:aws:rds:eu-west-1:{ACCOUNT}:cluster:shop-euw1"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}


def cli(*args):
    env = dict(os.environ, SWITCHYARD_CONTROL_TOKEN=TOKEN, **AWS_ENV)
    return subprocess.run([str(BINARY), *args], env=env, capture_output=True, text=True, timeout=30)


def need_binary():
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built (cargo build -p switchyard)")


def config_text(tmp, us, eu, step):
    return (controller_toml(tmp / "audit.jsonl", policy="min_hold_ms = 600000\nauto_failback = false")
            + two_regions_toml(us.port, eu.port, names=("us-east-1-app", "eu-west-1-app")) + step + """
[[runbook]]
name = "pointer"
kind = "pointer"
""")


def rds_step(url, extra=""):
    return f"""
[[runbook]]
name = "orders-db"
kind = "rds_promote"
timeout_ms = 60000
retries = 2
[runbook.rds_promote]
instances = {{ us-east-1 = "{US_DB}", eu-west-1 = "{EU_DB}" }}
endpoint_url = "{url}"
wait_ms = 30000
poll_ms = 100
{extra}"""


def aurora_step(url, extra=""):
    return f"""
[[runbook]]
name = "orders-db"
kind = "aurora_global_failover"
timeout_ms = 60000
retries = 0
[runbook.aurora_global_failover]
global_cluster = "shop-global"
clusters = {{ us-east-1 = "{US_CL}", eu-west-1 = "{EU_CL}" }}
endpoint_url = "{url}"
wait_ms = 30000
poll_ms = 100
{extra}"""


def start_controller(tmp, config, processes):
    env = dict(os.environ, SWITCHYARD_CONTROL_TOKEN=TOKEN, **AWS_ENV)
    assert_config_ok(config, env)
    _, url, log = harness.start_controller(config, tmp, processes, env=env)
    return url, log


def placed_controller(tmp, us, eu, step, processes):
    """A controller whose runbook has `step`, started and done with the initial placement
    (us-east-1). Returns (url, log, audit log)."""
    config = tmp / "switchyard.toml"
    config.write_text(config_text(tmp, us, eu, step))
    url, log = start_controller(tmp, config, processes)
    wait_until("the initial placement", lambda: active(url, "us-east-1"), logs=[log])
    return url, log, tmp / "audit.jsonl"


def active(url, region):
    return f"active region: {region}" in cli("status", "--controller", url).stdout


def generation_of(accepted):
    assert accepted.returncode == 0, accepted.stderr
    return int(accepted.stdout.rsplit("(generation ", 1)[1].split(")")[0])


def steps(audit, generation, outcome=None):
    return [r for r in audit_records(audit) if r.get("kind") == "step" and r.get("step") == "orders-db"
            and r.get("generation") == generation and (outcome is None or r.get("outcome") == outcome)]


@pytest.mark.parametrize("step,line,message", [
    (rds_step("http://127.0.0.1:1").replace(EU_DB, "arn:aws:rds:eu-west-1:1111:db:shop-euw1"), 50,
     "the ARN of region 'eu-west-1' has '1111' where the 12-digit account goes"),
    (rds_step("http://127.0.0.1:1").replace(EU_DB, US_CL), 50, "the ARN of region 'eu-west-1' names a cluster, not a db"),
    (rds_step("http://127.0.0.1:1").replace("poll_ms = 100", "poll_ms = 1"), 53, "poll_ms = 1 is outside"),
    (aurora_step("http://127.0.0.1:1").replace('"shop-global"', '"1-global"'), 50, "global_cluster '1-global' is not"),
    (aurora_step("http://127.0.0.1:1").replace("eu-west-1 = ", "ap-south-1 = "), 51, "'ap-south-1' is not a configured region"),
])
def test_config_check_points_at_bad_settings(tmp_path, step, line, message):
    need_binary()
    us, eu = App(), App()
    try:
        config = tmp_path / "switchyard.toml"
        config.write_text(config_text(tmp_path, us, eu, step))
        result = cli("config", "check", str(config))
        assert result.returncode == 1, result.stdout
        assert f"{config}:{line}:" in result.stderr and message in result.stderr, result.stderr
    finally:
        us.stop()
        eu.stop()


def test_rds_promote_promotes_the_replica_once_and_refuses_to_fail_back(tmp_path):
    need_binary()
    fake, us, eu, processes = FakeRds(delay_s=1.0), App(), App(), []
    try:
        fake.add_instance(US_DB)
        fake.add_instance(EU_DB, source=US_DB)
        url, log, audit = placed_controller(tmp_path, us, eu, rds_step(fake.url), processes)
        first = [r for r in audit_records(audit) if r.get("kind") == "step" and r.get("step") == "orders-db"]
        assert "is the primary (no source); nothing promoted" in first[-1]["detail"], first
        assert not fake.actions("PromoteReadReplica")

        generation = generation_of(cli("failover", "--controller", url))
        wait_until("the failover", lambda: active(url, "eu-west-1"), logs=[log])
        ok = steps(audit, generation, "ok")
        assert ok and "promoted the read replica" in ok[-1]["detail"], audit.read_text()[-3000:]
        assert "standalone and available" in ok[-1]["detail"]
        promoted = fake.instance(EU_DB)
        assert promoted["source"] is None and promoted["status"] == "available"
        assert fake.tags(EU_DB) == {"switchyard:generation": str(generation)}
        calls = fake.actions("PromoteReadReplica")
        assert len(calls) == 1 and calls[0]["DBInstanceIdentifier"] == "shop-euw1" and calls[0]["region"] == "eu-west-1"

        back = generation_of(cli("failback", "--controller", url))
        refused = wait_until("the failback to be refused", lambda: [
            r for r in steps(audit, back) if r["outcome"] != "ok"], logs=[log])
        assert "cannot make it a replica again" in refused[-1]["detail"], refused
        assert active(url, "eu-west-1")
        assert len(fake.actions("PromoteReadReplica")) == 1, "nothing promoted twice"
    finally:
        stop_all(processes, (fake, us, eu), terminate_s=15)


def test_rds_promote_fails_over_while_the_source_regions_api_is_down(tmp_path):
    need_binary()
    fake, us, eu, processes = FakeRds(delay_s=1.0), App(), App(), []
    try:
        fake.add_instance(US_DB)
        fake.add_instance(EU_DB, source=US_DB)
        url, log, audit = placed_controller(tmp_path, us, eu, rds_step(fake.url), processes)
        fake.down = {"us-east-1"}
        generation = generation_of(cli("failover", "--controller", url))
        wait_until("the failover", lambda: active(url, "eu-west-1"), 60, [log])
        ok = steps(audit, generation, "ok")
        assert ok and "promoted the read replica" in ok[-1]["detail"], audit.read_text()[-3000:]
        assert f"could not read {US_DB} of us-east-1" in ok[-1]["detail"], ok[-1]["detail"]
        assert "ServiceUnavailable" in ok[-1]["detail"], ok[-1]["detail"]
        assert not [r for r in steps(audit, generation) if r["outcome"] != "ok"], "promoted on the first attempt"
        promoted = fake.instance(EU_DB)
        assert promoted["source"] is None and promoted["status"] == "available"
        calls = fake.actions("PromoteReadReplica")
        assert len(calls) == 1 and calls[0]["region"] == "eu-west-1", calls
        assert [c for c in fake.actions("DescribeDBInstances") if c["region"] == "us-east-1"], "us-east-1 was asked"
    finally:
        stop_all(processes, (fake, us, eu), terminate_s=15)


def test_aurora_takes_an_empty_failover_state_for_no_move(tmp_path):
    need_binary()
    fake, us, eu, processes = FakeRds(delay_s=1.0, empty_failover_state=True), App(), App(), []
    try:
        fake.add_global("shop-global", US_CL, [EU_CL])
        url, log, audit = placed_controller(tmp_path, us, eu, aurora_step(fake.url), processes)
        first = [r for r in audit_records(audit) if r.get("kind") == "step" and r.get("step") == "orders-db"]
        assert first and "is the writer of global cluster shop-global already" in first[-1]["detail"], first

        generation = generation_of(cli("switchover", "--to", "eu-west-1", "--controller", url))
        wait_until("the switchover", lambda: active(url, "eu-west-1"), logs=[log])
        ok = steps(audit, generation, "ok")
        assert ok and "switched over (SwitchoverGlobalCluster)" in ok[-1]["detail"], audit.read_text()[-3000:]
        assert fake.writer("shop-global") == (EU_CL, None)
        back = generation_of(cli("failback", "--controller", url))
        wait_until("the failback", lambda: active(url, "us-east-1"), logs=[log])
        assert steps(audit, back, "ok"), audit.read_text()[-3000:]
        assert fake.writer("shop-global") == (US_CL, None)
        assert len(fake.actions("SwitchoverGlobalCluster")) == 2
    finally:
        stop_all(processes, (fake, us, eu), terminate_s=15)


def test_aurora_switches_over_fails_back_and_fails_over_only_when_loss_is_accepted(tmp_path):
    need_binary()
    fake, us, eu, processes = FakeRds(delay_s=1.0), App(), App(), []
    try:
        fake.add_global("shop-global", US_CL, [EU_CL])
        url, log, audit = placed_controller(tmp_path, us, eu, aurora_step(fake.url), processes)

        # Planned: both regions answer.
        generation = generation_of(cli("switchover", "--to", "eu-west-1", "--controller", url))
        wait_until("the switchover", lambda: active(url, "eu-west-1"), logs=[log])
        ok = steps(audit, generation, "ok")
        assert ok and "switched over (SwitchoverGlobalCluster)" in ok[-1]["detail"], audit.read_text()[-3000:]
        assert fake.writer("shop-global") == (EU_CL, None)
        assert fake.tags(EU_CL) == {"switchyard:generation": str(generation)}
        assert not fake.actions("FailoverGlobalCluster")

        back = generation_of(cli("failback", "--controller", url))
        wait_until("the failback", lambda: active(url, "us-east-1"), logs=[log])
        assert steps(audit, back, "ok"), audit.read_text()[-3000:]
        assert fake.writer("shop-global") == (US_CL, None)
        assert len(fake.actions("SwitchoverGlobalCluster")) == 2

        # Unplanned: us-east-1's RDS endpoint is gone. Without accepting loss it is refused.
        fake.down = {"us-east-1"}
        failed = generation_of(cli("failover", "--controller", url))
        refused = wait_until("the unplanned failover to be refused", lambda: [
            r for r in steps(audit, failed) if r["outcome"] != "ok"], logs=[log])
        assert "--force-data-loss" in refused[-1]["detail"], refused
        assert fake.writer("shop-global") == (US_CL, None)
        forced = cli("failover", "--force-data-loss", "--controller", url)
        assert forced.returncode == 0, forced.stderr
        wait_until("the forced failover", lambda: active(url, "eu-west-1"), logs=[log])
        assert fake.writer("shop-global") == (EU_CL, None)
        calls = fake.actions("FailoverGlobalCluster")
        assert len(calls) == 1 and calls[0]["AllowDataLoss"] == "true" and calls[0]["region"] == "eu-west-1", calls
        assert calls[0]["TargetDbClusterIdentifier"] == EU_CL
        assert "the writer's switchyard:generation was unreadable" in steps(
            audit, max(r["generation"] for r in audit_records(audit)), "ok")[-1]["detail"]

        # A newer decision (another controller) tagged the writer: this one must not move it.
        fake.down = set()
        with fake.lock:
            fake.clusters[EU_CL]["switchyard:generation"] = "1000"
        stale = generation_of(cli("failback", "--controller", url))
        fenced = wait_until("the failback to be fenced", lambda: [
            r for r in steps(audit, stale) if r["outcome"] != "ok"], logs=[log])
        assert fenced[-1]["outcome"] == "fenced" and "newer decision moved it there" in fenced[-1]["detail"], fenced
        assert fake.writer("shop-global") == (EU_CL, None)
        assert len(fake.actions("SwitchoverGlobalCluster")) == 2
    finally:
        stop_all(processes, (fake, us, eu), terminate_s=15)


def test_a_controller_killed_while_rds_promotes_rolls_forward_without_promoting_twice(tmp_path):
    need_binary()
    fake, us, eu, processes = FakeRds(delay_s=4.0), App(), App(), []
    try:
        fake.add_instance(US_DB)
        fake.add_instance(EU_DB, source=US_DB)
        url, log, audit = placed_controller(tmp_path, us, eu, rds_step(fake.url), processes)
        generation = generation_of(cli("failover", "--controller", url))
        wait_until("the promotion call", lambda: fake.actions("PromoteReadReplica"), logs=[log])
        processes[0].kill()
        processes[0].wait(timeout=15)
        assert fake.instance(EU_DB)["status"] == "modifying", "the promotion must still be under way"
        assert not steps(audit, generation, "ok")

        (tmp_path / "controller.ready").unlink()
        url, log = start_controller(tmp_path, tmp_path / "switchyard.toml", processes)
        done = wait_until("the roll-forward to finish the promotion", lambda: [
            r for r in audit_records(audit) if r.get("kind") == "step" and r.get("step") == "orders-db"
            and r.get("outcome") == "ok" and r["generation"] > generation], 60, [log])
        assert "an earlier run promoted" in done[-1]["detail"], done
        wait_until("eu-west-1 to be active", lambda: active(url, "eu-west-1"), logs=[log])
        assert len(fake.actions("PromoteReadReplica")) == 1, "promoted twice"
        promoted = fake.instance(EU_DB)
        assert promoted["source"] is None and promoted["status"] == "available"
        assert fake.tags(EU_DB) == {"switchyard:generation": str(done[-1]["generation"])}
    finally:
        stop_all(processes, (fake, us, eu), terminate_s=15)


def test_aurora_detach_when_configured_then_failback_is_refused(tmp_path):
    need_binary()
    fake, us, eu, processes = FakeRds(delay_s=1.0), App(), App(), []
    try:
        fake.add_global("shop-global", US_CL, [EU_CL])
        url, log, audit = placed_controller(
            tmp_path, us, eu, aurora_step(fake.url, 'unplanned = "detach"\nallow_data_loss = true'), processes)
        fake.down = {"us-east-1"}
        generation = generation_of(cli("failover", "--controller", url))
        wait_until("the failover", lambda: active(url, "eu-west-1"), logs=[log])
        ok = steps(audit, generation, "ok")
        assert ok and "detached from (RemoveFromGlobalCluster" in ok[-1]["detail"], audit.read_text()[-3000:]
        assert fake.members("shop-global") == [US_CL]
        calls = fake.actions("RemoveFromGlobalCluster")
        assert len(calls) == 1 and calls[0]["DbClusterIdentifier"] == EU_CL and calls[0]["region"] == "eu-west-1"
        assert not fake.actions("FailoverGlobalCluster")
        assert fake.tags(EU_CL) == {"switchyard:generation": str(generation)}

        fake.down = set()
        back = generation_of(cli("failback", "--controller", url))
        refused = wait_until("the failback to be refused", lambda: [
            r for r in steps(audit, back) if r["outcome"] != "ok"], logs=[log])
        assert "cannot make it a secondary again" in refused[-1]["detail"], refused
        assert active(url, "eu-west-1")
        assert not fake.actions("SwitchoverGlobalCluster")
    finally:
        stop_all(processes, (fake, us, eu), terminate_s=15)
