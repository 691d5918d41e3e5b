"""SigV4 against the real binary started with `--credentials FILE`: boto3 with the right key is
served; a wrong secret gets InvalidSignatureException, an unknown key
UnrecognizedClientException, an unsigned request MissingAuthenticationTokenException. Without
credentials the store refuses to listen on a non-loopback address and says why."""

import subprocess

import pytest
from botocore.exceptions import ClientError

from test_store_harness import (ACCESS_KEY_ID, BINARY, SECRET, StoreProcess, create_table, error_of,
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
