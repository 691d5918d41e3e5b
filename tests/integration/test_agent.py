"""`switchyard agent` as a black box: a controller stand-in (Python's http.server) serves the
plan and records reports; the agent probes a real TCP listener and an HTTP server, reports the
changes as they happen, sends the bearer token, and stops cleanly on SIGTERM."""

import json
import os
import signal
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("SWITCHYARD_BIN", REPO / "target" / "debug" / "switchyard"))
TOKEN = "agent-test-token"
DEADLINE_S = 20

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]


class Controller:
    """Serves one plan at /v1/agent/plan and keeps every report posted to /v1/agent/report."""

    def __init__(self, plan):
        self.plan = plan
        self.reports = []
        self.plan_queries = []
        self.refused = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def authorized(self):
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    with outer.lock:
                        outer.refused += 1
                    self.send_response(401)
                    self.end_headers()
                    return False
                return True

            def do_GET(self):
                if not self.authorized():
                    return
                path, _, query = self.path.partition("?")
                if path != "/v1/agent/plan":
                    self.send_response(404)
                    self.end_headers()
                    return
                with outer.lock:
                    outer.plan_queries.append(query)
                body = json.dumps(outer.plan).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                if not self.authorized():
                    return
                length = int(self.headers.get("Content-Length", "0"))
                report = json.loads(self.rfile.read(length))
                with outer.lock:
                    outer.reports.append(report)
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def latest(self, check):
        with self.lock:
            for report in reversed(self.reports):
                for result in report["results"]:
                    if result["check"] == check:
                        return result
        return None

    def close(self):
        self.server.shutdown()


class Health(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        body = b"status: ok"
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def wait_for(what, condition):
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def check(name, kind):
    return {"name": name, "region": "us-east-1", "kind": kind, "interval_ms": 100,
            "fast_interval_ms": 50, "timeout_ms": 500, "rise": 2, "fall": 2}


@pytest.fixture
def binary():
    if not BINARY.exists():
        pytest.fail(f"{BINARY} not built: run `cargo build -p switchyard` or set SWITCHYARD_BIN")
    return BINARY


def test_agent_reports_state_changes_with_the_token(binary, tmp_path):
    target = socket.socket()
    target.bind(("127.0.0.1", 0))
    target.listen(16)
    tcp_address = "127.0.0.1:%d" % target.getsockname()[1]
    web = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    plan = {
        "checks": [
            check("use1-db", {"type": "tcp", "address": tcp_address}),
            check("use1-app", {"type": "http", "url": f"http://127.0.0.1:{web.server_address[1]}/health",
                               "body_contains": "ok"}),
        ],
        "report_interval_ms": 100,
    }
    controller = Controller(plan)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    log = tmp_path / "agent.log"
    agent = subprocess.Popen(
        [str(binary), "agent", "--controller", controller.url, "--name", "eu-agent",
         "--token-file", str(token_file), "--plan-refresh-ms", "500"],
        stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
    )
    try:
        wait_for("both checks up", lambda: all(
            (controller.latest(name) or {}).get("status") == "up" for name in ("use1-db", "use1-app")))
        with controller.lock:
            assert all(r["vantage"] == "eu-agent" for r in controller.reports)
            assert all(q == "name=eu-agent" for q in controller.plan_queries)
            assert controller.refused == 0
        app = controller.latest("use1-app")
        assert app["detail"] == "HTTP 200, body contains 'ok'"
        assert app["latency_ms"] is not None

        target.close()
        wait_for("the tcp check down", lambda: (controller.latest("use1-db") or {}).get("status") == "down")
        db = controller.latest("use1-db")
        assert "connect" in db["detail"], db
        assert controller.latest("use1-app")["status"] == "up"
        wait_for("a plan refresh", lambda: len(controller.plan_queries) >= 2)

        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=DEADLINE_S) == 0, log.read_text()[-3000:]
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        controller.close()
        web.shutdown()


@pytest.mark.parametrize("variable", ["SWITCHYARD_CONTROL_TOKEN_FILE", "SWITCHYARD_TOKEN_FILE"])
def test_agent_reads_its_token_file_from_the_variable_every_command_reads(binary, tmp_path, variable):
    """The agent takes SWITCHYARD_CONTROL_TOKEN_FILE like every other command (it read only
    SWITCHYARD_TOKEN_FILE before, which still works, with a warning)."""
    target = socket.socket()
    target.bind(("127.0.0.1", 0))
    target.listen(16)
    plan = {"checks": [check("use1-db", {"type": "tcp", "address": "127.0.0.1:%d" % target.getsockname()[1]})],
            "report_interval_ms": 100}
    controller = Controller(plan)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    log = tmp_path / "agent.log"
    env = {k: v for k, v in os.environ.items()
           if k not in ("SWITCHYARD_CONTROL_TOKEN", "SWITCHYARD_CONTROL_TOKEN_FILE", "SWITCHYARD_TOKEN_FILE")}
    env[variable] = str(token_file)
    agent = subprocess.Popen(
        [str(binary), "agent", "--controller", controller.url, "--name", "eu-agent", "--plan-refresh-ms", "500"],
        stdout=subprocess.DEVNULL, stderr=open(log, "wb"), env=env,
    )
    try:
        wait_for("the check reported up", lambda: (controller.latest("use1-db") or {}).get("status") == "up")
        with controller.lock:
            assert controller.refused == 0
        deprecated = "SWITCHYARD_TOKEN_FILE is deprecated" in log.read_text()
        assert deprecated == (variable == "SWITCHYARD_TOKEN_FILE"), log.read_text()[-3000:]
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=DEADLINE_S) == 0, log.read_text()[-3000:]
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        controller.close()
        target.close()


def test_agent_refuses_a_controller_url_that_is_not_http_or_https(binary):
    result = subprocess.run(
        [str(binary), "agent", "--controller", "ftp://controller.example:7000", "--name", "eu-agent"],
        capture_output=True, text=True, timeout=DEADLINE_S,
        env={k: v for k, v in os.environ.items() if k != "SWITCHYARD_CONTROL_TOKEN"},
    )
    assert result.returncode != 0
    assert "ftp://controller.example:7000" in result.stderr, result.stderr
    assert "https://" in result.stderr, result.stderr
