"""The demo shop as a black box: real `switchyard store`, `switchyard fault-proxy` and
`switchyard demo-app` processes on loopback, driven with urllib (a cookie jar keeps the
session), curl and boto3. The store sits behind the fault proxy, so taking the link down and
healing it is a real fault the shop's /health has to notice."""

import http.cookiejar
import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request

import boto3
import pytest
from botocore.config import Config

from harness import BINARY, QuietHandler, Served
START_DEADLINE_S = 30
WAIT_S = 20

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]


class Process:
    """One switchyard subcommand with a ready file and a log."""

    def __init__(self, directory, name, args):
        self.directory, self.name = directory, name
        self.ready = directory / f"{name}.ready"
        self.log = directory / f"{name}.log"
        command = [str(BINARY), *args, "--ready-file", str(self.ready)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))
        deadline = time.monotonic() + START_DEADLINE_S
        while not (self.ready.exists() and self.ready.read_text()):
            if self.process.poll() is not None:
                raise AssertionError(f"{name} exited: {self.log.read_text()[-3000:]}")
            assert time.monotonic() < deadline, f"{name} not ready in {START_DEADLINE_S}s: {self.log.read_text()[-3000:]}"
            time.sleep(0.05)
        self.address = self.ready.read_text().strip()
        self.url = f"http://{self.address}"

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            assert self.process.wait(timeout=20) == 0, self.log.read_text()[-3000:]


@pytest.fixture
def processes(tmp_path):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built")
    started = []

    def start(name, *args):
        process = Process(tmp_path, name, list(args))
        started.append(process)
        return process

    yield start
    for process in reversed(started):
        process.stop()


class Browser:
    """urllib with a cookie jar: the session cookie travels like a browser's."""

    def __init__(self, base):
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def call(self, method, path, body=None, headers=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers or {})
        request.add_header("Content-Type", "application/json")
        try:
            with self.opener.open(request, timeout=10) as response:
                return response.status, response.read(), response.headers
        except urllib.error.HTTPError as error:
            return error.code, error.read(), error.headers

    def json(self, method, path, body=None, expect=200, headers=None):
        status, raw, _ = self.call(method, path, body, headers)
        assert status == expect, f"{method} {path}: {status} {raw[:500]!r}"
        return json.loads(raw)

    def wait_health(self, accept, what):
        deadline = time.monotonic() + WAIT_S
        while True:
            status, raw, _ = self.call("GET", "/health")
            body = json.loads(raw)
            if accept(status, body):
                return body
            assert time.monotonic() < deadline, f"health never {what}: {status} {body}"
            time.sleep(0.1)


def api(fault_proxy, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(fault_proxy.url + path, data=data, method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        raw = response.read()
        return response.status, (json.loads(raw) if raw else None)


def store_client(url, region):
    return boto3.client(
        "dynamodb", region_name=region, endpoint_url=url,
        aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )


def test_shop_orders_live_in_the_store_and_health_follows_the_link(processes, tmp_path):
    store = processes("store", "store", "--region", "us-east-1", "--listen", "127.0.0.1:0",
                      "--data-dir", str(tmp_path / "data"))
    faults = processes("fault-proxy", "fault-proxy", "--listen", "127.0.0.1:0",
                       "--proxy", f"store=127.0.0.1:0={store.address}")
    _, proxy = api(faults, "GET", "/proxies/store")
    shop = processes("shop", "demo-app", "--region", "us-east-1", "--listen", "127.0.0.1:0",
                     "--store", f"us-east-1=http://{proxy['listen']}", "--tables-create", "--instance", "shop-a")
    browser = Browser(shop.url)
    health = browser.wait_health(lambda status, _: status == 200, "ok")
    assert health["checks"] == {"local_store": "ok", "pointer": "ok"}

    cart = browser.json("POST", "/api/cart", {"product": "grinder", "quantity": 2})
    assert cart["total_cents"] == 25800
    order = browser.json("POST", "/api/orders", expect=201)
    assert order["status"] == "placed" and order["instance"] == "shop-a"
    assert browser.json("GET", f"/api/orders/{order['order_id']}") == order

    # The order is an item in the store, readable with boto3.
    items = store_client(store.url, "us-east-1").scan(TableName="shop_orders")["Items"]
    assert [item["order_id"]["S"] for item in items] == [order["order_id"]]

    # The HTML page, fetched with curl and the same cookie.
    assert shutil.which("curl"), "curl is missing: run scripts/install-test-deps.sh"
    cookie = next(c for c in browser.opener.handlers if isinstance(c, urllib.request.HTTPCookieProcessor))
    session = next(c.value for c in cookie.cookiejar if c.name == "shop_session")
    page = subprocess.run(["curl", "-sf", "-H", f"Cookie: shop_session={session}", shop.url + "/"],
                          capture_output=True, text=True, timeout=10, check=True).stdout
    assert "Burr grinder" in page and order["order_id"] in page

    # Cut the link to the store: /health turns 503 and names the store; heal: back to 200.
    status, _ = api(faults, "POST", "/proxies/store", {"enabled": False})
    assert status == 200
    body = browser.wait_health(lambda status, _: status == 503, "503")
    assert "local_store" in body["reason"], body
    status, _ = api(faults, "POST", "/reset")
    assert status == 204
    browser.wait_health(lambda status, _: status == 200, "ok again")
    assert browser.json("GET", "/api/orders")["orders"] == [order]


class Pointer(Served):
    """An active-region pointer served like the controller's (plain polling is enough here);
    `failing` makes it answer 503, as a controller that cannot serve it; `refused` counts
    those answers."""

    def __init__(self, region, generation=1):
        self.value = {"region": region, "generation": generation}
        self.failing = False
        self.refused = 0
        pointer = self

        class Handler(QuietHandler):
            def do_GET(self):
                if pointer.failing:
                    pointer.refused += 1
                    self.answer(503, {"error": "unavailable"})
                else:
                    self.answer(200, pointer.value)

        super().__init__(Handler)

    def flip(self, region):
        self.value = {"region": region, "generation": self.value["generation"] + 1}


def test_writes_follow_the_active_region_pointer(processes, tmp_path):
    east = processes("east", "store", "--region", "us-east-1", "--listen", "127.0.0.1:0",
                     "--data-dir", str(tmp_path / "east"))
    west = processes("west", "store", "--region", "eu-west-1", "--listen", "127.0.0.1:0",
                     "--data-dir", str(tmp_path / "west"))
    for store, region in [(east, "us-east-1"), (west, "eu-west-1")]:
        # Tables per region (these stores are not peers, so writes stay where they land).
        processes(f"tables-{region}", "demo-app", "--region", region, "--listen", "127.0.0.1:0",
                  "--store", f"{region}={store.url}", "--tables-create").stop()
    # As a controller answers before its first placement: no region, generation 0.
    pointer = Pointer(None, generation=0)
    try:
        shop = processes("shop", "demo-app", "--region", "us-east-1", "--listen", "127.0.0.1:0",
                         "--store", f"us-east-1={east.url}", "--store", f"eu-west-1={west.url}",
                         "--pointer", pointer.url)
        browser = Browser(shop.url)
        # Writes wait for a region; /health stays 200 (the controller places a first region only
        # where its checks pass) and says why writes are refused.
        waiting = browser.wait_health(lambda status, body: status == 200 and "pointer" in body["details"],
                                      "saying no region is placed")
        assert waiting["active_region"] is None, waiting
        assert "no active region yet" in waiting["details"]["pointer"], waiting
        status, raw, _ = browser.call("POST", "/api/cart", {"product": "mug"})
        assert status == 503 and b"not chosen an active region" in raw, (status, raw)
        pointer.flip("us-east-1")
        browser.wait_health(lambda status, body: status == 200 and body["active_region"] == "us-east-1", "east")
        browser.json("POST", "/api/cart", {"product": "mug"})
        first = browser.json("POST", "/api/orders", expect=201)
        assert first["region"] == "us-east-1"

        pointer.flip("eu-west-1")
        browser.wait_health(lambda status, body: status == 200 and body["active_region"] == "eu-west-1", "west")
        browser.json("POST", "/api/cart", {"product": "kettle"})
        second = browser.json("POST", "/api/orders", expect=201)
        assert (second["region"], second["generation"]) == ("eu-west-1", 2)

        east_orders = {i["order_id"]["S"] for i in store_client(east.url, "us-east-1").scan(TableName="shop_orders")["Items"]}
        west_orders = {i["order_id"]["S"] for i in store_client(west.url, "eu-west-1").scan(TableName="shop_orders")["Items"]}
        assert east_orders == {first["order_id"]}
        assert west_orders == {second["order_id"]}

        # The active region hangs (its store frozen: connections accepted, nothing answered).
        # This region's /health reports it but still answers healthy, and fast: within a
        # checker's timeout (the lab's load balancer gives up after 400 ms), or the standby
        # would look down exactly when it is needed.
        west.process.send_signal(signal.SIGSTOP)
        try:
            request = urllib.request.Request(shop.url + "/health")
            with urllib.request.urlopen(request, timeout=1.0) as response:
                body = json.loads(response.read())
            assert response.status == 200, body
            assert body["details"]["active_store"] == "unreachable", body
            assert "did not answer" in body["details"]["active_store_error"], body
        finally:
            west.process.send_signal(signal.SIGCONT)
    finally:
        pointer.server.shutdown()


def test_an_unreachable_pointer_is_logged_once_then_summed_up_not_at_every_retry(processes, tmp_path):
    """The shop asks again every 500 ms while the pointer fails. Before, each failure was a
    WARN line (7,200 an hour); now the first one is (with the region it keeps), then a summary
    at most every 30 s, and one INFO line when the pointer answers again."""
    store = processes("store", "store", "--region", "us-east-1", "--listen", "127.0.0.1:0",
                      "--data-dir", str(tmp_path / "data"))
    processes("tables", "demo-app", "--region", "us-east-1", "--listen", "127.0.0.1:0",
              "--store", f"us-east-1={store.url}", "--tables-create").stop()
    pointer = Pointer("us-east-1")
    try:
        shop = processes("shop", "demo-app", "--region", "us-east-1", "--listen", "127.0.0.1:0",
                         "--store", f"us-east-1={store.url}", "--pointer", pointer.url)
        browser = Browser(shop.url)
        browser.wait_health(lambda status, body: status == 200 and body["active_region"] == "us-east-1", "east")
        pointer.failing = True
        # Eight failed requests: about four seconds of retries, well within one summary interval.
        deadline = time.monotonic() + WAIT_S
        while pointer.refused < 8:
            assert time.monotonic() < deadline, f"the shop asked only {pointer.refused} times"
            time.sleep(0.05)

        def pointer_lines(level):
            return [line for line in shop.log.read_text().splitlines()
                    if level in line and "active-region pointer" in line]

        warnings = pointer_lines("WARN")
        assert len(warnings) == 1, warnings
        assert "keeping the last known active region" in warnings[0], warnings
        assert "us-east-1" in warnings[0] and "HTTP 503" in warnings[0], warnings
        pointer.failing = False
        deadline = time.monotonic() + WAIT_S
        while not pointer_lines("reachable again"):
            assert time.monotonic() < deadline, shop.log.read_text()[-3000:]
            time.sleep(0.05)
        [back] = pointer_lines("reachable again")
        assert "INFO" in back, back
        failures = int(back.split("failures=")[1].split()[0])
        assert failures >= 8, back
        assert len(pointer_lines("WARN")) == 1, pointer_lines("WARN")
    finally:
        pointer.server.shutdown()
