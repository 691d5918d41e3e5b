"""SigV4 against the real binary started with `--credentials FILE`: boto3 with the right key is
served; a wrong secret gets InvalidSignatureException, an unknown key
UnrecognizedClientException, an unsigned request MissingAuthenticationTokenException. Requests
signed too long ago or too far ahead are refused for their time, with AWS's messages. Requests
signed by botocore and tampered with afterwards are refused: X-Amz-Target left out of the
signed headers or changed, another region, a replayed PutItem, a presigned URL, a body that is
not the one its declared hash names. Without credentials the store refuses to listen on a
non-loopback address and says why."""

import hashlib
import json
import subprocess
import urllib.error
import urllib.request

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from test_store_harness import (ACCESS_KEY_ID, BINARY, REGION, SECRET, StoreProcess, create_table, error_of,
                                require_binary)

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]

REFUSAL_DEADLINE_S = 20


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    require_binary()
    root = tmp_path_factory.mktemp("secured")
    credentials = root / "credentials"
    credentials.write_text(f"# access key and secret\n{ACCESS_KEY_ID} {SECRET}\nAKIDOTHER other-secret-value\n")
    store = StoreProcess(root / "data", credentials_file=credentials).start()
    yield store
    store.stop()


def test_right_key_is_served(secured):
    client = secured.client()
    create_table(client, "signed-table")
    client.put_item(TableName="signed-table", Item={"pk": {"S": "a"}})
    assert client.get_item(TableName="signed-table", Key={"pk": {"S": "a"}})["Item"] == {"pk": {"S": "a"}}
    other = secured.client(key="AKIDOTHER", secret="other-secret-value")
    assert "signed-table" in other.list_tables()["TableNames"]


def test_wrong_secret_gets_invalid_signature(secured):
    with pytest.raises(ClientError) as excinfo:
        secured.client(secret="not-the-secret").list_tables()
    code, message, status = error_of(excinfo)
    assert (code, status) == ("InvalidSignatureException", 400)
    assert "signature" in message.lower()


def test_unknown_key_gets_unrecognized_client(secured):
    with pytest.raises(ClientError) as excinfo:
        secured.client(key="AKIDUNKNOWN").list_tables()
    code, message, status = error_of(excinfo)
    assert (code, status) == ("UnrecognizedClientException", 400)
    assert message == "The security token included in the request is invalid."


def test_unsigned_request_gets_missing_authentication_token(secured):
    status, response = secured.raw("ListTables", {})
    assert status == 400, response
    assert response["__type"] == "com.amazon.coral.service#MissingAuthenticationTokenException", response
    assert response["message"] == "Request is missing Authentication Token"


def test_malformed_authorization_header_gets_incomplete_signature(secured):
    status, response = secured.raw("ListTables", {}, headers={
        "Authorization": "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/garbage",
        "X-Amz-Date": "20240101T000000Z"})
    assert status == 400
    assert response["__type"].split("#")[-1] in ("IncompleteSignatureException", "InvalidSignatureException")


@pytest.mark.parametrize("amz_date, message", [
    ("20170101T010101Z", "Signature expired: 20170101T010101Z is now earlier than "),
    ("30200101T010101Z", "Signature not yet current: 30200101T010101Z is still later than "),
])
def test_signature_too_far_from_now_is_refused_for_its_time_first(secured, amz_date, message):
    # As DynamoDB answers: the time is judged before the (here malformed) credential scope.
    status, response = secured.raw("DescribeEndpoints", {}, headers={
        "Authorization": "AWS4-HMAC-SHA256 Credential=someone/2/3/4/aws4_request "
                         "SignedHeaders=x-amz-date;host Signature=123",
        "X-Amz-Date": amz_date})
    assert status == 400, response
    assert response["__type"] == "com.amazon.coral.service#InvalidSignatureException", response
    assert response["message"].startswith(message), response


def test_tampered_body_fails_verification(secured):
    # Sign one body, send another: botocore signs in the before-send hook, so change the body after.
    client = secured.client()

    def tamper(request, **_):
        request.body = request.body.replace(b"signed-table", b"other-table!")

    client.meta.events.register("before-send.dynamodb.DescribeTable", tamper)
    with pytest.raises(ClientError) as excinfo:
        client.describe_table(TableName="signed-table")
    assert error_of(excinfo)[0] == "InvalidSignatureException"


def test_non_loopback_listen_without_credentials_is_refused(tmp_path):
    require_binary()
    result = subprocess.run(
        [str(BINARY), "store", "--listen", "0.0.0.0:0", "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=REFUSAL_DEADLINE_S, env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    message = result.stderr
    assert "0.0.0.0" in message and "--credentials" in message, message


def test_non_loopback_listen_with_credentials_starts(tmp_path):
    require_binary()
    credentials = tmp_path / "credentials"
    credentials.write_text(f"{ACCESS_KEY_ID} {SECRET}\n")
    store = StoreProcess(tmp_path / "data", credentials_file=credentials, listen="0.0.0.0:0").start()
    try:
        port = store.address.rsplit(":", 1)[1]
        store.address = f"127.0.0.1:{port}"
        assert store.client().list_tables()["TableNames"] == []
    finally:
        store.stop()


# SigV4 as AWS applies it: botocore-signed requests, tampered with after signing.

def send_prepared(request, body=None, url=None):
    """Sends a botocore AWSPreparedRequest again as it was (or with another body/URL); returns
    (status, parsed JSON)."""
    data = request.body if body is None else body
    if isinstance(data, str):
        data = data.encode()
    raw = urllib.request.Request(url or request.url, data=data, method=request.method)
    for name, value in request.headers.items():
        raw.add_header(name, value if isinstance(value, str) else value.decode())
    try:
        with urllib.request.urlopen(raw, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def capture(client, event):
    """Registers a before-send hook that keeps the signed request and lets it go out."""
    captured = []

    def keep(request, **_):
        captured.append(request)

    client.meta.events.register(f"before-send.dynamodb.{event}", keep)
    return captured


def test_target_left_out_of_signed_headers_is_refused(secured):
    # Re-sign without X-Amz-Target, then put a DeleteItem target back: a signed GetItem turned
    # into a DeleteItem must not pass.
    client = secured.client()
    create_table(client, "target-table")
    client.put_item(TableName="target-table", Item={"pk": {"S": "kept"}})

    def resign_without_target(request, **_):
        unsigned = AWSRequest(method=request.method, url=request.url, data=request.body,
                              headers={k: v if isinstance(v, str) else v.decode() for k, v in request.headers.items()
                                       if k.lower() not in ("x-amz-target", "authorization", "x-amz-date")})
        SigV4Auth(Credentials(ACCESS_KEY_ID, SECRET), "dynamodb", REGION).add_auth(unsigned)
        assert "x-amz-target" not in str(unsigned.headers["Authorization"]).lower()
        for name in ("Authorization", "X-Amz-Date"):
            request.headers[name] = unsigned.headers[name]
        request.headers["X-Amz-Target"] = "DynamoDB_20120810.DeleteItem"

    client.meta.events.register("before-send.dynamodb.GetItem", resign_without_target)
    with pytest.raises(ClientError) as excinfo:
        client.get_item(TableName="target-table", Key={"pk": {"S": "kept"}})
    code, message, status = error_of(excinfo)
    assert (code, status) == ("InvalidSignatureException", 400), message
    assert "X-Amz-Target" in message
    assert secured.client().get_item(TableName="target-table", Key={"pk": {"S": "kept"}})["Item"]


def test_target_changed_after_signing_is_refused(secured):
    client = secured.client()

    def retarget(request, **_):
        request.headers["X-Amz-Target"] = "DynamoDB_20120810.DeleteTable"

    client.meta.events.register("before-send.dynamodb.DescribeTable", retarget)
    with pytest.raises(ClientError) as excinfo:
        client.describe_table(TableName="signed-table")
    assert error_of(excinfo)[0] == "InvalidSignatureException"


def test_signature_for_another_region_is_refused(secured):
    other = boto3.client("dynamodb", region_name="eu-west-1", endpoint_url=secured.url,
                         aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET,
                         config=Config(retries={"max_attempts": 1, "mode": "standard"}))
    with pytest.raises(ClientError) as excinfo:
        other.list_tables()
    code, message, status = error_of(excinfo)
    assert (code, status) == ("InvalidSignatureException", 400)
    assert "'eu-west-1'" in message and f"'{REGION}'" in message, message


def sign_a_call_id(client):
    """Makes botocore sign a per-call `amz-sdk-invocation-id`, as the JavaScript, Go and Java SDKs
    do (botocore itself adds the header after signing)."""
    def add(request, **_):
        # The id botocore sends with this call (it sets the header again after signing).
        request.headers["amz-sdk-invocation-id"] = request.context["retries"]["invocation-id"]

    client.meta.events.register("before-sign.dynamodb", add)


def test_replayed_put_item_is_refused_and_changes_nothing(secured):
    client = secured.client()
    create_table(client, "replay-table")
    sign_a_call_id(client)
    captured = capture(client, "PutItem")
    client.put_item(TableName="replay-table", Item={"pk": {"S": "k"}, "v": {"N": "1"}})
    client.put_item(TableName="replay-table", Item={"pk": {"S": "k"}, "v": {"N": "2"}})
    status, response = send_prepared(captured[0])
    assert status == 400, response
    assert response["__type"].endswith("#InvalidSignatureException"), response
    assert "already used" in response["message"], response
    item = client.get_item(TableName="replay-table", Key={"pk": {"S": "k"}}, ConsistentRead=True)["Item"]
    assert item["v"] == {"N": "2"}
    # A replayed read is harmless and still served (only requests that change data are kept).
    reads = capture(client, "GetItem")
    client.get_item(TableName="replay-table", Key={"pk": {"S": "k"}})
    assert send_prepared(reads[0])[0] == 200


def test_identical_writes_signed_without_a_call_id_are_each_applied(secured):
    # The PHP SDK (Magento, WooCommerce) and botocore leave amz-sdk-invocation-id out of the
    # signature: two identical calls in one second carry one signature, and both are calls of
    # their own.
    client = secured.client()
    create_table(client, "php-counter")
    body = json.dumps({"TableName": "php-counter", "Key": {"pk": {"S": "page"}},
                       "UpdateExpression": "ADD hits :one", "ExpressionAttributeValues": {":one": {"N": "1"}}})
    request = AWSRequest(method="POST", url=secured.url + "/", data=body.encode(), headers={
        "Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "DynamoDB_20120810.UpdateItem"})
    SigV4Auth(Credentials(ACCESS_KEY_ID, SECRET), "dynamodb", REGION).add_auth(request)
    signed = request.prepare()
    assert "amz-sdk-invocation-id" not in signed.headers["Authorization"]
    assert send_prepared(signed) == (200, {})
    assert send_prepared(signed) == (200, {})
    item = client.get_item(TableName="php-counter", Key={"pk": {"S": "page"}}, ConsistentRead=True)["Item"]
    assert item["hits"] == {"N": "2"}


def test_presigned_url_is_refused_for_any_body(secured):
    client = secured.client()
    url = client.generate_presigned_url("put_item", ExpiresIn=3600, Params={
        "TableName": "signed-table", "Item": {"pk": {"S": "presigned"}}})
    assert "X-Amz-Signature=" in url
    for target, body in [("PutItem", {"TableName": "signed-table", "Item": {"pk": {"S": "other"}}}),
                         ("DeleteTable", {"TableName": "signed-table"})]:
        request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
        request.add_header("Content-Type", "application/x-amz-json-1.0")
        request.add_header("X-Amz-Target", f"DynamoDB_20120810.{target}")
        with pytest.raises(urllib.error.HTTPError) as excinfo:
            urllib.request.urlopen(request, timeout=30)
        response = json.loads(excinfo.value.read())
        assert excinfo.value.code == 400
        assert response["__type"].endswith("#IncompleteSignatureException"), response
        assert "Authorization header" in response["message"], response
    assert "signed-table" in client.list_tables()["TableNames"]
    assert "Item" not in client.get_item(TableName="signed-table", Key={"pk": {"S": "other"}})


def test_declared_body_hash_is_checked_against_the_body(secured):
    # x-amz-content-sha256 lets the store verify the signature before reading the body; the
    # body that then arrives must be the one signed.
    client = secured.client()

    def declare_hash(request, **_):
        request.headers["X-Amz-Content-SHA256"] = hashlib.sha256(request.body or b"").hexdigest()

    # Signing runs on request-created too: the header must be there before the signer.
    client.meta.events.register_first("request-created.dynamodb", declare_hash)
    assert "TableNames" in client.list_tables()
    captured = capture(client, "ListTables")
    client.list_tables()
    signed = captured[0]
    authorization = signed.headers["Authorization"]
    authorization = authorization if isinstance(authorization, str) else authorization.decode()
    assert "x-amz-content-sha256" in authorization.lower()
    status, response = send_prepared(signed, body=b'{"Limit": 1}')
    assert status == 400, response
    assert response["__type"].endswith("#InvalidSignatureException"), response
    assert "x-amz-content-sha256" in response["message"], response


def test_aws_cli_signs_requests_the_store_accepts(secured):
    # The CLI (botocore) signs host, x-amz-date and x-amz-target for the configured region.
    _, created, _ = secured.aws("create-table", "--table-name", "cli-signed", "--billing-mode", "PAY_PER_REQUEST",
                                "--attribute-definitions", "AttributeName=pk,AttributeType=S",
                                "--key-schema", "AttributeName=pk,KeyType=HASH")
    assert created["TableDescription"]["TableName"] == "cli-signed"
    secured.aws("put-item", "--table-name", "cli-signed", "--item", '{"pk": {"S": "a"}}')
    _, item, _ = secured.aws("get-item", "--table-name", "cli-signed", "--key", '{"pk": {"S": "a"}}')
    assert item["Item"] == {"pk": {"S": "a"}}
