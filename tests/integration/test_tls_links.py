"""TLS on every link, with certificates of a private CA made by openssl in the test:

- the controller serves its API over HTTPS (`--tls-cert`/`--tls-key`); a real agent reports to
  it at an `https://` URL trusting the CA through `--ca-file`, the CLI reads its status the same
  way, and without `--ca-file` the CLI refuses the unverified certificate and says so;
- `switchyard dns` serves its admin API over HTTPS and the controller pushes health to it at an
  `https://` `[dns] admin_url`; a switchover moves the DNS answer;
- `switchyard proxy` serves its admin API over HTTPS;
- mutual TLS between regions: a store with `--peer-client-ca` refuses replication from a peer
  that presents no client certificate (its reason shows in the sender's /health) and accepts
  it once the sender has `--peer-client-cert`/`--peer-client-key`, while DynamoDB clients need
  no certificate."""

import json
import os
import ssl
import subprocess
import urllib.error
import urllib.request

import pytest

from harness import (BINARY, INTERVALS_ONLY, START_DEADLINE_S, App, controller_toml, failover_zone_toml,
                     make_client_cert, make_pki, spawn, stop_all, two_regions_toml, wait_until)
from test_replication_tls import create_global_orders, started_pair

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]


def get_json(url, ca):
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def clean_env():
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("SWITCHYARD_CONTROL_TOKEN", "SWITCHYARD_CA_FILE", "SWITCHYARD_TLS"))}


@pytest.fixture
def processes(tmp_path):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built (cargo build -p switchyard)")
    started = []

    def start(args, log):
        return spawn(args, log, started, clean_env())

    yield start
    stop_all(started)


DNS_CONFIG = "\n[dns]" + failover_zone_toml('rname = "hostmaster.shop.example."\nserial = 1')


def test_controller_agent_cli_and_dns_admin_over_verified_https(tmp_path, processes):
    _, ca, cert, key = make_pki(tmp_path, "node")
    tls = ["--tls-cert", str(cert), "--tls-key", str(key)]
    us, eu = App(), App()
    try:
        # DNS with its admin API over HTTPS.
        (tmp_path / "dns.toml").write_text(DNS_CONFIG)
        dns_ready, dns_log = tmp_path / "dns.ready", tmp_path / "dns.log"
        processes(["dns", "--config", str(tmp_path / "dns.toml"), "--listen", "127.0.0.1:0",
                   "--admin-listen", "127.0.0.1:0", "--ready-file", str(dns_ready), *tls], dns_log)
        wait_until("dns to listen", lambda: dns_ready.exists() and len(dns_ready.read_text().splitlines()) == 2,
                   START_DEADLINE_S, [dns_log])
        dns_address, admin_address = dns_ready.read_text().splitlines()
        dns_admin = f"https://{admin_address}"

        config = tmp_path / "switchyard.toml"
        config.write_text(controller_toml("audit.jsonl", vantages=("controller", "agent-1"),
                                          policy="down_confirm_ms = 0", quorum="report_stale_ms = 600000")
                          + two_regions_toml(us.port, eu.port, timing=INTERVALS_ONLY) + f"""
[dns]
admin_url = "{dns_admin}"

[[runbook]]
name = "dns"
kind = "dns_health"
""")
        ready, log = tmp_path / "controller.ready", tmp_path / "controller.log"
        processes(["--ca-file", str(ca), "controller", "--config", str(config), "--listen", "127.0.0.1:0",
                   "--ready-file", str(ready), *tls], log)
        wait_until("the controller to listen", lambda: ready.exists() and ready.read_text(), START_DEADLINE_S, [log])
        url = f"https://{ready.read_text().strip()}"

        agent_log = tmp_path / "agent.log"
        processes(["agent", "--controller", url, "--name", "agent-1", "--ca-file", str(ca)], agent_log)

        def agent_fresh():
            status, body = get_json(f"{url}/v1/status", ca)
            return status == 200 and any(v["name"] == "agent-1" and v["fresh"] for v in body["vantages"])

        wait_until("agent-1's reports over HTTPS", agent_fresh, logs=[log, agent_log])

        # The controller pushed the initial placement to the DNS admin API over HTTPS.
        def dns_generation():
            status, body = get_json(f"{dns_admin}/v1/health", ca)
            return status == 200 and body.get("generation", 0) >= 1 and body

        view = wait_until("the controller's push to the HTTPS DNS admin API", dns_generation, logs=[log, dns_log])
        assert view["targets"].get("us-east-1") == "healthy", view

        def cli(*args, ca_file=True):
            extra = ["--ca-file", str(ca)] if ca_file else []
            return subprocess.run([str(BINARY), *extra, *args, "--controller", url], env=clean_env(),
                                  capture_output=True, text=True, timeout=30)

        shown = cli("status")
        assert shown.returncode == 0 and "active region: us-east-1" in shown.stdout, shown.stderr
        unverified = cli("status", ca_file=False)
        assert unverified.returncode != 0
        assert "certificate" in unverified.stderr.lower(), unverified.stderr

        # A switchover is pushed to DNS over HTTPS: the failover record answers eu-west-1's value.
        moved = cli("switchover", "--to", "eu-west-1")
        assert moved.returncode == 0, moved.stderr

        def eu_healthy_us_not():
            status, body = get_json(f"{dns_admin}/v1/health", ca)
            targets = body.get("targets", {})
            return targets.get("us-east-1") == "unhealthy" and targets.get("eu-west-1") == "healthy"

        wait_until("the switchover in DNS", eu_healthy_us_not, logs=[log, dns_log])
        port = dns_address.rsplit(":", 1)[1]
        answer = subprocess.run(["dig", "@127.0.0.1", "-p", port, "+short", "app.shop.example.", "A"],
                                capture_output=True, text=True, timeout=30).stdout.split()
        assert answer == ["198.51.100.10"], answer
    finally:
        us.stop()
        eu.stop()


def test_proxy_admin_api_over_https(tmp_path, processes):
    _, ca, cert, key = make_pki(tmp_path, "proxy")
    app = App()
    try:
        (tmp_path / "proxy.toml").write_text(f"""
[proxy]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[[proxy.servers]]
name = "app-1"
address = "127.0.0.1:{app.port}"
""")
        ready, log = tmp_path / "proxy.ready", tmp_path / "proxy.log"
        processes(["proxy", "--config", str(tmp_path / "proxy.toml"), "--ready-file", str(ready),
                   "--tls-cert", str(cert), "--tls-key", str(key)], log)
        wait_until("the proxy to listen", lambda: ready.exists() and len(ready.read_text().split()) == 2,
                   START_DEADLINE_S, [log])
        admin = ready.read_text().split()[1]
        status, body = get_json(f"https://{admin}/stats.json", ca)
        assert status == 200 and "app-1" in json.dumps(body), body
        # Plain HTTP on the HTTPS port gets no admin data.
        with pytest.raises(Exception):
            urllib.request.urlopen(f"http://{admin}/stats.json", timeout=5).read()
    finally:
        app.stop()


def test_mutual_tls_between_regions(tmp_path):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built")
    pki, ca, cert, key = make_pki(tmp_path, "store")
    client_cert, client_key = make_client_cert(pki, "region-client")
    server = ["--tls-cert", str(cert), "--tls-key", str(key), "--peer-ca", str(ca), "--peer-client-ca", str(ca)]
    identity = ["--peer-client-cert", str(client_cert), "--peer-client-key", str(client_key)]
    us, ap = started_pair(tmp_path, server + identity, server)
    try:
        # A DynamoDB client presents no certificate and is served.
        client = us.tls_client(ca)
        create_global_orders(client)
        client.put_item(TableName="orders", Item={"id": {"S": "from-us"}})
        ap_client = ap.tls_client(ca)
        ap_client.put_item(TableName="orders", Item={"id": {"S": "from-ap"}})
        # ap-south-1 has no client certificate: us-east-1 refuses everything it sends, and ap
        # says why in its /health.
        error = wait_until("ap-south-1 to report the refusal", lambda: ap.peer_error(ca, "us-east-1"), 60,
                           [us.log, ap.log])
        assert "client certificate" in error, error
        assert "Item" not in client.get_item(TableName="orders", Key={"id": {"S": "from-ap"}})

        # Given a client certificate, ap-south-1 is accepted: writes flow both ways.
        ap.stop()
        ap.extra_args = server + identity
        ap.start()
        ap_client = ap.tls_client(ca)
        wait_until("ap-south-1's write in us-east-1 once it presents a certificate",
                   lambda: client.get_item(TableName="orders", Key={"id": {"S": "from-ap"}}).get("Item"), 60,
                   [us.log, ap.log])
        wait_until("us-east-1's write in ap-south-1",
                   lambda: ap_client.get_item(TableName="orders", Key={"id": {"S": "from-us"}}).get("Item"), 60,
                   [us.log, ap.log])
    finally:
        for region in (us, ap):
            region.stop()
