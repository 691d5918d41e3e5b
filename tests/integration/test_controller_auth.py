"""Per-agent credentials and roles on the real binary: tokens made by `switchyard token new`, a
real agent reporting with its own token, forged reports (agent A's token claiming vantage B)
refused with 403 and unable to cause a failover, each role limited to its endpoints through
the CLI, relative token files, and `config check` on URLs and durations."""

import json
import os
import time
import subprocess
import urllib.error
import urllib.request

import pytest

from harness import (BINARY, INTERVALS_ONLY, START_DEADLINE_S, App, controller_toml, spawn, stop_all, two_regions_toml,
                     wait_until)

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]


def run(*args, token=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_CONTROL_TOKEN")}
    if token is not None:
        env["SWITCHYARD_CONTROL_TOKEN"] = token
    return subprocess.run([str(BINARY), *args], env=env, capture_output=True, text=True, timeout=30)


def new_token(role, name):
    """`switchyard token new`: the token (first line) and the snippet after it."""
    made = run("token", "new", "--role", role, "--name", name)
    assert made.returncode == 0, made.stderr
    token, _, snippet = made.stdout.partition("\n")
    assert len(token) == 64 and f'name = "{name}"' in snippet, made.stdout
    return token, snippet


def call(url, method, path, token, body=None):
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"{url}{path}", data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def report(vantage, us_status, eu_status, sent_at_ms):
    def result(check, region, status):
        return {"check": check, "region": region, "status": status, "since_ms": 0, "detail": status,
                "latency_ms": 1, "replica_lag_ms": None}
    return {"vantage": vantage, "sent_at_ms": sent_at_ms,
            "results": [result("use1-app", "us-east-1", us_status), result("euw1-app", "eu-west-1", eu_status)]}


@pytest.fixture
def deployment(tmp_path):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built (cargo build -p switchyard)")
    us, eu = App(), App()
    processes = []

    def start(args, log):
        return spawn(args, log, processes,
                     {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_CONTROL_TOKEN")})

    yield tmp_path, us, eu, start
    stop_all(processes, (us, eu))


def test_a_forged_agent_cannot_fail_over_and_each_role_keeps_to_its_endpoints(deployment):
    tmp, us, eu, start = deployment
    etc = tmp / "etc"
    etc.mkdir()
    agent_a, agent_a_snippet = new_token("agent", "agent-a")
    agent_b, agent_b_snippet = new_token("agent", "agent-b")
    operator, operator_snippet = new_token("operator", "alice")
    reader, reader_snippet = new_token("read", "grafana")
    # agent-a's token in a file next to the config (a relative path), the rest as hashes.
    (etc / "agent-a.token").write_text(agent_a + "\n")
    (etc / "agent-a.token").chmod(0o600)
    agent_a_entry = '[[tokens]]\nname = "agent-a"\nrole = "agent"\ntoken_file = "agent-a.token"\n'
    # Each snippet from its [[tokens]] table on (the comments before it say where the token goes).
    snippets = "\n".join(s[s.index("[[tokens]]"):] for s in (agent_b_snippet, operator_snippet, reader_snippet))
    config = etc / "switchyard.toml"
    config.write_text(controller_toml("audit.jsonl", vantages=("controller", "agent-a", "agent-b"),
                                      policy="down_confirm_ms = 0", quorum="report_stale_ms = 600000")
                      + two_regions_toml(us.port, eu.port, timing=INTERVALS_ONLY) + f"""
[[runbook]]
name = "pointer"
kind = "pointer"

{agent_a_entry}
{snippets}
""")
    checked = run("config", "check", str(config))
    assert checked.returncode == 0, checked.stderr
    # The tokens and their files draw no warning (the fast check timings here do: timeout_ms
    # above interval_ms, on purpose, as in the other controller tests).
    warnings = [line for line in checked.stderr.splitlines() if "warning:" in line]
    assert not [w for w in warnings if "token" in w or "readable" in w], checked.stderr
    assert "4 tokens; roles without one: none" in checked.stdout, checked.stdout

    # Started from another directory: the relative audit log and token file are found next to
    # the config anyway.
    ready = tmp / "ready"
    log = tmp / "controller.log"
    start(["controller", "--config", str(config), "--listen", "127.0.0.1:0", "--ready-file", str(ready)], log)
    wait_until("the controller to listen", lambda: ready.exists() and ready.read_text(), START_DEADLINE_S, [log])
    url = f"http://{ready.read_text().strip()}"
    wait_until("the audit log next to the config", lambda: (etc / "audit.jsonl").exists(), logs=[log])

    # A real agent with its own token (given as a file) reports as itself.
    (tmp / "agent-b.token").write_text(agent_b)
    agent_log = tmp / "agent-b.log"
    start(["agent", "--controller", url, "--name", "agent-b", "--token-file", str(tmp / "agent-b.token")], agent_log)

    def fresh(name):
        status = call(url, "GET", "/v1/status", reader)[1]
        return any(v["name"] == name and v["fresh"] for v in status["vantages"])

    wait_until("agent-b's reports", lambda: fresh("agent-b"), logs=[log, agent_log])
    started_ms = int(time.time() * 1000)
    status, _ = call(url, "POST", "/v1/agent/report", agent_a, report("agent-a", "up", "up", started_ms))
    assert status == 204
    wait_until("the initial placement",
               lambda: call(url, "GET", "/v1/active-region", reader)[1].get("region") == "us-east-1", logs=[log])

    # Agent a is compromised: it says us-east-1 is down, as itself and (twice) as agent-b and as
    # the controller. Only its own vote counts.
    status, _ = call(url, "POST", "/v1/agent/report", agent_a, report("agent-a", "down", "up", started_ms + 1))
    assert status == 204
    # The same report captured and sent again long after: refused, it never votes again.
    status, body = call(url, "POST", "/v1/agent/report", agent_a, report("agent-a", "down", "up", 2))
    assert status == 400 and body["code"] == "too_old", body
    for sent_at, forged in enumerate(["agent-b", "controller", "agent-b"], start=3):
        status, body = call(url, "POST", "/v1/agent/report", agent_a, report(forged, "down", "up", 10**9 + sent_at))
        assert status == 403, body
        assert body["code"] == "other_vantage", body
        assert f"not as '{forged}'" in body["error"], body
    view = call(url, "GET", "/v1/status", reader)[1]
    assert view["verdicts"]["us-east-1"]["votes_down"] == 1, view["verdicts"]
    assert view["verdicts"]["us-east-1"]["state"] != "down", view["verdicts"]
    assert call(url, "GET", "/v1/active-region", reader)[1]["region"] == "us-east-1"
    # Each refused (caller, vantage) pair is logged once, not per request.
    text = log.read_text()
    assert text.count("refused an agent request for another vantage point") == 2, text[-3000:]

    # Agent a cannot fetch agent-b's plan, nor use the operator's or reader's endpoints.
    assert call(url, "GET", "/v1/agent/plan?name=agent-b", agent_a)[0] == 403
    assert call(url, "GET", "/v1/agent/plan?name=agent-a", agent_a)[0] == 200
    assert call(url, "POST", "/v1/failover", agent_a)[0] == 403
    assert call(url, "GET", "/v1/status", agent_a)[0] == 403

    # Through the CLI: a reader sees status but cannot pause; an operator can.
    shown = run("status", "--controller", url, token=reader)
    assert shown.returncode == 0 and "active region: us-east-1" in shown.stdout, shown.stderr
    refused = run("pause", "--controller", url, token=reader)
    assert refused.returncode != 0
    assert "403" in refused.stderr and "needs role operator" in refused.stderr, refused.stderr
    assert run("pause", "--controller", url, token=operator).returncode == 0
    assert "PAUSED" in run("status", "--controller", url, token=operator).stdout
    unknown = run("status", "--controller", url, token="not-a-token-0123456789")
    assert unknown.returncode != 0 and "401" in unknown.stderr, unknown.stderr
    assert "this command sent none" not in unknown.stderr, unknown.stderr
    # No token at all: the answer says how to send one.
    tokenless = run("switchover", "--to", "eu-west-1", "--controller", url)
    assert tokenless.returncode != 0 and "401" in tokenless.stderr, tokenless.stderr
    assert "this command sent none" in tokenless.stderr and "SWITCHYARD_CONTROL_TOKEN_FILE" in tokenless.stderr, tokenless.stderr


def test_config_check_parses_urls_and_bounds_durations(tmp_path):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built (cargo build -p switchyard)")
    bad = tmp_path / "bad.toml"
    bad.write_text(f"""[policy]
min_hold_ms = {2**63 - 1}

[[regions]]
name = "a"
priority = 1

[[checks]]
name = "a-app"
region = "a"
kind = {{ type = "http", url = "http://:8080/health" }}

[dns]
admin_url = "http://127.0.0.1:99999"

[[tokens]]
name = "ops"
role = "operator"
token_file = "missing.token"
""")
    result = run("config", "check", str(bad))
    assert result.returncode == 1
    err = result.stderr
    assert f"{bad}:2:1: error: [policy] min_hold_ms = {2**63 - 1} is above the bound of 86400000 ms (1 day(s))" in err, err
    assert "'http://:8080/health' has no host" in err, err
    assert f"{bad}:14:13: error: [dns] admin_url: 'http://127.0.0.1:99999': port '99999' is not a number in 1..=65535" in err, err
    assert f"cannot read {tmp_path / 'missing.token'}" in err, err
    assert "fix:" in err
