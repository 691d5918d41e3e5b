"""What the black-box tests share: the binary under test, polling with a deadline, free ports, a
stand-in region application, the pieces of a controller's TOML, and starting a controller.

One place for helpers that more than one test file needs (labs start through `labrun`); a
test file keeps only what is its own."""

import http.server
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("SWITCHYARD_BIN", REPO / "target" / "debug" / "switchyard"))
# The admin token the tests give their controllers (`SWITCHYARD_CONTROL_TOKEN`).
TOKEN = "integration-control-token-0123456789"
# How long a controller has to write its ready file.
START_DEADLINE_S = 20
POLL_S = 0.05
LOG_TAIL_CHARS = 3000


def require_binary():
    """Skips the test when the binary under test is not built."""
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built (cargo build -p switchyard)")


def wait_until(what, condition, deadline_s=20, logs=(), ignore=(), poll_s=POLL_S):
    """Calls `condition` every `poll_s` until it returns something truthy, and returns that.

    After `deadline_s` it fails naming `what`, with the tails of the files in `logs` that exist.
    Exceptions of the types in `ignore` count as "not yet" (e.g. a server still starting);
    any other exception ends the wait at once."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            value = condition()
            if value:
                return value
        except ignore:
            pass
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {log}:\n{Path(log).read_text(errors='replace')[-LOG_TAIL_CHARS:]}"
                              for log in logs if Path(log).exists())
            raise AssertionError(f"timed out waiting for {what} ({deadline_s}s)\n{tails}")
        time.sleep(poll_s)


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mounts_allowed():
    """Whether this process may mount a tmpfs (root, and not in a container that forbids it)."""
    if os.geteuid() != 0:
        return False
    with tempfile.TemporaryDirectory() as probe:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", probe], capture_output=True)
        if mounted.returncode != 0:
            return False
        subprocess.run(["umount", probe], capture_output=True)
    return True


class Ok(http.server.BaseHTTPRequestHandler):
    """Answers every GET with 200 `ok`."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


class App:
    """A region's application on 127.0.0.1:`port` (any free one by default; a given one to come
    back where a stopped app was): answers 200 until stopped; then the port refuses connections."""

    def __init__(self, port=0):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Ok)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


# A check's timing as most tests want it: down after two failures 100 ms apart, up after one.
FAST_CHECK = {"interval_ms": 200, "fast_interval_ms": 100, "timeout_ms": 300, "fall": 2, "rise": 1}
# The same intervals with switchyard's default timeout, fall and rise.
INTERVALS_ONLY = {"interval_ms": 200, "fast_interval_ms": 100}


def controller_toml(audit, vantages=("controller",), policy="min_hold_ms = 600000", quorum=""):
    """`[controller]` (vantage "controller", `audit_log = audit`, 50 ms ticks), `[policy]` (no
    failback lag check, then the lines in `policy`) and `[quorum]` (`vantages`, then the lines
    in `quorum`, reports every 100 ms)."""
    quorum = f"{quorum}\n" if quorum else ""
    return f"""
[controller]
vantage = "controller"
audit_log = "{audit}"
tick_ms = 50

[policy]
failback_lag_check = false
{policy}

[quorum]
vantages = {json.dumps(list(vantages))}
{quorum}report_interval_ms = 100
"""


def regions_toml(*names):
    """One `[[regions]]` table a name, priorities 1, 2, ... in the order given."""
    return "".join(f"""
[[regions]]
name = "{name}"
priority = {priority}
""" for priority, name in enumerate(names, start=1))


# The head of a config that tests only check (`switchyard config check`): regions us and eu.
CHECKED_HEAD = """
[controller]
listen = "127.0.0.1:7400"

[quorum]
vantages = ["controller"]
""" + regions_toml("us", "eu")


# Lines 1-16 of a config whose errors tests find by line number: regions nyc3 and ams3 with a
# TCP check each; a test's own lines start at line 17.
NUMBERED_HEAD_LINES = [
    "[quorum]",                                         # 1
    'vantages = ["controller"]',                       # 2
    "[[regions]]",                                      # 3
    'name = "nyc3"',                                    # 4
    "priority = 1",                                     # 5
    "[[regions]]",                                      # 6
    'name = "ams3"',                                    # 7
    "priority = 2",                                     # 8
    "[[checks]]",                                       # 9
    'name = "a"',                                       # 10
    'region = "nyc3"',                                  # 11
    'kind = { type = "tcp", address = "127.0.0.1:1" }',  # 12
    "[[checks]]",                                       # 13
    'name = "b"',                                       # 14
    'region = "ams3"',                                  # 15
    'kind = { type = "tcp", address = "127.0.0.1:2" }',  # 16
]


def http_check_toml(name, region, port, timing=FAST_CHECK):
    """A `[[checks]]` table probing http://127.0.0.1:`port`/health for `region`, with the
    fields in `timing` (a dict, in order)."""
    fields = "".join(f"{key} = {value}\n" for key, value in timing.items())
    return f"""
[[checks]]
name = "{name}"
region = "{region}"
kind = {{ type = "http", url = "http://127.0.0.1:{port}/health" }}
{fields}"""


def two_regions_toml(us_port, eu_port, names=("use1-app", "euw1-app"), timing=FAST_CHECK):
    """Regions us-east-1 (priority 1) and eu-west-1, each with an HTTP check of its app."""
    return (regions_toml("us-east-1", "eu-west-1") + http_check_toml(names[0], "us-east-1", us_port, timing)
            + http_check_toml(names[1], "eu-west-1", eu_port, timing))


def start_controller(config, workdir, processes=None, env=None, args=(), deadline_s=START_DEADLINE_S):
    """Starts `switchyard controller --config CONFIG --listen 127.0.0.1:0` with its ready file and
    log (stderr, appended) in `workdir`, appends it to `processes` (when given) and waits for it
    to listen (killing it if it does not).

    `env` defaults to this environment plus the admin token `TOKEN`. Returns
    `(process, url, log)`."""
    ready, log = workdir / "ready", workdir / "controller.log"
    if env is None:
        env = dict(os.environ, SWITCHYARD_CONTROL_TOKEN=TOKEN)
    process = subprocess.Popen([str(BINARY), "controller", "--config", str(config), "--listen", "127.0.0.1:0",
                                "--ready-file", str(ready), *args], env=env, stdout=subprocess.DEVNULL,
                               stderr=open(log, "ab"))
    if processes is not None:
        processes.append(process)
    try:
        address = wait_until("the controller to listen", lambda: ready.exists() and ready.read_text().strip(),
                             deadline_s, [log])
    except AssertionError:
        process.kill()
        process.wait(timeout=10)
        raise
    return process, f"http://{address}", log
