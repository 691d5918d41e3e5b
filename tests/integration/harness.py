"""What the black-box tests share: the binary under test, polling with a deadline, free ports, a
stand-in region application, the pieces of a controller's TOML, starting a controller, and
starting a `switchyard lab` (`running_lab`).

One place for helpers that more than one test file needs; a test file keeps only what is its
own."""

import collections
import contextlib
import http.server
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
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


MOTO_SERVER = Path(sys.executable).parent / "moto_server"


@contextlib.contextmanager
def running_moto(env=None, deadline_s=60):
    """Yields the URL of a moto server (moto[server] from PyPI, next to this Python) on a free
    port of 127.0.0.1, started with `env`; stops it afterwards."""
    assert MOTO_SERVER.exists(), f"{MOTO_SERVER} missing: run ./scripts/install-test-deps.sh (moto[server])"
    process = subprocess.Popen([str(MOTO_SERVER), "-H", "127.0.0.1", "-p0"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env=env)
    url = None
    deadline = time.monotonic() + deadline_s
    while url is None and time.monotonic() < deadline:
        line = process.stderr.readline()
        match = re.search(r"Running on (http://127\.0\.0\.1:\d+)", line)
        if match:
            url = match.group(1)
        elif not line and process.poll() is not None:
            break
    assert url, "moto_server did not print its address"
    # moto logs every request on stderr: read on, or a full pipe blocks the server (its requests
    # and its exit alike).
    threading.Thread(target=lambda: collections.deque(process.stderr, maxlen=0), daemon=True).start()
    try:
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def require_binary():
    """Skips the test when the binary under test is not built."""
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built (cargo build -p switchyard)")


def complete_jsonl(path):
    """The records of a JSON-lines file another process is appending to: only the lines it has
    finished (ended by a newline), so a line caught half-written is not read yet."""
    if not path.exists():
        return []
    text = path.read_text()
    finished = text[:text.rfind("\n") + 1]
    return [json.loads(line) for line in finished.splitlines() if line.strip()]


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


# A private CA and its certificates, made by openssl for a test (EC P-256, valid two days).
OPENSSL_DEADLINE_S = 60


def openssl(*args, cwd):
    """Runs `openssl ARGS` in `cwd`; a failure fails the test."""
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=OPENSSL_DEADLINE_S)


def make_ca(folder):
    """A CA in `folder` (ca.pem, ca.key); returns ca.pem."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=switchyard-test-ca", cwd=folder)
    return folder / "ca.pem"


def signed_cert(folder, name, extensions):
    """A key and certificate `name`.pem/.key with CN `name` and the X.509 `extensions` (openssl
    extfile lines), signed by the CA in `folder`."""
    (folder / f"{name}.ext").write_text(extensions)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=folder)
    return folder / f"{name}.pem", folder / f"{name}.key"


def make_server_cert(folder, name):
    """A server certificate for 127.0.0.1 signed by the CA in `folder`: (cert, key)."""
    return signed_cert(folder, name, "subjectAltName=IP:127.0.0.1\n")


def make_client_cert(folder, name):
    """A client certificate (extendedKeyUsage clientAuth) signed by the CA in `folder`: (cert, key)."""
    return signed_cert(folder, name, "extendedKeyUsage=clientAuth\n")


def make_pki(tmp_path, server_name):
    """`tmp_path`/pki with a CA and a server certificate `server_name` for 127.0.0.1:
    (folder, ca, cert, key)."""
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = make_ca(pki)
    cert, key = make_server_cert(pki, server_name)
    return pki, ca, cert, key


def lab_resolve(base_port, name="www.shop.example."):
    """The addresses in the A answer for `name` from the lab's DNS server (UDP, `base_port` + 2),
    sorted."""
    import dns.message
    import dns.query

    query = dns.message.make_query(name, "A")
    answer = dns.query.udp(query, "127.0.0.1", port=base_port + 2, timeout=2)
    return sorted(item.address for rrset in answer.answer for item in rrset)


def lab_ctl(directory, *args):
    """`switchyard lab ctl --dir DIRECTORY ARGS`: a fault injected into (or healed in) a running lab."""
    return subprocess.run([str(BINARY), "lab", "ctl", "--dir", str(directory), *args],
                          capture_output=True, text=True, timeout=90)


def assert_fault_drill(directory, report_path, scenario, duration_s):
    """Runs `switchyard drill SCENARIO` on the lab in `directory` (3 s warm-up, `duration_s` of
    fault, 10 s settle) with its JSON report at `report_path`, and asserts what holds on any
    machine: the fault's two steps (inject, heal) went through, the controller failed over at
    least once, and no acknowledged write was lost. RTO bounds are not asserted (a loaded machine
    may miss them). Returns the report."""
    drill = subprocess.run(
        [str(BINARY), "drill", scenario, "--lab", str(directory), "--warmup-s", "3",
         "--duration-s", str(duration_s), "--settle-s", "10", "--no-progress", "--json", str(report_path)],
        capture_output=True, text=True, timeout=180)
    assert report_path.exists(), drill.stdout[-3000:] + drill.stderr[-3000:]
    report = json.loads(report_path.read_text())
    steps = [e for e in report["events"] if e["kind"] == "step"]
    assert len(steps) == 2 and all(e["ok"] for e in steps), steps
    assert report["measurements"]["failovers"] >= 1, report["measurements"]
    assert report["check"]["lost"] == 0 and report["check"]["acknowledged"] > 0, report["check"]
    return report


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


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """A request handler that logs nothing, with `answer` to send a whole response."""

    def answer(self, status, body, headers=None):
        """Sends `status` with `body` (bytes as they are; anything else as JSON) and `headers`."""
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Served:
    """`handler` (a request handler class) served on 127.0.0.1:`port` (any free one by default)
    from a daemon thread, at `url`, until `stop()`."""

    def __init__(self, handler, port=0):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class Ok(QuietHandler):
    """Answers every GET with 200 `ok`."""

    def do_GET(self):
        self.answer(200, b"ok")


class App(Served):
    """A region's application on 127.0.0.1:`port` (any free one by default; a given one to come
    back where a stopped app was): answers 200 until stopped; then the port refuses connections."""

    def __init__(self, port=0):
        super().__init__(Ok, port)


# A check's timing as most tests want it: down after two failures 100 ms apart, up after one.
FAST_CHECK = {"interval_ms": 200, "fast_interval_ms": 100, "timeout_ms": 300, "fall": 2, "rise": 1}
# The same intervals with switchyard's default timeout, fall and rise.
INTERVALS_ONLY = {"interval_ms": 200, "fast_interval_ms": 100}


def controller_toml(audit, vantages=("controller",), policy="min_hold_ms = 600000", quorum=""):
    """`[controller]` (its own vantage the first of `vantages`, `audit_log = audit`, 50 ms
    ticks), `[policy]` (no failback lag check, then the lines in `policy`) and `[quorum]`
    (`vantages`, then the lines in `quorum`, reports every 100 ms)."""
    quorum = f"{quorum}\n" if quorum else ""
    return f"""
[controller]
vantage = "{vantages[0]}"
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


def media_sync_toml(mode, locations, settings="run_timeout_ms = 30000", step="timeout_ms = 60000"):
    """A `[[runbook]]` step "media" of kind media_sync: the step's own lines `step`, `mode`, the
    lines in `settings`, and `locations` (region -> {field: value}, e.g. {"us": {"url": ...}})."""
    places = "".join(f"{region} = {{ {', '.join(f'{key} = {json.dumps(str(value))}' for key, value in fields.items())} }}\n"
                     for region, fields in locations.items())
    return f"""
[[runbook]]
name = "media"
kind = "media_sync"
{step}

[runbook.media_sync]
mode = "{mode}"
{settings}

[runbook.media_sync.locations]
{places}"""


def dns_records_toml(*records):
    """One `[[dns.zones.records]]` table a `(name, type, values)` record (values: a list of strings)."""
    return "".join(f"""
[[dns.zones.records]]
name = "{name}"
type = "{kind}"
values = {json.dumps(values)}
""" for name, kind, values in records)


def failover_zone_toml(soa, records=()):
    """`[[dns.zones]]` shop.example. (name server ns1 at 192.0.2.53, the SOA fields in `soa`), the
    `records` (see `dns_records_toml`), and `app`: a failover A record answering 192.0.2.10 while
    us-east-1 is healthy, else 198.51.100.10 (eu-west-1)."""
    return f"""
[[dns.zones]]
origin = "shop.example."
ns = ["ns1"]

[dns.zones.soa]
{soa}
""" + dns_records_toml(("ns1", "A", ["192.0.2.53"]), *records) + """
[[dns.zones.records]]
name = "app"
type = "A"
policy = "failover"

[[dns.zones.records.members]]
role = "primary"
values = ["192.0.2.10"]
health = "us-east-1"

[[dns.zones.records.members]]
role = "secondary"
values = ["198.51.100.10"]
health = "eu-west-1"
"""


def assert_config_ok(config, env=None):
    """`switchyard config check CONFIG` passes (exit 0)."""
    checked = subprocess.run([str(BINARY), "config", "check", str(config)], env=env, capture_output=True, text=True,
                             timeout=30)
    assert checked.returncode == 0, checked.stderr


def spawn(args, log, processes=None, env=None):
    """Starts `switchyard ARGS` (stdout dropped, stderr appended to `log`), adds it to
    `processes` when given, and returns it."""
    process = subprocess.Popen([str(BINARY), *args], env=env, stdout=subprocess.DEVNULL, stderr=open(log, "ab"))
    if processes is not None:
        processes.append(process)
    return process


def stop_all(processes, servers=(), terminate_s=None):
    """Ends each process still running: SIGKILL, or with `terminate_s` SIGTERM and that long for
    it to exit before SIGKILL. Then stops each of `servers` (a server the test stopped already
    may complain; that is ignored)."""
    for process in processes:
        if process.poll() is not None:
            continue
        if terminate_s is not None:
            process.terminate()
            try:
                process.wait(timeout=terminate_s)
                continue
            except subprocess.TimeoutExpired:
                pass
        process.kill()
        process.wait(timeout=10)
    for server in servers:
        try:
            server.stop()
        except Exception:
            pass


def start_controller(config, workdir, processes=None, env=None, args=(), deadline_s=START_DEADLINE_S,
                     name="controller"):
    """Starts `switchyard controller --config CONFIG --listen 127.0.0.1:0 ARGS` with its ready
    file `NAME.ready` and its log `NAME.log` (stderr, appended) in `workdir`, appends it to
    `processes` (when given) and waits for it to listen (killing it if it does not).

    `env` defaults to this environment plus the admin token `TOKEN`. Returns
    `(process, url, log)`."""
    ready, log = workdir / f"{name}.ready", workdir / f"{name}.log"
    if env is None:
        env = dict(os.environ, SWITCHYARD_CONTROL_TOKEN=TOKEN)
    process = spawn(["controller", "--config", str(config), "--listen", "127.0.0.1:0", "--ready-file", str(ready),
                     *args], log, processes, env)
    try:
        address = wait_until(f"{name} to listen", lambda: ready.exists() and ready.read_text().strip(),
                             deadline_s, [log])
    except AssertionError:
        process.kill()
        process.wait(timeout=10)
        raise
    return process, f"http://{address}", log


# Starting a `switchyard lab` for a test: a free port block below the ephemeral range, up when
# `switchyard status --lab` says so, stopped with SIGTERM (and a clean exit asserted). Every test
# that starts a lab goes through `running_lab`: the port-block retry, the readiness wait and the
# clean stop live here once.

PORT_BLOCK_TRIES = 10
LAB_POLL_S = 0.3
LAB_STOP_DEADLINE_S = 60


def lab_status(directory, binary=BINARY, env=None):
    """`switchyard status --lab DIRECTORY` (exit 0 once the lab is up)."""
    return subprocess.run([str(binary), "status", "--lab", str(directory)], capture_output=True, text=True,
                          timeout=60, env=env)


class RunningLab:
    """A started lab. Unpacks as `(directory, base_port)`; `process` and `log_path` are there for
    tests that signal the lab themselves (call `killed()` after killing it on purpose)."""

    def __init__(self, directory, base_port, process, log_path):
        self.directory = directory
        self.base_port = base_port
        self.process = process
        self.log_path = log_path
        self.killed_on_purpose = False

    def __iter__(self):
        return iter((self.directory, self.base_port))

    def log_tail(self, chars=5000):
        return self.log_path.read_text(errors="replace")[-chars:]

    def killed(self):
        self.killed_on_purpose = True


@contextlib.contextmanager
def running_lab(binary, root, *args, start_deadline_s=90, env=None):
    """Yields a `RunningLab` started with `args` under `root` (its directory is `root/lab`)."""
    directory = root / "lab"
    log_path = root / "lab.log"
    env = dict(env) if env is not None else dict(os.environ)
    for _ in range(PORT_BLOCK_TRIES):
        # Below the kernel's ephemeral range (32768+), where outgoing connections take ports.
        base_port = random.randrange(20000, 32000, 500)
        log = open(log_path, "w")
        process = subprocess.Popen(
            [str(binary), "lab", "--dir", str(directory), "--base-port", str(base_port), *args],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        deadline = time.monotonic() + start_deadline_s
        while process.poll() is None and lab_status(directory, binary, env).returncode != 0:
            if time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"the lab was not up within {start_deadline_s}s:\n"
                                     + log_path.read_text()[-5000:])
            time.sleep(LAB_POLL_S)
        if process.poll() is None:
            break
        assert "not free" in log_path.read_text(), log_path.read_text()[-5000:]
    else:
        raise AssertionError(f"no free port block for the lab in {PORT_BLOCK_TRIES} tries")
    lab = RunningLab(directory, base_port, process, log_path)
    try:
        yield lab
    finally:
        if lab.killed_on_purpose:
            process.wait(timeout=LAB_STOP_DEADLINE_S)
        else:
            assert process.poll() is None, f"the lab ended during the test:\n{lab.log_tail()}"
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=LAB_STOP_DEADLINE_S)
            assert code == 0, lab.log_tail()
