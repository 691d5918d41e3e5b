"""Replication between regions over HTTPS: two real stores serve TLS (`--tls-cert`/`--tls-key`)
with certificates of a private CA made by openssl in the test, reach each other at `https://`
peers and verify them against `--peer-ca`; a global table replicates both ways. A region that
does not trust that CA refuses the connection and says why in its /health."""

import functools
import json
import urllib.error
import urllib.request

import boto3
import pytest
from botocore.config import Config

from harness import BINARY, free_port, make_pki, wait_until
from test_global_tables import Region

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]

WAIT_S = 60


class TlsRegion(Region):
    """A region (see test_global_tables) whose flags make it serve HTTPS; clients verify it
    against the test's CA."""

    @property
    def url(self):
        return f"https://127.0.0.1:{self.port}"

    def tls_client(self, ca):
        return boto3.client(
            "dynamodb", region_name=self.name, endpoint_url=self.url, verify=str(ca),
            aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret",
            config=Config(retries={"max_attempts": 1, "mode": "standard"}),
        )

    def health(self, ca):
        import ssl

        context = ssl.create_default_context(cafile=str(ca))
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=5, context=context) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            return json.loads(error.read())

    def peer_error(self, ca, peer):
        """The last replication error this region reports for `peer` (None while there is none)."""
        return self.health(ca)["replication"]["peers"][peer].get("last_error")


def started_pair(tmp_path, us_args, ap_args):
    """TLS regions us-east-1 and ap-south-1, each the other's peer, started with their flags."""
    us = TlsRegion("us-east-1", free_port(), tmp_path / "us-east-1", [], us_args)
    ap = TlsRegion("ap-south-1", free_port(), tmp_path / "ap-south-1", [], ap_args)
    for region, peer in ((us, ap), (ap, us)):
        region.data_dir.mkdir()
        region.peers = [peer]
    us.start()
    ap.start()
    return us, ap


def create_global_orders(client):
    """Table "orders" (hash key `id`), made global with a replica in ap-south-1."""
    client.create_table(
        TableName="orders", BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
    )
    client.update_table(TableName="orders", ReplicaUpdates=[{"Create": {"RegionName": "ap-south-1"}}])


wait_for = functools.partial(wait_until, deadline_s=WAIT_S, poll_s=0.2)


def test_regions_replicate_over_verified_tls(tmp_path):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built")
    _, ca, cert, key = make_pki(tmp_path, "store")
    tls = ["--tls-cert", str(cert), "--tls-key", str(key)]
    trusting = tls + ["--peer-ca", str(ca)]
    us, ap = started_pair(tmp_path, trusting, trusting)
    try:
        client = us.tls_client(ca)
        # Each region verifies the other's certificate against the CA: the replica is created
        # and writes flow both ways.
        create_global_orders(client)
        client.put_item(TableName="orders", Item={"id": {"S": "from-us"}})
        ap_client = ap.tls_client(ca)
        wait_for("us-east-1's write in ap-south-1 over TLS",
                 lambda: ap_client.get_item(TableName="orders", Key={"id": {"S": "from-us"}}).get("Item"))
        ap_client.put_item(TableName="orders", Item={"id": {"S": "from-ap"}})
        wait_for("ap-south-1's write in us-east-1 over TLS",
                 lambda: client.get_item(TableName="orders", Key={"id": {"S": "from-ap"}}).get("Item"))

        # Restarted without the CA, ap-south-1 trusts only the public roots: it cannot verify
        # us-east-1, sends nothing, and its health says why.
        ap.stop()
        ap.extra_args = tls
        ap.start()
        ap_client.put_item(TableName="orders", Item={"id": {"S": "unverified"}})
        error = wait_for("ap-south-1 to report the certificate failure", lambda: ap.peer_error(ca, "us-east-1"))
        assert "certificate" in error.lower() or "issuer" in error.lower(), error
        assert "Item" not in client.get_item(TableName="orders", Key={"id": {"S": "unverified"}})
    finally:
        for region in (us, ap):
            region.stop()
