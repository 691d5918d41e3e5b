"""The store over HTTPS (`--tls-cert`/`--tls-key`), with a CA and certificates made by openssl in
the test: boto3 verifies the server against the CA and is served; plain HTTP is not answered as
HTTP; SIGHUP loads a new certificate for new connections while an open one keeps working."""

import os
import signal
import socket
import ssl

import boto3
import pytest
from botocore.config import Config

from harness import make_pki, make_server_cert
from test_store_harness import ACCESS_KEY_ID, REGION, SECRET, StoreProcess, require_binary, wait_for

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]

RELOAD_DEADLINE_S = 20


class TlsStore(StoreProcess):
    def __init__(self, data_dir, cert, key):
        super().__init__(data_dir, args=["--tls-cert", str(cert), "--tls-key", str(key)])
        self.cert, self.key = cert, key

    @property
    def url(self):
        return f"https://{self.address}"


def served_name(store, ca):
    """The CN of the certificate a new connection is shown."""
    host, port = store.address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            subject = dict(item[0] for item in tls.getpeercert()["subject"])
            return subject["commonName"]


@pytest.fixture()
def tls_store(tmp_path):
    require_binary()
    pki, ca, cert, key = make_pki(tmp_path, "first")
    # The store reads fixed paths; a reload replaces their contents.
    live_cert, live_key = pki / "server.pem", pki / "server.key"
    live_cert.write_bytes(cert.read_bytes())
    live_key.write_bytes(key.read_bytes())
    store = TlsStore(tmp_path / "data", live_cert, live_key).start()
    yield store, ca, pki
    store.stop()


def client(store, ca):
    return boto3.client("dynamodb", region_name=REGION, endpoint_url=store.url, verify=str(ca),
                        aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET,
                        config=Config(retries={"max_attempts": 1, "mode": "standard"}))


def test_boto3_is_served_over_https_verified_by_the_ca(tls_store):
    store, ca, _ = tls_store
    dynamodb = client(store, ca)
    dynamodb.create_table(TableName="tls", BillingMode="PAY_PER_REQUEST",
                          KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                          AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}])
    dynamodb.put_item(TableName="tls", Item={"pk": {"S": "a"}})
    assert dynamodb.get_item(TableName="tls", Key={"pk": {"S": "a"}})["Item"] == {"pk": {"S": "a"}}
    assert served_name(store, ca) == "first"


def test_plain_http_gets_no_http_answer(tls_store):
    store, _, _ = tls_store
    host, port = store.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        raw.settimeout(RELOAD_DEADLINE_S)
        try:
            answer = raw.recv(4096)
        except ConnectionResetError:
            answer = b""
    assert not answer.startswith(b"HTTP/"), answer


def test_sighup_reloads_the_certificate_without_dropping_connections(tls_store):
    store, ca, pki = tls_store
    dynamodb = client(store, ca)
    assert dynamodb.list_tables()["TableNames"] == []  # opens a keep-alive connection
    cert, key = make_server_cert(pki, "second")
    store.cert.write_bytes(cert.read_bytes())
    store.key.write_bytes(key.read_bytes())
    os.kill(store.process.pid, signal.SIGHUP)
    wait_for(lambda: served_name(store, ca) == "second", RELOAD_DEADLINE_S, "new connections get the new certificate")
    # The client's pooled connection, opened under the first certificate, still serves.
    assert dynamodb.list_tables()["TableNames"] == []
    # A broken pair is refused and the certificate in use stays.
    store.key.write_text("not a key\n")
    os.kill(store.process.pid, signal.SIGHUP)
    wait_for(lambda: "not reloaded" in store.tail(), RELOAD_DEADLINE_S, "the failed reload is logged")
    assert served_name(store, ca) == "second"
    assert store.process.poll() is None
