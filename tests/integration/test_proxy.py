"""`switchyard proxy` as a black box: the real binary in front of real backend processes
(a small keep-alive HTTP server in Python), one of them killed with SIGKILL while a client loop runs (no request
may fail), and `switchyard proxy-ctl` draining a server."""

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("SWITCHYARD_BIN", REPO / "target" / "debug" / "switchyard"))
START_DEADLINE_S = 20
CONDITION_DEADLINE_S = 20
TOKEN = "proxy-test-token-0123456789"

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, condition, deadline_s=CONDITION_DEADLINE_S):
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# A backend that writes each response (headers and body) with one `sendall`, as an app server
# behind a buffering web server does. SIGKILL then lands between responses, never inside one:
# the case under test is a backend dying *between health checks*, which the proxy's retries
# must hide. A backend dying mid-response cannot be hidden by any proxy that streams (HAProxy
# and nginx included), since the client already holds the response's first bytes.
BACKEND_SCRIPT = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME, PORT = sys.argv[1], int(sys.argv[2])

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"ok\n" if self.path == "/health" else (NAME + "\n").encode()
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.wfile.write(head + body)

    def log_message(self, *arguments):
        pass

ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
"""


class Backend:
    """A keep-alive HTTP server whose `/` answers with the backend's name."""

    def __init__(self, name, root):
        self.name, self.port = name, free_port()
        self.log = root / f"{name}.log"
        self.process = subprocess.Popen(
            [sys.executable, "-c", BACKEND_SCRIPT, name, str(self.port)],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))
        wait_until(f"backend {name} to listen", lambda: accepts(self.port), START_DEADLINE_S)

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


class Proxy:
    def __init__(self, root, backends, extra=""):
        self.port, self.admin_port = free_port(), free_port()
        servers = "".join(
            f'\n[[proxy.servers]]\nname = "{b.name}"\naddress = "127.0.0.1:{b.port}"\n' for b in backends)
        # Checks a minute apart: a backend's death falls between two checks, so only the
        # proxy's retries keep clients from seeing it.
        self.config = root / "deployment.toml"
        self.config.write_text(f"""
[store]
listen = "127.0.0.1:8000"

[proxy]
listen = "127.0.0.1:{self.port}"
admin_listen = "127.0.0.1:{self.admin_port}"
balance = "roundrobin"
retries = 3
{extra}
[proxy.check]
inter_ms = 60000
path = "/health"
expect_status = [200]
{servers}""")
        self.token_file = root / "token"
        self.token_file.write_text(TOKEN + "\n")
        self.log = root / "proxy.log"
        ready = root / "proxy.ready"
        self.process = subprocess.Popen(
            [str(BINARY), "proxy", "--config", str(self.config), "--token-file", str(self.token_file),
             "--ready-file", str(ready)],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))
        deadline = time.monotonic() + START_DEADLINE_S
        while not ready.exists() or len(ready.read_text().split()) < 2:
            if self.process.poll() is not None:
                raise AssertionError(f"proxy exited: {self.log.read_text()[-3000:]}")
            assert time.monotonic() < deadline, "proxy not ready"
            time.sleep(0.05)

    @property
    def admin(self):
        return f"http://127.0.0.1:{self.admin_port}"

    def ctl(self, *arguments):
        result = subprocess.run(
            [str(BINARY), "proxy-ctl", "--admin", self.admin, "--token-file", str(self.token_file), *arguments],
            capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"proxy-ctl {arguments}: {result.stderr}"
        return result.stdout

    def servers(self):
        return {s["name"]: s for s in json.loads(self.ctl("--json", "servers"))}

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            assert self.process.wait(timeout=30) == 0, self.log.read_text()[-3000:]


class ClientLoop(threading.Thread):
    """Keeps GETting / through the proxy on one keep-alive connection; records every failure."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.stop_event = threading.Event()
        self.ok = 0
        self.failures = []
        self.served_by = {}

    def run(self):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self.stop_event.is_set():
            try:
                connection.request("GET", "/")
                response = connection.getresponse()
                body = response.read().decode()
                if response.status == 200:
                    self.ok += 1
                    name = body.strip()
                    self.served_by[name] = self.served_by.get(name, 0) + 1
                else:
                    self.failures.append(f"{response.status}: {body[:200]}")
            except (OSError, http.client.HTTPException) as error:
                self.failures.append(repr(error))
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        connection.close()


@pytest.fixture
def stack(tmp_path):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built (cargo build -p switchyard)")
    backends = [Backend(name, tmp_path) for name in ("web1", "web2", "web3")]
    proxy = None
    try:
        proxy = Proxy(tmp_path, backends)
        yield proxy, backends
    except BaseException:
        if proxy:
            print(proxy.log.read_text()[-5000:])
        raise
    finally:
        if proxy:
            proxy.stop()
        for backend in backends:
            backend.stop()


def test_sigkilled_backend_fails_no_client_request(stack):
    proxy, backends = stack
    loops = [ClientLoop(proxy.port) for _ in range(2)]
    for loop in loops:
        loop.start()
    try:
        wait_until("traffic on every backend",
                   lambda: all(sum(l.served_by.get(b.name, 0) for l in loops) >= 5 for b in backends))
        backends[1].kill()
        served_at_kill = sum(l.ok for l in loops)
        wait_until("200 more requests after the kill", lambda: sum(l.ok for l in loops) >= served_at_kill + 200)
        wait_until("web2 marked down by passive checks",
                   lambda: proxy.servers()["web2"]["status"].startswith("DOWN"))
    finally:
        for loop in loops:
            loop.stop_event.set()
        for loop in loops:
            loop.join(timeout=30)
    failures = [f for l in loops for f in l.failures]
    assert failures == [], f"client requests failed: {failures[:10]} ({len(failures)} in all)\n" \
                           f"{proxy.log.read_text()[-3000:]}"
    stats = json.loads(http_get(proxy.admin + "/stats.json"))
    assert stats["frontend"]["retries_total"] > 0, "requests that met web2 were retried"


def test_proxy_ctl_drains_and_readies_a_server(stack):
    proxy, _ = stack
    table = proxy.ctl("servers")
    assert "web1" in table and "STATUS" in table, table
    proxy.ctl("set-server", "web1", "drain")
    assert proxy.servers()["web1"]["status"].startswith("DRAIN")
    before = proxy.servers()["web1"]["requests"]
    bodies = [http_get(f"http://127.0.0.1:{proxy.port}/").strip() for _ in range(12)]
    assert "web1" not in bodies and set(bodies) == {"web2", "web3"}, bodies
    assert proxy.servers()["web1"]["requests"] == before, "a drained server takes no new requests"
    proxy.ctl("set-server", "web1", "ready")
    wait_until("web1 back in rotation",
               lambda: http_get(f"http://127.0.0.1:{proxy.port}/").strip() == "web1")
    proxy.ctl("set-weight", "web3", "0")
    assert proxy.servers()["web3"]["weight"] == 0
    bodies = [http_get(f"http://127.0.0.1:{proxy.port}/").strip() for _ in range(6)]
    assert "web3" not in bodies, bodies
    # Without the token the runtime API refuses.
    result = subprocess.run([str(BINARY), "proxy-ctl", "--admin", proxy.admin, "servers"],
                            capture_output=True, text=True, timeout=30,
                            env={k: v for k, v in os.environ.items() if k != "SWITCHYARD_CONTROL_TOKEN"})
    assert result.returncode != 0 and "401" in result.stderr, result.stderr
    metrics = http_get(proxy.admin + "/metrics")
    assert 'switchyard_proxy_server_up{server="web1"} 1' in metrics, metrics


def http_get(url):
    host, _, rest = url.removeprefix("http://").partition("/")
    name, _, port = host.partition(":")
    connection = http.client.HTTPConnection(name, int(port), timeout=30)
    try:
        connection.request("GET", "/" + rest, headers={"Authorization": f"Bearer {TOKEN}"})
        response = connection.getresponse()
        body = response.read().decode()
        assert response.status == 200, f"GET {url}: {response.status} {body[:300]}"
        return body
    finally:
        connection.close()


def make_certificate(directory, name):
    """A self-signed certificate for 127.0.0.1 (openssl), and its key."""
    cert, key = directory / f"{name}.pem", directory / f"{name}-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1", "-days", "2",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


def curl_tls(port, trusted, *flags):
    """curl over TLS trusting `trusted`: (exit code, body, HTTP version)."""
    result = subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", str(trusted), *flags,
                             "-w", "\n%{http_version}", f"https://127.0.0.1:{port}/"],
                            capture_output=True, text=True, timeout=30)
    body, _, version = result.stdout.rpartition("\n")
    return result.returncode, body.strip(), version


def test_tls_clients_are_served_over_both_protocols_and_a_renewed_certificate_is_taken_on_sighup(tmp_path):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built (cargo build -p switchyard)")
    if shutil.which("curl") is None or shutil.which("openssl") is None:
        pytest.skip("curl and openssl are needed (Debian packages curl, openssl)")
    backend = Backend("web1", tmp_path)
    first, second = make_certificate(tmp_path, "first"), make_certificate(tmp_path, "second")
    # Named relative to the configuration file's folder; the files a renewal replaces.
    served_cert, served_key = tmp_path / "shop.pem", tmp_path / "shop-key.pem"
    served_cert.write_bytes(first[0].read_bytes())
    served_key.write_bytes(first[1].read_bytes())
    proxy = Proxy(tmp_path, [backend], extra='tls_cert = "shop.pem"\ntls_key = "shop-key.pem"\n')
    try:
        for flag, version in (("--http1.1", "1.1"), ("--http2", "2")):
            code, body, got = curl_tls(proxy.port, first[0], flag)
            assert (code, body, got) == (0, "web1", version), (flag, code, body, got)
        # Plain HTTP to the TLS port is refused in the handshake: no answer from a server.
        plain = subprocess.run(["curl", "-sS", "--max-time", "10", f"http://127.0.0.1:{proxy.port}/"],
                               capture_output=True, text=True, timeout=30)
        assert "web1" not in plain.stdout
        # A renewed certificate (certbot's deploy hook rewrites the files, then sends SIGHUP).
        served_cert.write_bytes(second[0].read_bytes())
        served_key.write_bytes(second[1].read_bytes())
        proxy.process.send_signal(signal.SIGHUP)
        wait_until("the renewed certificate to be served", lambda: curl_tls(proxy.port, second[0])[0] == 0)
        assert curl_tls(proxy.port, first[0])[0] != 0, "the old certificate is no longer served"
        # A reload that fails (a key that is not PEM) keeps the certificate in use.
        served_key.write_text("not a key\n")
        proxy.process.send_signal(signal.SIGHUP)
        wait_until("the failed reload to be logged", lambda: "not reloaded" in proxy.log.read_text())
        assert curl_tls(proxy.port, second[0], "--http2")[:2] == (0, "web1")
        assert proxy.process.poll() is None
    finally:
        proxy.stop()
        backend.stop()


WEBSOCKET_SERVER_SCRIPT = r"""
import asyncio, sys
from http import HTTPStatus
from websockets.asyncio.server import serve

PORT = int(sys.argv[1])

def health(connection, request):
    if request.path == "/health":
        return connection.respond(HTTPStatus.OK, "ok\n")
    return None

async def session(websocket):
    # What the server saw of the request, then an echo of every message (binary as binary).
    headers = websocket.request.headers
    await websocket.send(f"hello {websocket.request.path} proto={headers.get('X-Forwarded-Proto')}")
    async for message in websocket:
        if message == "push":
            for n in range(3):
                await websocket.send(f"pushed {n}")
        elif message == "close please":
            await websocket.close(4001, "asked to")
        else:
            await websocket.send(message)

async def main():
    async with serve(session, "127.0.0.1", PORT, process_request=health, max_size=4 * 1024 * 1024):
        await asyncio.Future()

asyncio.run(main())
"""


class WebSocketBackend:
    """A real WebSocket server (the `websockets` package): greets, echoes, pushes, closes."""

    def __init__(self, root):
        self.name, self.port = "ws1", free_port()
        self.log = root / "ws1.log"
        self.process = subprocess.Popen([sys.executable, "-c", WEBSOCKET_SERVER_SCRIPT, str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))
        wait_until("the WebSocket server to listen", lambda: accepts(self.port), START_DEADLINE_S)

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def websocket_session(uri, ssl_context=None):
    """One session with the real `websockets` client; what it saw."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    seen = {}
    with connect(uri, ssl=ssl_context, open_timeout=10, close_timeout=10, max_size=4 * 1024 * 1024) as websocket:
        seen["greeting"] = websocket.recv(timeout=10)
        websocket.send("text one")
        seen["text"] = websocket.recv(timeout=10)
        payload = os.urandom(1024 * 1024)
        websocket.send(payload)
        seen["binary_intact"] = websocket.recv(timeout=10) == payload
        websocket.send("push")
        seen["pushed"] = [websocket.recv(timeout=10) for _ in range(3)]
        websocket.ping().wait(10)
        websocket.send("close please")
        try:
            websocket.recv(timeout=10)
        except ConnectionClosed as closed:
            seen["close"] = (closed.rcvd.code, closed.rcvd.reason)
    return seen


def stats(proxy):
    return json.loads(http_get(f"{proxy.admin}/stats.json"))["frontend"]


def test_websockets_pass_through_the_proxy_plain_and_over_tls(tmp_path):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built")
    import ssl

    backend = WebSocketBackend(tmp_path)
    cert, key = make_certificate(tmp_path, "ws")
    (tmp_path / "plain").mkdir()
    (tmp_path / "tls").mkdir()
    plain = Proxy(tmp_path / "plain", [backend])
    secure = Proxy(tmp_path / "tls", [backend], extra=f'tls_cert = "{cert}"\ntls_key = "{key}"\n')
    try:
        context = ssl.create_default_context(cafile=str(cert))
        for uri, ssl_context, proto in ((f"ws://127.0.0.1:{plain.port}/chat", None, "http"),
                                        (f"wss://127.0.0.1:{secure.port}/chat", context, "https")):
            seen = websocket_session(uri, ssl_context)
            assert seen == {
                "greeting": f"hello /chat proto={proto}",
                "text": "text one",
                "binary_intact": True,
                "pushed": ["pushed 0", "pushed 1", "pushed 2"],
                "close": (4001, "asked to"),
            }, (uri, seen)
        for proxy in (plain, secure):
            wait_until("the tunnels to be counted closed", lambda p=proxy: stats(p)["tunnels_active"] == 0)
            assert stats(proxy)["tunnels_total"] == 1
        # Plain requests still go through the same proxy.
        assert http_get(f"http://127.0.0.1:{plain.port}/health") == "ok\n"
    finally:
        plain.stop()
        secure.stop()
        backend.stop()
