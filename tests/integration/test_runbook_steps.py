"""The controller's `command` and `webhook` runbook steps as a real process: a webhook receiver
that answers a plain 409 (no fence: a later failover still runs), and the real `switchyard dns`
refusing a stale generation (fenced)."""

import json
import os
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


@pytest.fixture
def regions(tmp_path):
    require_binary()
    us, eu = App(), App()
    processes = []
    yield tmp_path, us, eu, processes
    stop_all(processes, (us, eu))


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
