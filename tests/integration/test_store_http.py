"""The store's HTTP layer as DynamoDB answers it, black box: the headers every answer carries
(x-amzn-RequestId, x-amz-crc32 of the body as sent) on operations, errors, the listener's own
refusals and compressed answers; compressed request bodies on the DynamoDB Streams targets."""

import gzip
import http.client
import json
import re
import zlib

import pytest

from test_store_harness import create_table, store_fixture

pytestmark = [pytest.mark.process]

# DynamoDB's request ids: 52 upper-case letters and digits.
REQUEST_ID = re.compile(r"^[A-Z0-9]{52}$")

store = store_fixture("http")


def exchange(store, method="POST", path="/", body=b"", headers=None):
    """One request on its own connection; (status, headers with lower-case names, body as sent)."""
    host, port = store.url.split("://", 1)[1].rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def target(operation, prefix="DynamoDB_20120810"):
    return {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": f"{prefix}.{operation}"}


def assert_dynamodb_headers(status, headers, body, what):
    assert REQUEST_ID.match(headers.get("x-amzn-requestid", "")), (what, status, headers)
    assert headers.get("x-amz-crc32") == str(zlib.crc32(body)), (what, status, headers)


def test_every_answer_carries_a_request_id_and_the_crc32_of_its_body(store):
    client = store.client()
    table = create_table(client, "http-headers")
    ids = {client.list_tables()["ResponseMetadata"]["RequestId"] for _ in range(3)}
    assert len(ids) == 3 and all(REQUEST_ID.match(i) for i in ids), ids

    exchanges = {
        "ok": exchange(store, body=b"{}", headers=target("ListTables")),
        "unknown operation": exchange(store, body=b"{}", headers=target("Nope")),
        "malformed JSON": exchange(store, body=b"{", headers=target("ListTables")),
        "no resource": exchange(store, "GET", "/x"),
        "method": exchange(store, "PUT", "/", b"{}"),
        "root health": exchange(store, "GET", "/"),
        "health": exchange(store, "GET", "/health"),
        "preflight": exchange(store, "OPTIONS", "/", headers={
            "Origin": "http://app.example", "Access-Control-Request-Method": "POST"}),
        "head too large": exchange(store, body=b"{}", headers={**target("ListTables"), "X-Pad": "a" * 20000}),
        # Declared over the 16 MiB limit: the listener refuses it before the router sees it.
        "body too large": exchange(store, body=b"{" + b" " * (16 * 1024 * 1024) + b"}", headers=target("ListTables")),
        "gzip bomb": exchange(store, body=gzip.compress(b" " * (17 * 1024 * 1024)),
                              headers={**target("ListTables"), "Content-Encoding": "gzip"}),
    }
    for what, (status, headers, body) in exchanges.items():
        assert_dynamodb_headers(status, headers, body, what)
    assert exchanges["body too large"][0] == 413 and exchanges["gzip bomb"][0] == 413
    assert exchanges["body too large"][1].get("server") == "Server"

    # A compressed answer: the checksum is of the bytes sent, as SDKs check it before inflating.
    client.put_item(TableName=table, Item={"pk": {"S": "big"}, "v": {"S": "y" * 8000}})
    get = json.dumps({"TableName": table, "Key": {"pk": {"S": "big"}}}).encode()
    status, headers, body = exchange(store, body=get, headers={**target("GetItem"), "Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert_dynamodb_headers(status, headers, body, "gzip answer")
    assert json.loads(gzip.decompress(body))["Item"]["v"]["S"] == "y" * 8000


def test_the_streams_targets_read_compressed_bodies(store):
    for encoding, compress in [("gzip", gzip.compress), ("deflate", zlib.compress)]:
        status, headers, body = exchange(store, body=compress(b"{}"), headers={
            **target("ListStreams", "DynamoDBStreams_20120810"), "Content-Encoding": encoding})
        assert status == 200 and "Streams" in json.loads(body), (encoding, status, body)
    status, _, body = exchange(store, body=gzip.compress(b" " * (17 * 1024 * 1024)), headers={
        **target("ListStreams", "DynamoDBStreams_20120810"), "Content-Encoding": "gzip"})
    assert status == 413, body
    status, _, body = exchange(store, body=b"not gzip", headers={
        **target("ListStreams", "DynamoDBStreams_20120810"), "Content-Encoding": "gzip"})
    assert status == 500 and "not valid gzip" in json.loads(body)["message"], body


def client_errors(store, operation):
    _, _, metrics = exchange(store, "GET", "/metrics")
    pattern = re.compile(
        r'^switchyard_store_requests_total\{operation="%s",outcome="(\w+)"\} (\S+)$' % operation, re.M)
    return {outcome: float(count) for outcome, count in pattern.findall(metrics.decode())}


def test_a_badly_encoded_body_is_the_clients_fault_in_the_log_and_the_metrics(store):
    """DynamoDB answers an unknown or broken Content-Encoding with a 500, and so does the store;
    but no ERROR line is written and no server error counted for it: any client could fill
    both."""
    before = client_errors(store, "ListTables")
    log_before = len(store.log.read_text(errors="replace"))
    for encoding, body in [("br", b"{}"), ("gzip", gzip.compress(b"{}")[:-4]), ("gzip, gzip", b"{}")]:
        status, _, answer = exchange(store, body=body, headers={**target("ListTables"), "Content-Encoding": encoding})
        assert status == 500, (encoding, answer)
    after = client_errors(store, "ListTables")
    assert after.get("client_error", 0) - before.get("client_error", 0) == 3, (before, after)
    assert after.get("server_error", 0) == before.get("server_error", 0), (before, after)
    written = store.log.read_text(errors="replace")[log_before:]
    assert " ERROR " not in written, written


def test_an_answer_takes_the_content_type_of_its_request(store):
    """DynamoDB takes a request sent as `application/json` as well as one sent as its own
    `application/x-amz-json-1.0`, and answers in the type it was sent (dynalite's suite recorded
    it), errors included."""
    for sent, answered in [("application/json", "application/json"),
                           ("application/json; charset=utf-8", "application/json"),
                           ("application/x-amz-json-1.0", "application/x-amz-json-1.0")]:
        for operation, body, status in [("ListTables", b"{}", 200), ("DescribeTable", b"{}", 400)]:
            headers = {**target(operation), "Content-Type": sent}
            got, answer_headers, answer = exchange(store, body=body, headers=headers)
            assert got == status, (sent, operation, answer)
            assert answer_headers["content-type"] == answered, (sent, operation, answer_headers)
            assert_dynamodb_headers(got, answer_headers, answer, f"{operation} as {sent}")
