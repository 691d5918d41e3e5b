"""The control APIs against a web page in the operator's browser: a cross-site request (a POST
with `Content-Type: text/plain` needs no CORS preflight) or a DNS-rebinding page (its own
name resolving to loopback) must not change anything, token or not. Black box, the real
binary: the DNS server's admin API and the fault proxy's API (the controller's is tested in
crates/controller, the proxy's admin API in crates/proxy, the rule itself in common::secret)."""

import http.client
import json

import pytest

from test_dns import CONFIG, DnsServer
from test_fault_proxy import BINARY, FaultProxy

pytestmark = [pytest.mark.process]


@pytest.fixture(autouse=True)
def built():
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built")


def send(url, method, path, headers, body=b""):
    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for name, value in headers.items():
        connection.putheader(name, value)
    connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body)
    response = connection.getresponse()
    answer = response.status, response.read().decode()
    connection.close()
    return answer


def test_the_dns_admin_api_refuses_a_pages_requests(tmp_path):
    push = json.dumps({"generation": 5, "targets": {"us-east-1": "unhealthy"}}).encode()
    for token in ("admin-token-0123456789", ""):
        workdir = tmp_path / (token or "open")
        workdir.mkdir()
        server = DnsServer(workdir, CONFIG, token=token)
        server.start()
        try:
            own_host = server.admin.removeprefix("http://")
            auth = {"Authorization": f"Bearer {token}"} if token else {}
            forged = [
                {"Host": own_host, "Origin": "https://evil.example", "Content-Type": "text/plain", **auth},
                {"Host": own_host, "Sec-Fetch-Site": "cross-site", **auth},
            ]
            if not token:
                forged.append({"Host": "rebind.attacker.example", "Origin": "http://rebind.attacker.example"})
            for headers in forged:
                status, body = send(server.admin, "PUT", "/v1/health", headers, push)
                assert status == 403 and ("browser" in body or "no token" in body), (headers, status, body)
            assert json.loads(server.get("/v1/health"))["generation"] == 0, "nothing was pushed"
            status, body = send(server.admin, "PUT", "/v1/health", {"Host": own_host, "Content-Type": "application/json", **auth}, push)
            assert status == 200, body
        finally:
            server.stop()


def test_the_fault_proxy_api_refuses_a_pages_requests(tmp_path):
    proxy = FaultProxy(tmp_path)
    try:
        own_host = proxy.url.removeprefix("http://")
        for headers in ({"Host": own_host, "Origin": "https://evil.example", "Content-Type": "text/plain"},
                        {"Host": "rebind.attacker.example"}):
            status, body = send(proxy.url, "POST", "/reset", headers)
            assert status == 403, (headers, status, body)
        assert send(proxy.url, "POST", "/reset", {"Host": own_host})[0] in (200, 204)
    finally:
        proxy.stop()
