"""The failover controller as a real process: it probes two regions' HTTP apps itself, fails over
when the primary's app dies, runs a real command step, moves the active-region pointer, and
`switchyard pointer watch` rewrites an env file and runs its reload command. Also the CLI
(`status`, `switchover`, `pause`, `config check`), and a real agent probing through its own
`[vantage_paths]`."""

import json
import os
import signal
import subprocess
import urllib.request

import pytest

from harness import (BINARY, INTERVALS_ONLY, REPO, START_DEADLINE_S, TOKEN, App, controller_toml, free_port,
                     http_check_toml, regions_toml, spawn, stop_all, two_regions_toml, wait_until)

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]


def run_cli(*args):
    env = dict(os.environ, SWITCHYARD_CONTROL_TOKEN=TOKEN)
    return subprocess.run([str(BINARY), *args], env=env, capture_output=True, text=True, timeout=30)


def config_text(us, eu, audit, marker):
    return controller_toml(audit) + two_regions_toml(us.port, eu.port) + f"""
[[runbook]]
name = "record"
kind = "command"
program = "sh"
args = ["-c", "echo \\"$SWITCHYARD_GENERATION $SWITCHYARD_FROM $SWITCHYARD_TO\\" >> {marker}"]

[[runbook]]
name = "pointer"
kind = "pointer"
"""


@pytest.fixture
def setup(tmp_path):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built (cargo build -p switchyard)")
    us, eu = App(), App()
    processes = []

    def start(args, log):
        return spawn(args, log, processes, dict(os.environ, SWITCHYARD_CONTROL_TOKEN=TOKEN))

    yield tmp_path, us, eu, start
    stop_all(processes, (us, eu))


def test_controller_fails_over_and_pointer_watch_follows(setup):
    tmp, us, eu, start = setup
    marker = tmp / "runbook.log"
    config = tmp / "switchyard.toml"
    config.write_text(config_text(us, eu, tmp / "audit.jsonl", marker))
    ready = tmp / "ready"
    log = tmp / "controller.log"
    controller = start(["controller", "--config", str(config), "--listen", "127.0.0.1:0",
                        "--ready-file", str(ready)], log)
    wait_until("the controller to listen", lambda: ready.exists() and ready.read_text(), START_DEADLINE_S, [log])
    url = f"http://{ready.read_text().strip()}"

    env_file = tmp / "region.env"
    exec_log = tmp / "exec.log"
    watch_log = tmp / "watch.log"
    start(["pointer", "watch", "--controller", url, "--write-env", str(env_file),
           "--exec", f"echo \"$SWITCHYARD_ACTIVE_REGION $SWITCHYARD_GENERATION\" >> {exec_log}"], watch_log)

    def env():
        return env_file.read_text() if env_file.exists() else ""

    wait_until("the initial placement", lambda: "AWS_REGION=us-east-1" in env(), logs=[log, watch_log])
    status = run_cli("status", "--controller", url)
    assert status.returncode == 0, status.stderr
    assert "active region: us-east-1" in status.stdout, status.stdout

    # The primary's application dies: the controller sees it and fails over.
    us.stop()
    wait_until("the failover in the env file", lambda: "AWS_REGION=eu-west-1" in env(), logs=[log, watch_log])
    assert "SWITCHYARD_ACTIVE_REGION=eu-west-1" in env()
    generation = int(env().split("SWITCHYARD_GENERATION=")[1].split()[0])
    assert generation >= 2
    wait_until("the reload command", lambda: exec_log.exists() and f"eu-west-1 {generation}" in exec_log.read_text(),
               logs=[watch_log])
    assert f"{generation} us-east-1 eu-west-1" in marker.read_text()

    status = run_cli("status", "--controller", url)
    assert "active region: eu-west-1" in status.stdout, status.stdout
    assert "down" in status.stdout

    refused = run_cli("switchover", "--to", "us-east-1", "--controller", url)
    assert refused.returncode != 0
    assert "is down" in refused.stderr, refused.stderr
    paused = run_cli("pause", "--controller", url)
    assert paused.returncode == 0, paused.stderr
    assert "PAUSED" in run_cli("status", "--controller", url).stdout

    # Without the token the API refuses.
    unauthenticated = subprocess.run([str(BINARY), "status", "--controller", url],
                                     env={k: v for k, v in os.environ.items() if k != "SWITCHYARD_CONTROL_TOKEN"},
                                     capture_output=True, text=True, timeout=30)
    assert unauthenticated.returncode != 0
    assert "401" in unauthenticated.stderr, unauthenticated.stderr

    audit = (tmp / "audit.jsonl").read_text()
    assert '"kind":"failover"' in audit
    controller.send_signal(signal.SIGTERM)
    assert controller.wait(timeout=20) == 0, log.read_text()[-3000:]


def test_config_check_reports_every_mistake_and_the_controller_refuses_to_start(tmp_path):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built (cargo build -p switchyard)")
    good = run_cli("config", "check", str(REPO / "docs" / "examples" / "switchyard.toml"))
    assert good.returncode == 0, good.stderr
    assert "ok (2 regions" in good.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[policy]\nmode = "sideways"\n\n[[regions]]\nname = "a"\npriority = 1\n\n'
                   '[[regions]]\nname = "b"\npriority = 1\n')
    result = run_cli("config", "check", str(bad))
    assert result.returncode == 1
    assert f"{bad}:2:8: error: unknown policy mode 'sideways'" in result.stderr, result.stderr
    assert f"{bad}:10:12: error: regions 'a' and 'b' both have priority 1" in result.stderr, result.stderr
    assert "fix:" in result.stderr
    started = run_cli("controller", "--config", str(bad), "--listen", "127.0.0.1:0")
    assert started.returncode != 0
    assert "does not start" in started.stderr, started.stderr
    # The other commands' files are checked as those commands read them.
    for example, said in [("dns.toml", "a `switchyard dns` configuration"),
                          ("proxy.toml", "a `switchyard proxy` configuration"),
                          ("drill-targets.toml", "a drill targets file")]:
        checked = run_cli("config", "check", str(REPO / "docs" / "examples" / example))
        assert checked.returncode == 0 and said in checked.stdout, (example, checked.stdout, checked.stderr)
    # A drill targets file with a misspelt key is still checked as one, naming the right keys.
    typo = tmp_path / "targets.toml"
    typo.write_text((REPO / "docs" / "examples" / "drill-targets.toml").read_text().replace("shop_name", "shop_namex", 1))
    checked = run_cli("config", "check", str(typo))
    assert checked.returncode == 1 and "shop_namex" in checked.stderr, checked.stderr
    assert "checked as a drill targets file" in checked.stderr and "store_url" not in checked.stderr, checked.stderr
    bad_dns = tmp_path / "dns.toml"
    bad_dns.write_text('[dns]\nlisten = "127.0.0.1:5353"\n\n[[dns.zones]]\norigin = "shop.example."\n'
                       'ns = ["ns1"]\nbogus = 1\n')
    checked = run_cli("config", "check", str(bad_dns))
    assert checked.returncode == 1 and f"{bad_dns}:7:1: unknown field `bogus`" in checked.stderr, checked.stderr


def test_config_check_checks_store_and_fault_proxy_files_as_they_are_read(tmp_path):
    """The README's store file (`switchyard store --config FILE`, a [store] section) is checked as
    the store reads it, and a fault proxy's ([fault_proxy]) as `switchyard fault-proxy` reads it,
    not refused as controller files without [[regions]]."""
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built (cargo build -p switchyard)")
    good = tmp_path / "store.toml"
    (tmp_path / "replication.key").write_text("a shared secret of 32 bytes.....\n")
    good.write_text('[store]\nregion = "eu-west-1"\nlisten = "127.0.0.1:8001"\ndata_dir = "data"\n'
                    'cache_bytes = "256MiB"\nreplication_key_file = "replication.key"\n\n'
                    '[store.peers]\nus-east-1 = "http://127.0.0.1:8000"\n')
    checked = run_cli("config", "check", str(good))
    assert checked.returncode == 0, checked.stderr
    assert "a `switchyard store` configuration: region eu-west-1, listening on 127.0.0.1:8001" in checked.stdout
    assert f"data in {tmp_path / 'data'}" in checked.stdout, checked.stdout
    bad = tmp_path / "bad-store.toml"
    bad.write_text('[store]\nregion = "eu-west-1"\ncache_bytes = "lots"\n')
    checked = run_cli("config", "check", str(bad))
    assert checked.returncode == 1, checked.stdout
    assert "cache_bytes" in checked.stderr and "line 3" in checked.stderr, checked.stderr
    assert "unknown field `store`" not in checked.stderr, checked.stderr
    assert "checked as a `switchyard store` configuration" in checked.stderr, checked.stderr
    # What the store refuses at start, the check refuses too: a file it passes starts.
    env = {k: v for k, v in os.environ.items() if k != "SWITCHYARD_REPLICATION_KEY"}
    for body, said in [
        ('listen = "0.0.0.0:8001"\n', "refusing to listen on 0.0.0.0:8001 without credentials"),
        ('credentials = "missing-credentials"\n', "read credentials file"),
        ('\n[store.peers]\nus-east-1 = "http://127.0.0.1:8000"\n', "peers need a replication key"),
        ('tls_cert = "missing.pem"\ntls_key = "missing.key"\n', "missing.pem"),
    ]:
        bad.write_text('[store]\nregion = "eu-west-1"\n' + body)
        checked = subprocess.run([str(BINARY), "config", "check", str(bad)], env=env, capture_output=True,
                                 text=True, timeout=30)
        assert checked.returncode == 1, (body, checked.stdout)
        assert said in checked.stderr, (body, checked.stderr)
        assert "checked as a `switchyard store` configuration" in checked.stderr, checked.stderr
    # A store meant for `--trusted-network` is checked as it starts: with the same flag.
    bad.write_text('[store]\nregion = "eu-west-1"\nlisten = "0.0.0.0:8001"\n')
    trusted = subprocess.run([str(BINARY), "config", "check", "--trusted-network", str(bad)], env=env,
                             capture_output=True, text=True, timeout=30)
    assert trusted.returncode == 0, trusted.stderr
    # The fault proxy's file (`switchyard fault-proxy --config FILE`, a [fault_proxy] section) too.
    faults = tmp_path / "faults.toml"
    faults.write_text('[fault_proxy]\nlisten = "127.0.0.1:8474"\n\n[[fault_proxy.proxies]]\nname = "store-eu"\n'
                      'listen = "127.0.0.1:21000"\nupstream = "127.0.0.1:8001"\n')
    checked = run_cli("config", "check", str(faults))
    assert checked.returncode == 0, checked.stderr
    assert "a `switchyard fault-proxy` configuration: 1 proxies, control API on 127.0.0.1:8474" in checked.stdout
    faults.write_text('[fault_proxy]\nlisten = "127.0.0.1:8474"\nbogus = 1\n')
    checked = run_cli("config", "check", str(faults))
    assert checked.returncode == 1 and f"{faults}:3:1:" in checked.stderr, checked.stderr
    assert "unknown field `fault_proxy`" not in checked.stderr, checked.stderr


def get_json(url, path):
    request = urllib.request.Request(f"{url}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_each_vantage_point_probes_through_its_own_path(setup):
    """`[vantage_paths.agent-1]` sends a real agent to a live app where the address in the checks
    (what the controller itself probes) refuses connections: the two views differ as configured."""
    tmp, us, _eu, start = setup
    dead = free_port()
    config = tmp / "switchyard.toml"
    config.write_text(controller_toml(tmp / "audit.jsonl", vantages=("controller", "agent-1"), policy="")
                      + regions_toml("us-east-1") + http_check_toml("use1-app", "us-east-1", dead, INTERVALS_ONLY)
                      + f"""
[vantage_paths.agent-1]
"127.0.0.1:{dead}" = "127.0.0.1:{us.port}"
""")
    checked = run_cli("config", "check", str(config))
    assert checked.returncode == 0, checked.stderr
    ready = tmp / "ready"
    log = tmp / "controller.log"
    start(["controller", "--config", str(config), "--listen", "127.0.0.1:0", "--ready-file", str(ready)], log)
    wait_until("the controller to listen", lambda: ready.exists() and ready.read_text(), START_DEADLINE_S, [log])
    url = f"http://{ready.read_text().strip()}"
    plan = get_json(url, "/v1/agent/plan?name=agent-1")
    assert plan["checks"][0]["kind"]["url"] == f"http://127.0.0.1:{us.port}/health", plan
    assert plan["checks"][0]["name"] == "use1-app"
    agent_log = tmp / "agent.log"
    start(["agent", "--controller", url, "--name", "agent-1"], agent_log)

    def views():
        status = get_json(url, "/v1/status")
        seen = {v["name"]: v["checks"] for v in status["vantages"]}
        agent, own = seen.get("agent-1") or [], seen.get("controller") or []
        if agent and own and agent[0]["status"] == "up" and own[0]["status"] == "down":
            return agent[0], own[0]
        return None

    agent_view, own_view = wait_until("agent-1 up through its path, the controller down through its own",
                                      views, logs=[log, agent_log])
    assert agent_view["detail"].startswith("HTTP 200"), agent_view
    assert str(dead) in own_view["detail"], own_view


def test_a_failover_supersedes_a_failback_whose_target_goes_down_again(setup):
    """A failback's slow step toward us-east-1 is running when us-east-1 fails again: the
    failover to eu-west-1 starts at once (its own generation), not after the failback's step,
    and the failback's step is cancelled (its shell killed: it never finishes)."""
    tmp, us, eu, start = setup
    marker = tmp / "runbook.log"
    slow = tmp / "slow"
    config = tmp / "switchyard.toml"
    # The default hold (10 min here) holds failbacks, never a failover away from a down region.
    config.write_text(controller_toml(tmp / "audit.jsonl") + two_regions_toml(us.port, eu.port) + f"""
[[runbook]]
name = "record"
kind = "command"
program = "sh"
args = ["-c", "echo \\"start $SWITCHYARD_GENERATION $SWITCHYARD_TO\\" >> {marker}; if [ \\"$SWITCHYARD_TO\\" = us-east-1 ] && [ -e {slow} ]; then sleep 90; fi; echo \\"done $SWITCHYARD_GENERATION $SWITCHYARD_TO\\" >> {marker}"]
timeout_ms = 120000

[[runbook]]
name = "pointer"
kind = "pointer"
""")
    ready = tmp / "ready"
    log = tmp / "controller.log"
    start(["controller", "--config", str(config), "--listen", "127.0.0.1:0", "--ready-file", str(ready)], log)
    wait_until("the controller to listen", lambda: ready.exists() and ready.read_text(), START_DEADLINE_S, [log])
    url = f"http://{ready.read_text().strip()}"

    def lines():
        return marker.read_text().splitlines() if marker.exists() else []

    def active(region):
        return f"active region: {region}" in run_cli("status", "--controller", url).stdout

    wait_until("the initial placement", lambda: active("us-east-1"), logs=[log])
    us.stop()
    wait_until("the failover", lambda: active("eu-west-1"), logs=[log])
    revived = App(us.port)
    slow.write_text("")

    def failback():
        answer = run_cli("failback", "--controller", url)
        return answer if answer.returncode == 0 else None

    accepted = wait_until("the failback accepted (us-east-1 seen up again)", failback, logs=[log])
    back = int(accepted.stdout.rsplit("(generation ", 1)[1].split(")")[0])
    wait_until("the failback's slow step", lambda: f"start {back} us-east-1" in lines(), logs=[log])

    # us-east-1 fails again while the failback's step sleeps: well before that sleep (90 s)
    # could end, the failover to eu-west-1 has run in full.
    revived.stop()
    status_file = tmp / "status.txt"

    def superseded():
        status_file.write_text(run_cli("status", "--controller", url).stdout)
        return [
        line for line in lines() if line.startswith("done ") and line.endswith(" eu-west-1")
        and int(line.split()[1]) > back]

    done = wait_until("the superseding failover", superseded, deadline_s=30, logs=[log, status_file])
    assert done, lines()
    assert f"done {back} us-east-1" not in lines(), "the cancelled step never finished"
    wait_until("eu-west-1 active", lambda: active("eu-west-1"), logs=[log])
    audit = (tmp / "audit.jsonl").read_text()
    assert '"type":"runbook_superseded"' in audit and f'"generation":{back}' in audit, audit[-2000:]
