"""`switchyard lab --tls`: the lab makes a CA and a certificate at start and serves every API
between components over HTTPS: the stores' API and replication (mutual TLS between regions),
the controller (agents, pointers, the CLI), the DNS and load balancers' admin APIs. The test
checks, from outside, as a user would:

- the CA is in DIR/config/tls and the drill targets name `https://` stores and controller;
- a store answers HTTPS verified against the lab's CA, refuses a client that does not trust
  it, and does not speak plain HTTP;
- a write in one region is read in the other (replication went over mutual TLS);
- replication without a client certificate is refused (403, mutual TLS);
- `switchyard status --lab` and the controller's API work over HTTPS;
- the region-outage drill (`drill --lab`, which trusts the lab's CA by itself) fails over with
  nothing acknowledged lost."""

import functools
import http.client
import json
import random
import ssl
import subprocess
import urllib.error
import urllib.request

import boto3
import botocore.config
import botocore.exceptions
import pytest

import harness
from harness import BINARY, lab_status, running_lab

START_DEADLINE_S = 90
REPLICATION_DEADLINE_S = 30
DRILL_TIMEOUT_S = 180

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]


wait_until = functools.partial(
    harness.wait_until, ignore=(OSError, urllib.error.URLError, ValueError, KeyError, botocore.exceptions.ClientError),
    poll_s=0.3)


status = lab_status


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built")
    root = tmp_path_factory.mktemp("tlslab")
    with running_lab(BINARY, root, "--tls", start_deadline_s=START_DEADLINE_S) as (directory, base_port):
        yield directory, base_port, root


def targets(directory):
    text = (directory / "drill-targets.toml").read_text()
    stores = [line.split('"')[1] for line in text.splitlines() if line.startswith("store_url")]
    controller = next(line.split('"')[1] for line in text.splitlines() if line.startswith("controller_url"))
    return stores, controller


def ca_file(directory):
    return directory / "config" / "tls" / "ca.pem"


def client(store_url, region, verify):
    return boto3.client("dynamodb", endpoint_url=store_url, region_name=region, verify=verify,
                        aws_access_key_id="lab", aws_secret_access_key="lab",
                        config=botocore.config.Config(retries={"max_attempts": 1}))


def test_every_api_is_https_with_the_labs_ca(lab):
    directory, base_port, _ = lab
    ca = ca_file(directory)
    assert ca.is_file() and (directory / "config" / "tls" / "key.pem").stat().st_mode & 0o077 == 0
    stores, controller = targets(directory)
    assert len(stores) == 2 and all(url.startswith("https://") for url in stores), stores
    assert controller.startswith("https://"), controller

    # Verified against the lab's CA; refused by a client that trusts only the public roots.
    context = ssl.create_default_context(cafile=str(ca))
    with urllib.request.urlopen(f"{stores[0]}/health", timeout=5, context=context) as response:
        assert response.status == 200
    with pytest.raises(urllib.error.URLError) as refused:
        urllib.request.urlopen(f"{stores[0]}/health", timeout=5, context=ssl.create_default_context())
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value), refused.value
    # No plain HTTP on the TLS port.
    host, port = stores[0].removeprefix("https://").split(":")
    plain = http.client.HTTPConnection(host, int(port), timeout=5)
    with pytest.raises((http.client.HTTPException, OSError)):
        plain.request("GET", "/health")
        answer = plain.getresponse()
        raise AssertionError(f"plain HTTP answered {answer.status}")

    # The controller's API over HTTPS.
    with urllib.request.urlopen(f"{controller}/v1/active-region", timeout=5, context=context) as response:
        assert response.status == 200
    assert status(directory).returncode == 0
    # Without the lab's CA the CLI is refused, and says which flag trusts it.
    untrusted = subprocess.run([str(BINARY), "status", "--controller", controller],
                               capture_output=True, text=True, timeout=60)
    assert untrusted.returncode != 0 and "--ca-file" in untrusted.stderr, untrusted.stderr
    trusted = subprocess.run([str(BINARY), "--ca-file", str(ca), "status", "--controller", controller],
                             capture_output=True, text=True, timeout=60)
    assert "not trusted" not in trusted.stderr, trusted.stderr


def test_replication_runs_over_mutual_tls(lab):
    directory, _, _ = lab
    stores, _ = targets(directory)
    ca = str(ca_file(directory))
    east, west = client(stores[0], "us-east-1", ca), client(stores[1], "eu-west-1", ca)
    item = {"session": {"S": "tls-test"}, "order_id": {"S": f"o-{random.randrange(1 << 30)}"}}
    east.put_item(TableName="shop_orders", Item=item)
    key = {k: item[k] for k in ("session", "order_id")}
    wait_until("the write replicated to eu-west-1",
               lambda: "Item" in west.get_item(TableName="shop_orders", Key=key, ConsistentRead=True),
               REPLICATION_DEADLINE_S)
    # Without a client certificate, a replication request is refused by the handshake's
    # verdict, before anything else is looked at.
    context = ssl.create_default_context(cafile=ca)
    request = urllib.request.Request(f"{stores[1]}/replication/v1/batch", data=b"{}", method="POST",
                                     headers={"content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5, context=context)
    assert refused.value.code == 403, refused.value.read()[:300]
    assert b"certificate" in refused.value.read().lower()


def test_region_outage_drill_over_tls(lab):
    directory, _, root = lab
    wait_until("every lab component up", lambda: status(directory).returncode == 0, START_DEADLINE_S)
    report_path = root / "region-outage.json"
    output = root / "region-outage.out"
    with open(output, "w") as out:
        # No --ca-file: `drill --lab` trusts the lab's CA by itself.
        drill = subprocess.run(
            [str(BINARY), "drill", "region-outage", "--lab", str(directory), "--warmup-s", "5", "--duration-s",
             "15", "--settle-s", "15", "--json", str(report_path), "--no-progress"],
            stdout=out, stderr=subprocess.STDOUT, timeout=DRILL_TIMEOUT_S,
        )
    assert drill.returncode == 0, output.read_text()[-5000:]
    report = json.loads(report_path.read_text())
    measured = report["measurements"]
    assert measured["failovers"] >= 1 and measured["rto_dns_ms"] is not None, measured
    check = report["check"]
    assert check["acknowledged"] > 0 and check["lost"] == 0, check
