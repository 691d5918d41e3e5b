"""Every component's `/metrics` passes `promtool check metrics` (Debian's `prometheus` package):
the two regional stores and the controller (with the lock deployment of test_lock.py), the DNS
server (test_dns.py's zone) and the load balancer (test_proxy.py's stack). Also the content
negotiation: the Prometheus text format 0.0.4 by default, OpenMetrics when the scraper's
`Accept` prefers it (what Prometheus itself sends), series in a stable order, and every series
the Grafana dashboard in docs/grafana/ queries exists."""

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from test_dns import CONFIG as DNS_CONFIG, DnsServer
from test_lock import Deployment
from test_proxy import TOKEN as PROXY_TOKEN, Backend, Proxy

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "switchyard-dashboard.json"


def dashboard_series(prefix):
    """The series names the Grafana dashboard in docs/ queries, of one component."""
    exprs = [target["expr"] for panel in json.loads(DASHBOARD.read_text())["panels"] for target in panel["targets"]]
    return {name for expr in exprs for name in re.findall(r"switchyard_[a-z_]+", expr) if name.startswith(prefix)}


def assert_dashboard_uses_real_series(prefix, text):
    names = dashboard_series(prefix)
    assert names, f"the dashboard queries nothing of {prefix}"
    served = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    # A family declared without series yet (the media gauges of a controller without a
    # media_sync step) is still one the component exports.
    served |= {line.split(" ")[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    missing = names - served
    assert not missing, f"the dashboard queries series {prefix} does not serve: {missing}"

PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
                     "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def scrape(url, accept=None, token=None):
    request = urllib.request.Request(url)
    if accept:
        request.add_header("Accept", accept)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["Content-Type"], response.read().decode()


def check(name, url, token=None):
    content_type, text = scrape(url, token=token)
    assert content_type.startswith("text/plain; version=0.0.4"), (name, content_type)
    assert "# EOF" not in text and "# UNIT" not in text, name
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    # promtool prints lint problems (missing HELP, counters without _total, non-base units) and
    # exits non-zero on any of them.
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), \
        f"{name}: {result.stdout}{result.stderr}\n{text}"
    open_type, open_text = scrape(url, accept=PROMETHEUS_ACCEPT, token=token)
    assert open_type.startswith("application/openmetrics-text; version=1.0.0"), (name, open_type)
    assert open_text.rstrip().endswith("# EOF"), name
    return text


@pytest.fixture(autouse=True)
def promtool():
    if shutil.which("promtool") is None:
        pytest.skip("promtool missing: apt-get install prometheus (scripts/install-test-deps.sh does)")


def test_stores_and_controller(tmp_path):
    deployment = Deployment(tmp_path)
    try:
        # Some traffic first, so the families have series.
        assert deployment.lock("us-east-1", "cron", ["true"]).returncode == 0
        for region, port in deployment.ports.items():
            text = check(f"store {region}", f"http://127.0.0.1:{port}/metrics")
            assert "switchyard_store_replication_lag_seconds{" in text
            assert "# TYPE switchyard_store_tombstones_purged_total counter" in text
            again = scrape(f"http://127.0.0.1:{port}/metrics")[1]
            series = [line.split(" ")[0] for line in text.splitlines() if line.startswith("switchyard_store_requests")]
            assert series == [line.split(" ")[0] for line in again.splitlines()
                              if line.startswith("switchyard_store_requests")][:len(series)], "stable order"
            assert_dashboard_uses_real_series("switchyard_store_", text)
        text = check("controller", f"{deployment.controller}/metrics")
        assert "# TYPE switchyard_controller_reports_total counter" in text
        assert_dashboard_uses_real_series("switchyard_controller_", text)
    finally:
        deployment.close()


def test_dns(tmp_path):
    server = DnsServer(tmp_path, DNS_CONFIG)
    server.start()
    try:
        assert server.short("plain.shop.example") == ["192.0.2.1"]
        status, body = server.put("/v1/health", {"generation": 1, "targets": {"us-east-1": "healthy",
                                                                              "eu-west-1": "healthy"}})
        assert status == 200, body
        text = check("dns", f"{server.admin}/metrics")
        assert "switchyard_dns_queries_total{" in text
        assert_dashboard_uses_real_series("switchyard_dns_", text)
    finally:
        server.stop()


def test_proxy(tmp_path):
    backends = [Backend(name, tmp_path) for name in ("web1", "web2")]
    proxy = Proxy(tmp_path, backends)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{proxy.port}/", timeout=10) as response:
            assert response.status == 200
        text = check("proxy", f"{proxy.admin}/metrics", token=PROXY_TOKEN)
        assert 'switchyard_proxy_server_requests_total{server="web1"}' in text
        assert_dashboard_uses_real_series("switchyard_proxy_", text)
    finally:
        proxy.stop()
        for backend in backends:
            backend.stop()


def test_demo_shop_and_fault_proxy(tmp_path):
    """The demo shop and the fault proxy serve /metrics too: a store, a fault proxy in front of
    it and a shop through that link; an order counts on the shop, the connections on the proxy."""
    from test_demo_app import Browser, Process, api

    started = []
    try:
        store = Process(tmp_path, "store", ["store", "--region", "us-east-1", "--listen", "127.0.0.1:0",
                                            "--data-dir", str(tmp_path / "data")])
        started.append(store)
        faults = Process(tmp_path, "fault-proxy", ["fault-proxy", "--listen", "127.0.0.1:0",
                                                    "--proxy", f"store=127.0.0.1:0={store.address}"])
        started.append(faults)
        _, proxy = api(faults, "GET", "/proxies/store")
        shop = Process(tmp_path, "shop", ["demo-app", "--region", "us-east-1", "--listen", "127.0.0.1:0",
                                          "--store", f"us-east-1=http://{proxy['listen']}", "--tables-create"])
        started.append(shop)
        browser = Browser(shop.url)
        browser.wait_health(lambda status, _: status == 200, "ok")
        browser.json("POST", "/api/cart", {"product": "grinder", "quantity": 1})
        browser.json("POST", "/api/orders", expect=201)

        text = check("demo shop", f"{shop.url}/metrics")
        assert "switchyard_demoapp_orders_placed_total 1" in text, text
        assert 'switchyard_demoapp_responses_total{method="POST",code="2xx"}' in text, text

        text = check("fault proxy", f"{faults.url}/metrics")
        accepted = [line for line in text.splitlines()
                    if line.startswith('switchyard_faultproxy_connections_accepted_total{proxy="store"}')]
        assert accepted and int(float(accepted[0].split()[-1])) >= 1, text
        assert 'switchyard_faultproxy_proxy_enabled{proxy="store"} 1' in text, text
    finally:
        for process in reversed(started):
            process.stop()
