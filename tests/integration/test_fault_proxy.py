"""`switchyard fault-proxy` as a black box: a control API beyond loopback needs a token, and
proxies relay only to the networks allowed by --allow-upstream (loopback by default)."""

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("SWITCHYARD_BIN", REPO / "target" / "debug" / "switchyard"))
START_DEADLINE_S = 20
TOKEN = "fault-proxy-integration-token-0123"

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]


@pytest.fixture(autouse=True)
def built():
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built")


class FaultProxy:
    def __init__(self, workdir, *args, token=None):
        self.ready = workdir / "ready"
        env = dict(os.environ)
        env.pop("SWITCHYARD_FAULT_PROXY_TOKEN", None)
        if token:
            env["SWITCHYARD_FAULT_PROXY_TOKEN"] = token
        self.log = workdir / "fault-proxy.log"
        self.process = subprocess.Popen([str(BINARY), "fault-proxy", "--ready-file", str(self.ready), *args],
                                        env=env, stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))
        deadline = time.monotonic() + START_DEADLINE_S
        while not (self.ready.exists() and self.ready.read_text().strip()):
            assert self.process.poll() is None, self.log.read_text()[-2000:]
            assert time.monotonic() < deadline, self.log.read_text()[-2000:]
            time.sleep(0.05)
        port = self.ready.read_text().strip().rsplit(":", 1)[1]
        self.url = f"http://127.0.0.1:{port}"

    def call(self, method, path, body=None, token=None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            assert self.process.wait(timeout=20) == 0, self.log.read_text()[-2000:]


def test_listening_beyond_loopback_without_a_token_is_refused(tmp_path):
    env = dict(os.environ)
    env.pop("SWITCHYARD_FAULT_PROXY_TOKEN", None)
    result = subprocess.run([str(BINARY), "fault-proxy", "--listen", "0.0.0.0:0"], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "--token-file" in result.stderr and "SWITCHYARD_FAULT_PROXY_TOKEN" in result.stderr, result.stderr


def test_with_a_token_the_control_api_needs_it(tmp_path):
    proxy = FaultProxy(tmp_path, "--listen", "0.0.0.0:0", token=TOKEN)
    try:
        status, body = proxy.call("GET", "/proxies")
        assert status == 401 and "Bearer" in body["error"], body
        status, _ = proxy.call("GET", "/proxies", token="not-the-token")
        assert status == 401
        status, body = proxy.call("GET", "/proxies", token=TOKEN)
        assert (status, body) == (200, {})
        assert proxy.call("GET", "/health")[0] == 200
    finally:
        proxy.stop()


def test_upstreams_are_loopback_only_unless_allowed(tmp_path):
    proxy = FaultProxy(tmp_path, "--listen", "127.0.0.1:0")
    try:
        status, body = proxy.call("POST", "/proxies",
                                  {"name": "out", "listen": "127.0.0.1:0", "upstream": "10.9.8.7:80"})
        assert status == 403 and "--allow-upstream" in body["error"], body
        status, body = proxy.call("POST", "/proxies",
                                  {"name": "in", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"})
        assert status == 201, body
    finally:
        proxy.stop()
    (tmp_path / "second").mkdir()
    proxy = FaultProxy(tmp_path / "second", "--listen", "127.0.0.1:0", "--allow-upstream", "10.9.0.0/16")
    try:
        status, body = proxy.call("POST", "/proxies",
                                  {"name": "out", "listen": "127.0.0.1:0", "upstream": "10.9.8.7:80"})
        assert status == 201, body
        status, body = proxy.call("POST", "/proxies",
                                  {"name": "local", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"})
        assert status == 403 and "10.9.0.0/16" in body["error"], body
    finally:
        proxy.stop()


def test_a_bad_allow_upstream_names_the_value():
    result = subprocess.run([str(BINARY), "fault-proxy", "--allow-upstream", "10.0.0.0/99"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "10.0.0.0/99" in result.stderr and "like" in result.stderr, result.stderr
