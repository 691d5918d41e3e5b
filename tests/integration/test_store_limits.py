"""Limits before authentication, against the real binary: stalled uploads cannot eat the store's
memory (the issue's figure: 60 stalled 16 MiB uploads, the store under 100 MB resident and still
serving; checked as what the uploads add to the store's resident memory, so it holds for debug
builds too), stalled and idle connections are closed by the timeouts, and a request whose head
cannot be authenticated is refused before its body is read; large requests that together pass
the body budget and the budget for requests in flight are all served, in turn."""

import gzip
import json
import socket
import threading
import time
import urllib.request

import pytest
from botocore.exceptions import ClientError

from test_store_harness import ACCESS_KEY_ID, SECRET, StoreProcess, create_table, require_binary, wait_for

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]

UPLOADS = 60
UPLOAD_BYTES = 16 * 1024 * 1024
# The figure is 100 MB resident for a release store, which idles at ~22 MB; a debug build
# idles at ~45 MB. So the bound is on what the uploads add: 70 MB (measured: ~50 MB in both
# builds, for the 32 MiB body budget plus connection buffers), against the ~960 MB they would
# take unbounded.
RESIDENT_GROWTH_BYTES_MAX = 70 * 1000 * 1000
CHUNK_BYTES = 256 * 1024
# Long enough to measure while the uploads stall, short enough that the test sees them closed.
BODY_READ_TIMEOUT_MS = 30_000
IDLE_TIMEOUT_MS = 5_000
HEADER_READ_TIMEOUT_MS = 5_000
# Bounds on waiting for the server to act (never timing assertions).
STALL_DEADLINE_S = 120
CLOSE_DEADLINE_S = 60
SETTLE_POLLS = 5
POLL_S = 0.2
# jemalloc returns freed memory over its decay time; the bound is checked again within this.
SETTLE_DEADLINE_S = 60


def status_bytes(process, field):
    """A memory figure of /proc/PID/status (`VmRSS`, `VmHWM`: the peak), in bytes."""
    with open(f"/proc/{process.pid}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc status")


def resident_bytes(process):
    return status_bytes(process, "VmRSS")


def open_connection(store):
    host, port = store.address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def head(operation, length, extra=""):
    return (f"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: DynamoDB_20120810.{operation}\r\n"
            f"Content-Type: application/x-amz-json-1.0\r\nContent-Length: {length}\r\n{extra}\r\n").encode()


def read_until_closed(connection, deadline_s):
    """Everything received until the server closes (or resets) the connection."""
    connection.settimeout(deadline_s)
    received = b""
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


class StalledUpload(threading.Thread):
    """Sends a head announcing UPLOAD_BYTES and all of the body but its last byte, as fast as the
    server reads it, then waits for the server to close the connection."""

    def __init__(self, store):
        super().__init__(daemon=True)
        self.store = store
        self.connection = None
        self.sent = 0
        self.answer = None
        self.closed = threading.Event()

    def run(self):
        chunk = b" " * CHUNK_BYTES
        try:
            self.connection = open_connection(self.store)
            self.connection.sendall(head("PutItem", UPLOAD_BYTES))
            self.connection.settimeout(None)
            while self.sent < UPLOAD_BYTES - 1:
                piece = chunk[: UPLOAD_BYTES - 1 - self.sent]
                self.sent += self.connection.send(piece)
        except OSError:
            pass  # closed while still sending: what it answered may still be readable
        try:
            assert self.connection is not None, "connect failed"
            self.answer = read_until_closed(self.connection, CLOSE_DEADLINE_S + BODY_READ_TIMEOUT_MS / 1000)
        except OSError as error:
            self.answer = f"error: {error}".encode()
        finally:
            self.closed.set()


@pytest.fixture()
def limited(tmp_path):
    require_binary()
    store = StoreProcess(tmp_path / "data", args=[
        "--body-read-timeout-ms", str(BODY_READ_TIMEOUT_MS),
        "--idle-timeout-ms", str(IDLE_TIMEOUT_MS),
        "--header-read-timeout-ms", str(HEADER_READ_TIMEOUT_MS),
    ]).start()
    yield store
    store.stop()


def test_stalled_uploads_stay_under_the_memory_bound_and_are_closed(limited):
    client = limited.client()
    create_table(client, "limits")
    client.put_item(TableName="limits", Item={"pk": {"S": "before"}})
    start_resident = resident_bytes(limited.process)

    uploads = [StalledUpload(limited) for _ in range(UPLOADS)]
    for upload in uploads:
        upload.start()

    # Wait until the uploads stop making progress: the server reads no more of them.
    peak = start_resident
    history = []

    def stalled():
        nonlocal peak
        peak = max(peak, resident_bytes(limited.process))
        history.append(sum(upload.sent for upload in uploads))
        recent = history[-SETTLE_POLLS:]
        return len(recent) == SETTLE_POLLS and len(set(recent)) == 1 and recent[0] > 0

    wait_for(stalled, STALL_DEADLINE_S, "uploads stalled", interval_s=POLL_S)
    early = [(u.sent, (u.answer or b"")[:200]) for u in uploads if u.answer is not None]
    assert not early, f"uploads closed before they stalled: {early}"
    accepted = sum(upload.sent for upload in uploads)
    # Far more was sent than the server could hold: the rest waits in kernel buffers.
    assert accepted > 100 * 1000 * 1000 or all(u.sent == UPLOAD_BYTES - 1 for u in uploads), accepted

    # Normal requests are still served while every upload stalls.
    for index in range(20):
        client.put_item(TableName="limits", Item={"pk": {"S": f"during-{index}"}})
        peak = max(peak, resident_bytes(limited.process))
    assert client.get_item(TableName="limits", Key={"pk": {"S": "during-19"}}, ConsistentRead=True)["Item"]
    peak = max(peak, resident_bytes(limited.process))
    assert peak - start_resident < RESIDENT_GROWTH_BYTES_MAX, (
        f"resident {peak} bytes with {UPLOADS} stalled uploads, {start_resident} before them"
    )

    # The body read timeout closes every stalled upload, each with a 408.
    for upload in uploads:
        assert upload.closed.wait(CLOSE_DEADLINE_S + BODY_READ_TIMEOUT_MS / 1000), "a stalled upload was never closed"
    answers = [upload.answer or b"" for upload in uploads]
    # An upload still sending may see a reset instead of the answer; any answer is a 408.
    answered = [a for a in answers if a.startswith(b"HTTP/")]
    assert answered, [a[:60] for a in answers]
    assert all(a.startswith(b"HTTP/1.1 408") and b"RequestTimeoutException" in a for a in answered), answered

    # The store serves as before and settles within the bound: jemalloc returns the freed
    # upload buffers to the system over its decay time (a few seconds), so poll for it.
    client.put_item(TableName="limits", Item={"pk": {"S": "after"}})
    settled = start_resident + RESIDENT_GROWTH_BYTES_MAX
    wait_for(lambda: resident_bytes(limited.process) < settled, SETTLE_DEADLINE_S,
             f"resident memory under {settled} bytes after the uploads closed", interval_s=POLL_S)


def test_idle_and_slow_head_connections_are_closed(limited):
    idle = open_connection(limited)
    assert read_until_closed(idle, CLOSE_DEADLINE_S) == b""
    slow = open_connection(limited)
    slow.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")
    assert read_until_closed(slow, CLOSE_DEADLINE_S) == b""


def test_content_length_over_the_limit_is_refused_before_the_body(limited):
    connection = open_connection(limited)
    connection.sendall(head("PutItem", UPLOAD_BYTES + 1))
    answer = read_until_closed(connection, CLOSE_DEADLINE_S)
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert b"com.amazon.coral.validate#ValidationException" in answer and b"16777216" in answer, answer


def test_unauthenticated_upload_is_refused_before_its_body(tmp_path):
    require_binary()
    credentials = tmp_path / "credentials"
    credentials.write_text(f"{ACCESS_KEY_ID} {SECRET}\n")
    store = StoreProcess(tmp_path / "data", credentials_file=credentials).start()
    try:
        now = time.gmtime()
        unknown_key = (f"Authorization: AWS4-HMAC-SHA256 Credential=AKIDUNKNOWN/{time.strftime('%Y%m%d', now)}/"
                       f"us-east-1/dynamodb/aws4_request, SignedHeaders=host;x-amz-target, Signature={'0' * 64}\r\n"
                       f"X-Amz-Date: {time.strftime('%Y%m%dT%H%M%SZ', now)}\r\n")
        for extra, expected in [("", b"MissingAuthenticationTokenException"),
                                (unknown_key, b"UnrecognizedClientException")]:
            connection = open_connection(store)
            # Only the head is sent: the answer cannot depend on the body.
            connection.sendall(head("PutItem", UPLOAD_BYTES, extra))
            connection.settimeout(CLOSE_DEADLINE_S)
            answer = connection.recv(65536)
            assert answer.startswith(b"HTTP/1.1 400"), answer
            assert expected in answer, answer
            connection.close()
    finally:
        store.stop()


# A burst of large, authenticated requests: each body is read, parsed and refused (an item over
# DynamoDB's 400 KB limit), so the store holds BURST_REQUESTS x BURST_ITEM_BYTES at its peak and
# nothing of it afterwards. The allocator must give that memory back to the system once the burst
# is over (glibc keeps freed heap for reuse; the binary uses an allocator that returns it).
BURST_REQUESTS = 64
BURST_ITEM_BYTES = 12 * 1024 * 1024
BURST_BUFFERED_BODY_BYTES_MAX = "1GiB"
# Resident memory may stay this far above where it started once the burst is over.
BURST_RESIDENT_MARGIN_BYTES = 32 * 1024 * 1024
BURST_RETURN_DEADLINE_S = 60


def test_memory_is_returned_to_the_system_after_a_burst(tmp_path):
    require_binary()
    store = StoreProcess(tmp_path / "data", args=["--buffered-body-bytes-max", BURST_BUFFERED_BODY_BYTES_MAX]).start()
    try:
        client = store.client()
        create_table(client, "burst")
        for index in range(50):
            client.put_item(TableName="burst", Item={"pk": {"S": f"warm-{index}"}})
        start_resident = resident_bytes(store.process)

        barrier = threading.Barrier(BURST_REQUESTS)
        errors = []

        def oversized(index):
            own = store.client()
            barrier.wait()
            try:
                own.put_item(TableName="burst", Item={"pk": {"S": f"big-{index}"}, "blob": {"S": "x" * BURST_ITEM_BYTES}})
                errors.append("an item over 400 KB was accepted")
            except client.exceptions.ClientError as error:
                errors.append(error.response["Error"]["Code"])

        threads = [threading.Thread(target=oversized, args=(i,), daemon=True) for i in range(BURST_REQUESTS)]
        peak = start_resident
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                peak = max(peak, resident_bytes(store.process))
                thread.join(0.05)
        assert errors == ["ValidationException"] * BURST_REQUESTS, errors
        # The burst really used memory (else this test shows nothing about giving it back).
        assert peak > start_resident + 3 * BURST_RESIDENT_MARGIN_BYTES, (start_resident, peak)

        # Once idle again, the store goes back near where it started, and still serves.
        wait_for(lambda: resident_bytes(store.process) < start_resident + BURST_RESIDENT_MARGIN_BYTES,
                 BURST_RETURN_DEADLINE_S,
                 f"resident memory back under {start_resident + BURST_RESIDENT_MARGIN_BYTES} bytes after the burst "
                 f"(started at {start_resident}, peak {peak})", interval_s=POLL_S)
        assert client.get_item(TableName="burst", Key={"pk": {"S": "warm-49"}}, ConsistentRead=True)["Item"]
        assert "Item" not in client.get_item(TableName="burst", Key={"pk": {"S": "big-0"}}, ConsistentRead=True)
    finally:
        store.stop()


# Calls of far more elements than their limit (BatchWriteItem's 25 writes, BatchGetItem's 100 keys,
# spread over many tables so no one table's list breaks the API model's constraint; the
# transactions' 100 items): refused by their count, the elements past the limit counted, not
# built. Built, these 11-15 MB bodies grew the store's peak resident memory by 330-780 MB (debug
# build); counted, by 35-70 MB (the body read and collected, the request checks' table names).
HOSTILE_ELEMENTS = 300_000
HOSTILE_PEAK_GROWTH_BYTES_MAX = 128 * 1024 * 1024
HOSTILE_BODIES = {
    "BatchWriteItem": ('{"RequestItems":{%s}}', '"t%07d":[{"PutRequest":{"Item":{"pk":{"S":"k"}}}}]',
                       "Too many items requested for the BatchWriteItem call"),
    "BatchGetItem": ('{"RequestItems":{%s}}', '"t%07d":{"Keys":[{"pk":{"S":"k"}}]}',
                     "Too many items requested for the BatchGetItem call"),
    "TransactWriteItems": ('{"TransactItems":[%s]}', '{"Put":{"TableName":"kept","Item":{"pk":{"S":"k"}}}}',
                           "1 validation error detected: Value '[...]' at 'transactItems' failed to satisfy "
                           "constraint: Member must have length less than or equal to 100 and greater than or equal to 1"),
    "TransactGetItems": ('{"TransactItems":[%s]}', '{"Get":{"TableName":"kept","Key":{"pk":{"S":"k"}}}}',
                         "1 validation error detected: Value '[...]' at 'transactItems' failed to satisfy "
                         "constraint: Member must have length less than or equal to 100 and greater than or equal to 1"),
}


@pytest.mark.parametrize("operation", sorted(HOSTILE_BODIES))
def test_a_call_of_hundreds_of_thousands_of_elements_is_refused_without_building_them(tmp_path, operation):
    require_binary()
    store = StoreProcess(tmp_path / "data").start()
    try:
        client = store.client()
        create_table(client, "kept")
        outer, element, message = HOSTILE_BODIES[operation]
        elements = (element % index if "%" in element else element for index in range(HOSTILE_ELEMENTS))
        body = (outer % ",".join(elements)).encode()
        assert len(body) > 10 * 1024 * 1024
        before = status_bytes(store.process, "VmHWM")
        status, answer = store.raw(operation, body)
        grown = status_bytes(store.process, "VmHWM") - before
        assert status == 400 and answer["__type"].endswith("#ValidationException"), (status, answer)
        assert answer["message"] == message, answer
        assert grown < HOSTILE_PEAK_GROWTH_BYTES_MAX, f"peak resident memory grew {grown} bytes"
        # Within the limit, every element is applied or read.
        client.batch_write_item(RequestItems={"kept": [
            {"PutRequest": {"Item": {"pk": {"S": f"k{index}"}}}} for index in range(25)]})
        assert client.scan(TableName="kept", Select="COUNT")["Count"] == 25
        got = client.transact_get_items(TransactItems=[
            {"Get": {"TableName": "kept", "Key": {"pk": {"S": f"k{index}"}}}} for index in range(100)])
        assert sum(1 for response in got["Responses"] if response.get("Item")) == 25
    finally:
        store.stop()


# Maps and lists of hundreds of thousands of small entries that DynamoDB bounds otherwise: the
# expressions' names and values (2 MB for all substitution variables of a request, read within it)
# and tags (50 per resource: past 1024 counted, not built). Built whole, through serde's
# `flatten` buffer or a JSON tree, these 10-13 MB bodies grew the store's peak resident memory by
# 20-30 times their bytes (debug build: 250-390 MB).
HOSTILE_MAPS = {
    "Query": ('{"TableName":"kept","KeyConditionExpression":"pk = :k","ExpressionAttributeValues":{":k":{"S":"a"},%s}}',
              '":v%07d":{"S":"x"}',
              "ExpressionAttributeValues exceed the maximum length of all substitution variables in an expression: "),
    "GetItem": ('{"TableName":"kept","Key":{"pk":{"S":"a"}},"ProjectionExpression":"#n0000000","ExpressionAttributeNames":{%s}}',
                '"#n%07d":"xxxxxxxxxxxxxxxxxx"',
                "ExpressionAttributeNames exceed the maximum length of all substitution variables in an expression: "),
    "PutItem": ('{"TableName":"kept","Item":{"pk":{"S":"a"}},"ConditionExpression":"attribute_exists(#n0000000)",'
                '"ExpressionAttributeNames":{%s}}',
                '"#n%07d":"xxxxxxxxxxxxxxxxxx"',
                "ExpressionAttributeNames exceed the maximum length of all substitution variables in an expression: "),
    "TagResource": ('{"ResourceArn":"arn:aws:dynamodb:us-east-1:000000000000:table/kept","Tags":[%s]}',
                    '{"Key":"k%07d","Value":"v"}',
                    "One or more parameter values were invalid: The number of tags exceeds the limit of 50 per "
                    "resource (500000 given)"),
}
HOSTILE_MAP_ENTRIES = 500_000
# The legacy parameters that predate expressions, read within the same 2 MB (each entry its
# name, its values and 64 bytes): built whole, 11-14 MB of tiny conditions grew the store's
# peak memory past 250 MB (debug build).
LEGACY_TOO_LARGE = " is too large: its entries count "
HOSTILE_LEGACY_MAPS = {
    "PutItem": ('{"TableName":"kept","Item":{"pk":{"S":"a"}},"Expected":{%s}}',
                '"a%07d":{"Exists":false}', "Expected", HOSTILE_MAP_ENTRIES),
    "UpdateItem": ('{"TableName":"kept","Key":{"pk":{"S":"a"}},"AttributeUpdates":{%s}}',
                   '"a%07d":{"Action":"DELETE"}', "AttributeUpdates", HOSTILE_MAP_ENTRIES),
    "Scan": ('{"TableName":"kept","ScanFilter":{%s}}',
             '"a%06d":{"ComparisonOperator":"NULL"}', "ScanFilter", 300_000),
    "Query": ('{"TableName":"kept","KeyConditions":{%s}}',
              '"a%06d":{"ComparisonOperator":"NULL"}', "KeyConditions", 300_000),
}
for _operation, (_outer, _entry, _parameter, _count) in HOSTILE_LEGACY_MAPS.items():
    HOSTILE_MAPS[f"{_operation} {_parameter}"] = (_outer, _entry, _parameter + LEGACY_TOO_LARGE, _count)


@pytest.mark.parametrize("operation", sorted(HOSTILE_MAPS))
def test_a_map_of_hundreds_of_thousands_of_placeholders_or_tags_is_refused_without_building_it(tmp_path, operation):
    require_binary()
    store = StoreProcess(tmp_path / "data").start()
    try:
        client = store.client()
        create_table(client, "kept")
        outer, entry, message, *count = HOSTILE_MAPS[operation]
        entries = count[0] if count else HOSTILE_MAP_ENTRIES
        body = (outer % ",".join(entry % index for index in range(entries))).encode()
        assert len(body) > 10 * 1024 * 1024
        before = status_bytes(store.process, "VmHWM")
        status, answer = store.raw(operation.split()[0], body)
        grown = status_bytes(store.process, "VmHWM") - before
        assert status == 400 and answer["__type"].endswith("#ValidationException"), (status, answer)
        assert answer["message"].startswith(message), answer
        assert grown < HOSTILE_PEAK_GROWTH_BYTES_MAX, f"peak resident memory grew {grown} bytes"
        assert client.get_item(TableName="kept", Key={"pk": {"S": "a"}}).get("Item") is None
    finally:
        store.stop()


def test_substitution_variables_are_bounded_at_dynamodbs_2_mb_for_the_whole_request(tmp_path):
    """DynamoDB: "the maximum length of all substitution variables in an expression is 2 MB: the
    sum of the lengths of all ExpressionAttributeNames and ExpressionAttributeValues". Under it a
    request is judged as usual; over it (each map under it, both together over) it is refused."""
    require_binary()
    store = StoreProcess(tmp_path / "data").start()
    try:
        client = store.client()
        create_table(client, "kept")
        client.put_item(TableName="kept", Item={"pk": {"S": "a"}, "n": {"N": "1"}})
        big = "x" * (1024 * 1024)
        # 300 KB of values, used: within the limit, the update applies; 1 MiB unused: judged as usual.
        client.update_item(TableName="kept", Key={"pk": {"S": "a"}}, UpdateExpression="SET #b = :b",
                           ExpressionAttributeNames={"#b": "b"}, ExpressionAttributeValues={":b": {"S": big[:300_000]}})
        with pytest.raises(ClientError) as unused:
            client.update_item(TableName="kept", Key={"pk": {"S": "a"}}, UpdateExpression="SET n = :one",
                               ExpressionAttributeValues={":one": {"N": "1"}, ":big": {"S": big}})
        assert "unused in expressions" in unused.value.response["Error"]["Message"]
        # Names and values of 1.2 MiB each: each map within 2 MB, both together over it.
        with pytest.raises(ClientError) as both:
            client.update_item(TableName="kept", Key={"pk": {"S": "a"}}, UpdateExpression="SET #n = :one",
                               ExpressionAttributeNames={"#n": "n", "#long": "l" * 60_000,
                                                         **{f"#x{i}": "y" * 60_000 for i in range(20)}},
                               ExpressionAttributeValues={":one": {"N": "1"}, ":big": {"S": big + big[:200_000]}})
        message = both.value.response["Error"]["Message"]
        assert message.startswith("ExpressionAttributeNames and ExpressionAttributeValues exceed the maximum length"), message
        assert client.get_item(TableName="kept", Key={"pk": {"S": "a"}})["Item"]["n"] == {"N": "1"}
    finally:
        store.stop()


# Large requests that together pass both the body budget and the budget for requests in flight (the
# smallest body budget, 1 MiB, so 16 MiB in flight): each takes its whole share of one, then of the
# other, or waits for it, so all are served. Taken frame by frame, the budget was split between
# the bodies being read, none could finish, and all waited for their read timeout (60 s, past this
# test's client timeout of 30 s).
CROWD_REQUESTS = 6
CROWD_ITEMS = 8
CROWD_ATTRIBUTE_BYTES = 300 * 1024
CROWD_BUDGET_BYTES = 1024 * 1024
CROWD_IN_FLIGHT_BYTES = 16 * CROWD_BUDGET_BYTES


def crowd_body(index):
    return json.dumps({"RequestItems": {"crowd": [
        {"PutRequest": {"Item": {"pk": {"S": f"r{index}-{item}"}, "blob": {"S": chr(97 + item) * CROWD_ATTRIBUTE_BYTES}}}}
        for item in range(CROWD_ITEMS)]}}).encode()


def in_flight_metrics(store):
    with urllib.request.urlopen(store.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return {name: float(value) for name, value in
            (line.split(" ", 1) for line in text.splitlines() if line.startswith("switchyard_store_in_flight_"))}


def test_large_requests_together_past_both_budgets_are_all_served(tmp_path):
    require_binary()
    store = StoreProcess(tmp_path / "data", args=["--buffered-body-bytes-max", str(CROWD_BUDGET_BYTES)]).start()
    try:
        client = store.client()
        create_table(client, "crowd")
        bodies = [crowd_body(index) for index in range(CROWD_REQUESTS)]
        assert all(len(body) > CROWD_BUDGET_BYTES for body in bodies)
        # One more, compressed: it is charged for what it inflates to, not its few kilobytes.
        compressed = gzip.compress(crowd_body(CROWD_REQUESTS))
        assert len(compressed) * 16 < CROWD_ITEMS * CROWD_ATTRIBUTE_BYTES
        answers = [None] * (CROWD_REQUESTS + 1)

        def send(index):
            if index < CROWD_REQUESTS:
                answers[index] = store.raw("BatchWriteItem", bodies[index])
            else:
                answers[index] = store.raw("BatchWriteItem", compressed, {"Content-Encoding": "gzip"})

        threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(CROWD_REQUESTS + 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [status for status, _ in answers] == [200] * (CROWD_REQUESTS + 1), answers
        assert all(answer == {"UnprocessedItems": {}} for _, answer in answers), answers
        pages = client.get_paginator("scan").paginate(TableName="crowd", Select="COUNT")
        assert sum(page["Count"] for page in pages) == (CROWD_REQUESTS + 1) * CROWD_ITEMS
        got = client.get_item(TableName="crowd", Key={"pk": {"S": f"r{CROWD_REQUESTS}-3"}})["Item"]
        assert got["blob"]["S"] == "d" * CROWD_ATTRIBUTE_BYTES
        # The budget in flight is the body budget times the charge per body byte; all of it is
        # given back.
        metrics = in_flight_metrics(store)
        assert metrics["switchyard_store_in_flight_bytes_max"] == CROWD_IN_FLIGHT_BYTES, metrics
        assert metrics["switchyard_store_in_flight_bytes"] == 0, metrics
    finally:
        store.stop()


# A client that asks for a large answer and does not read it: the answer's bytes stay charged to
# the budget in flight until the client has taken them, so many such clients fill the budget (and
# further requests wait, then get 503) instead of the store's memory.
SLOW_READER_ITEMS = 40
SLOW_READER_ITEM_BYTES = 380 * 1024


def test_an_unread_answer_holds_its_bytes_in_the_budget_until_the_client_takes_them(tmp_path):
    require_binary()
    store = StoreProcess(tmp_path / "data").start()
    try:
        client = store.client()
        create_table(client, "big")
        for index in range(SLOW_READER_ITEMS):
            client.put_item(TableName="big", Item={"pk": {"S": f"k{index}"},
                                                   "blob": {"S": chr(97 + index % 26) * SLOW_READER_ITEM_BYTES}})
        assert in_flight_metrics(store)["switchyard_store_in_flight_bytes"] == 0
        body = json.dumps({"RequestItems": {"big": {"Keys": [{"pk": {"S": f"k{index}"}}
                                                             for index in range(SLOW_READER_ITEMS)]}}}).encode()
        connection = open_connection(store)
        connection.sendall(head("BatchGetItem", len(body)) + body)
        # The head only: the rest of the answer is left unread.
        received = b""
        while b"\r\n\r\n" not in received:
            received += connection.recv(1024)
        answer_head, _ = received.split(b"\r\n\r\n", 1)
        assert answer_head.startswith(b"HTTP/1.1 200"), answer_head
        length = next(int(line.split(b":", 1)[1]) for line in answer_head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        assert length > SLOW_READER_ITEMS * SLOW_READER_ITEM_BYTES
        # The answer is charged whole while the client has not taken it (the kernel's buffers
        # took only part of it).
        wait_for(lambda: in_flight_metrics(store)["switchyard_store_in_flight_bytes"] == length, 30,
                 f"the unread answer's {length} bytes held in the budget in flight")
        # Read, the answer is whole and its share is given back.
        rest = received.split(b"\r\n\r\n", 1)[1]
        connection.settimeout(30)
        while len(rest) < length:
            chunk = connection.recv(1 << 20)
            assert chunk, "the connection closed mid-answer"
            rest += chunk
        assert len(json.loads(rest)["Responses"]["big"]) == SLOW_READER_ITEMS
        wait_for(lambda: in_flight_metrics(store)["switchyard_store_in_flight_bytes"] == 0, 30,
                 "the answer's share given back once it was read")
        connection.close()
    finally:
        store.stop()
