"""The controller's `command` and `webhook` runbook steps as a real process: a command that writes
more than a pipe holds, one that leaves a process running in the background, one that times out
(what it started goes with it) or is running when the controller stops; a webhook receiver that
answers a plain 409 (no fence: a later failover still runs), and the real `switchyard dns`
refusing a stale generation (fenced)."""

import json
import os
import signal
import subprocess
import threading
import urllib.request

import pytest

from harness import (BINARY, TOKEN, App, QuietHandler, Served, controller_toml, failover_zone_toml, require_binary,
                     start_controller, stop_all, two_regions_toml, wait_until)

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]


def get_json(url, path):
    request = urllib.request.Request(f"{url}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def steps_of(audit):
    """The step attempts in the audit log, oldest first."""
    if not audit.exists():
        return []
    return [e for e in map(json.loads, audit.read_text().splitlines()) if e.get("kind") == "step"]


def gone(pid_file):
    """Whether the process whose pid `pid_file` holds is gone (exited, or a zombie)."""
    if not pid_file.exists() or not pid_file.read_text().strip():
        return False
    try:
        stat = open(f"/proc/{pid_file.read_text().strip()}/stat").read()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


@pytest.fixture
def regions(tmp_path):
    require_binary()
    us, eu = App(), App()
    processes = []
    yield tmp_path, us, eu, processes
    stop_all(processes, (us, eu))


def command_step(name, script, extra=""):
    return f"""
[[runbook]]
name = "{name}"
kind = "command"
program = "sh"
args = ["-c", {json.dumps(script)}]
{extra}
"""


def test_noisy_and_daemon_starting_commands_succeed_once_and_promptly(regions):
    tmp, us, eu, processes = regions
    audit, applied, count, daemon = tmp / "audit.jsonl", tmp / "applied", tmp / "count", tmp / "daemon.pid"
    noisy = ("i=0; while [ $i -lt 4096 ]; do echo 'progress: copying the next block, please wait' >&2; "
             f"i=$((i+1)); done; echo \"$SWITCHYARD_GENERATION\" >> {applied}")
    daemon_script = f"echo \"$SWITCHYARD_GENERATION\" >> {count}; sleep 30 & echo $! > {daemon}; exit 0"
    config = tmp / "switchyard.toml"
    config.write_text(controller_toml(audit, policy="min_hold_ms = 600000\nstartup_grace_ms = 0")
                      + two_regions_toml(us.port, eu.port)
                      + command_step("noisy", noisy, "timeout_ms = 5000\nretries = 1")
                      + command_step("starts-daemon", daemon_script, "timeout_ms = 3000\nretries = 2")
                      + '\n[[runbook]]\nname = "pointer"\nkind = "pointer"\n')
    try:
        _, url, log = start_controller(config, tmp, processes)
        wait_until("the initial runbook", lambda: get_json(url, "/v1/active-region").get("region") == "us-east-1",
                   deadline_s=20, logs=[log])
        attempts = {(s["step"], s["attempt"]): s for s in steps_of(audit)}
        assert attempts[("noisy", 1)]["outcome"] == "ok", attempts
        assert attempts[("starts-daemon", 1)]["outcome"] == "ok", attempts
        assert ("noisy", 2) not in attempts and ("starts-daemon", 2) not in attempts, attempts
        # The step ended when the script did, not when the background process closed the pipes.
        assert attempts[("starts-daemon", 1)]["duration_ms"] < 2000, attempts
        assert applied.read_text().split() == ["1"] and count.read_text().split() == ["1"]
        assert not gone(daemon), "a process the step started in the background is left running"
    finally:
        if daemon.exists() and not gone(daemon):
            os.kill(int(daemon.read_text()), signal.SIGTERM)


def test_a_timed_out_command_and_one_running_at_shutdown_take_their_processes_along(regions):
    tmp, us, eu, processes = regions
    audit = tmp / "audit.jsonl"
    late, grandchild = tmp / "late", tmp / "grandchild.pid"
    # The grandchild would apply its effect 1.5 s later, after the attempt timed out.
    script = f"(sleep 1.5; echo \"late $SWITCHYARD_GENERATION\" >> {late}) & echo $! > {grandchild}; sleep 60"
    config = tmp / "switchyard.toml"
    config.write_text(controller_toml(audit, policy="min_hold_ms = 600000\nstartup_grace_ms = 0\nrunbook_retry_ms = 60000")
                      + two_regions_toml(us.port, eu.port)
                      + command_step("promote", script, "timeout_ms = 300\nretries = 0"))
    _, _, log = start_controller(config, tmp, processes)
    wait_until("the attempt to time out",
               lambda: any("timed out after 300 ms" in s["detail"] for s in steps_of(audit)), logs=[log])
    wait_until("the timed-out attempt's grandchild to be gone", lambda: gone(grandchild), deadline_s=5, logs=[log])
    assert not late.exists(), late.read_text()

    # A step still running when the controller stops: its process group goes with it.
    late_at_stop, grandchild_at_stop = tmp / "late-at-stop", tmp / "grandchild-at-stop.pid"
    script = f"(sleep 1.5; echo late >> {late_at_stop}) & echo $! > {grandchild_at_stop}; sleep 60"
    audit2 = tmp / "audit2.jsonl"
    config.write_text(controller_toml(audit2, policy="min_hold_ms = 600000\nstartup_grace_ms = 0")
                      + two_regions_toml(us.port, eu.port)
                      + command_step("promote", script, "timeout_ms = 60000\nretries = 0"))
    controller, _, log = start_controller(config, tmp, processes, name="second")
    wait_until("the step to start its grandchild", lambda: grandchild_at_stop.exists()
               and grandchild_at_stop.read_text().strip(), logs=[log])
    controller.send_signal(signal.SIGTERM)
    assert controller.wait(timeout=20) == 0, log.read_text()[-3000:]
    # The controller waited for the group to be gone before it exited.
    assert gone(grandchild_at_stop), "the step's processes outlived the controller"
    assert not late_at_stop.exists()


class Receiver(QuietHandler):
    """A notify webhook: answers what `mode` says (409 "deployment in progress", or 200)."""
    mode = {"status": 409}
    seen = []
    lock = threading.Lock()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        with Receiver.lock:
            Receiver.seen.append(body)
            status = Receiver.mode["status"]
        if status == 409:
            self.answer(409, {"error": "a deployment is already in progress"})
        else:
            self.answer(200, b"ok")


def test_a_webhook_answering_a_plain_409_does_not_fence_and_a_later_failover_runs(regions):
    tmp, us, eu, processes = regions
    Receiver.mode["status"], Receiver.seen[:] = 409, []
    hook = Served(Receiver)
    audit = tmp / "audit.jsonl"
    config = tmp / "switchyard.toml"
    config.write_text(controller_toml(audit, policy="min_hold_ms = 0\nstartup_grace_ms = 0\nrunbook_retry_ms = 200")
                      + two_regions_toml(us.port, eu.port) + f"""
[[runbook]]
name = "notify"
kind = "webhook"
url = "{hook.url}/notify"
retries = 1
backoff_ms = 50

[[runbook]]
name = "pointer"
kind = "pointer"
""")
    try:
        _, url, log = start_controller(config, tmp, processes)
        wait_until("the 409 to be seen and retried",
                   lambda: len([s for s in steps_of(audit) if s["step"] == "notify"]) >= 2, logs=[log])
        outcomes = {s["outcome"] for s in steps_of(audit) if s["step"] == "notify"}
        assert outcomes == {"error"}, steps_of(audit)
        assert get_json(url, "/v1/status")["engine"]["fenced"] is False
        # The deployment is over and us-east-1 dies: the failover runs.
        with Receiver.lock:
            Receiver.mode["status"] = 200
        us.stop()
        wait_until("the failover", lambda: get_json(url, "/v1/active-region").get("region") == "eu-west-1",
                   deadline_s=20, logs=[log])
        with Receiver.lock:
            assert Receiver.seen[-1]["to"] == "eu-west-1", Receiver.seen[-1]
        assert get_json(url, "/v1/status")["engine"]["fenced"] is False
    finally:
        hook.stop()


DNS_CONFIG = """
[dns]
reload_interval_ms = 100
""" + failover_zone_toml("serial = 2026112401\nminimum = 30")


def test_the_dns_admin_api_still_fences_a_stale_generation(regions):
    tmp, us, eu, processes = regions
    (tmp / "dns.toml").write_text(DNS_CONFIG)
    ready = tmp / "dns.ready"
    env = dict(os.environ, SWITCHYARD_CONTROL_TOKEN=TOKEN)
    dns = subprocess.Popen([str(BINARY), "dns", "--config", str(tmp / "dns.toml"), "--listen", "127.0.0.1:0",
                            "--admin-listen", "127.0.0.1:0", "--ready-file", str(ready)],
                           env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "dns.log", "ab"))
    processes.append(dns)
    wait_until("dns to listen", lambda: ready.exists() and len(ready.read_text().splitlines()) == 2,
               logs=[tmp / "dns.log"])
    admin = "http://" + ready.read_text().splitlines()[1]
    # Another controller applied generation 100.
    push = urllib.request.Request(f"{admin}/v1/health", method="PUT",
                                  data=json.dumps({"generation": 100, "targets": {"us-east-1": "healthy"}}).encode(),
                                  headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(push, timeout=5) as response:
        assert response.status == 200
    audit = tmp / "audit.jsonl"
    config = tmp / "switchyard.toml"
    config.write_text(controller_toml(audit, policy="min_hold_ms = 600000\nstartup_grace_ms = 0")
                      + two_regions_toml(us.port, eu.port) + f"""
[dns]
admin_url = "{admin}"

[[runbook]]
name = "dns"
kind = "dns_health"
retries = 2
""")
    _, url, log = start_controller(config, tmp, processes)
    wait_until("the controller to be fenced", lambda: get_json(url, "/v1/status")["engine"]["fenced"], logs=[log])
    dns_steps = [s for s in steps_of(audit) if s["step"] == "dns"]
    assert [s["outcome"] for s in dns_steps] == ["fenced"], dns_steps
    assert "stale_generation" in dns_steps[0]["detail"], dns_steps
