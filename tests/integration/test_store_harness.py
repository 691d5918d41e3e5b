"""Shared harness of the store's black-box suite (no tests here): starts the real `switchyard
store` binary on a free port with a ready file and a temp data dir, and hands out boto3
clients/resources and an AWS CLI runner pointed at it. The test_store_*, test_cli_* and
test_durability_* files import from this module."""

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from harness import BINARY, REPO, require_binary, wait_until

AWS_CLI = REPO / ".venv" / "bin" / "aws"
REGION = "us-east-1"
START_DEADLINE_S = 20
STOP_DEADLINE_S = 20
ACCESS_KEY_ID = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


class StoreProcess:
    """One `switchyard store` process; restartable on the same data dir."""

    def __init__(self, data_dir, credentials_file=None, listen="127.0.0.1:0", env=None, args=()):
        self.data_dir = Path(data_dir)
        # Flags after the harness's own (`--backup-dir`, `--config`, limits...).
        self.args = list(args)
        # SWITCHYARD_* variables the test sets on purpose (the rest of the suite's are dropped).
        self.env = dict(env or {})
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.credentials_file = credentials_file
        self.listen = listen
        self.log = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.process = None
        self.address = None

    @property
    def url(self):
        return f"http://{self.address}"

    def command(self):
        ready = self.data_dir.parent / f"{self.data_dir.name}.ready"
        command = [str(BINARY), "store", "--region", REGION, "--listen", self.listen,
                   "--data-dir", str(self.data_dir), "--ready-file", str(ready)]
        if self.credentials_file:
            command += ["--credentials", str(self.credentials_file)]
        # The environment is not passed on (see start): the suite's disk watermark goes as a flag.
        command += ["--disk-free-bytes-min", os.environ.get("SWITCHYARD_DISK_FREE_BYTES_MIN", "64MiB")]
        return command + self.args, ready

    def start(self):
        command, ready = self.command()
        if ready.exists():
            ready.unlink()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
        env.setdefault("RUST_LOG", "warn")
        env.update(self.env)
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))
        deadline = time.monotonic() + START_DEADLINE_S
        while not (ready.exists() and ready.read_text().strip()):
            if self.process.poll() is not None:
                raise AssertionError(f"store exited with {self.process.returncode}: {self.tail()}")
            assert time.monotonic() < deadline, f"store not ready in {START_DEADLINE_S}s: {self.tail()}"
            time.sleep(0.02)
        self.address = ready.read_text().strip()
        return self

    def tail(self):
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else "(no log)"

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=STOP_DEADLINE_S)

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            code = self.process.wait(timeout=STOP_DEADLINE_S)
            assert code == 0, f"store exited with {code}: {self.tail()}"

    def client(self, key=ACCESS_KEY_ID, secret=SECRET, retries=1, **config):
        return boto3.client(
            "dynamodb", region_name=REGION, endpoint_url=self.url,
            aws_access_key_id=key, aws_secret_access_key=secret,
            config=Config(retries={"max_attempts": retries, "mode": "standard"}, **config),
        )

    def resource(self):
        return boto3.resource(
            "dynamodb", region_name=REGION, endpoint_url=self.url,
            aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET,
            config=Config(retries={"max_attempts": 1, "mode": "standard"}),
        )

    def raw(self, operation, body, headers=None):
        """POSTs raw bytes; returns (status, parsed JSON body). No signature."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(self.url + "/", data=data, method="POST")
        request.add_header("Content-Type", "application/x-amz-json-1.0")
        if operation is not None:
            request.add_header("X-Amz-Target", f"DynamoDB_20120810.{operation}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def aws(self, *args, check=True):
        """Runs `aws dynamodb ARGS --endpoint-url URL`; returns (returncode, parsed stdout, stderr)."""
        env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET,
                   AWS_DEFAULT_REGION=REGION, AWS_MAX_ATTEMPTS="1", AWS_CONFIG_FILE="/dev/null",
                   AWS_SHARED_CREDENTIALS_FILE="/dev/null", AWS_PAGER="")
        result = subprocess.run([str(AWS_CLI), "dynamodb", *args, "--endpoint-url", self.url, "--output", "json"],
                                env=env, capture_output=True, text=True, timeout=60)
        if check:
            assert result.returncode == 0, f"aws {' '.join(args)} failed: {result.stderr}"
        parsed = json.loads(result.stdout) if result.stdout.strip() else None
        return result.returncode, parsed, result.stderr


class ExternalStore(StoreProcess):
    """A DynamoDB-compatible server someone else started (STORE_ENDPOINT, e.g. DynamoDB Local):
    the same clients, no process to manage. Used to check the suite's expectations."""

    def __init__(self, url):
        self.address = url.removeprefix("http://").rstrip("/")
        self.process = None

    def start(self):
        return self

    def stop(self):
        pass

    def kill(self):
        pytest.skip("cannot kill an external server")

    def raw(self, operation, body, headers=None):
        # DynamoDB Local wants some Authorization header but does not check the signature.
        fake = {"Authorization": "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/dynamodb/aws4_request, "
                                 "SignedHeaders=host, Signature=00"}
        return super().raw(operation, body, {**fake, **(headers or {})})


def started_store(tmp_path_factory, name="store", **kwargs):
    """A started store: the real binary, or with STORE_ENDPOINT set, that server (run only the
    files not marked switchyard_only against it: test_store_api, _errors, _edges, test_cli_aws)."""
    if os.environ.get("STORE_ENDPOINT"):
        return ExternalStore(os.environ["STORE_ENDPOINT"])
    require_binary()
    store = StoreProcess(tmp_path_factory.mktemp(name) / "data", **kwargs)
    store.start()
    return store


def store_fixture(name="store", **kwargs):
    """A module-scoped pytest fixture: a store from `started_store(name, **kwargs)`, stopped
    after the module. Use as `store = store_fixture()` in a test module."""
    @pytest.fixture(scope="module")
    def store(tmp_path_factory):
        started = started_store(tmp_path_factory, name, **kwargs)
        yield started
        started.stop()

    return store


def wait_for(condition, deadline_s, what, interval_s=0.1):
    """Polls `condition` until it returns a truthy value; fails after `deadline_s` naming `what`."""
    return wait_until(what, condition, deadline_s, poll_s=interval_s)


def scan_all(client, table):
    """Every item of `table` (strongly consistent scan, all pages)."""
    items, start = [], None
    while True:
        kwargs = {"TableName": table, "ConsistentRead": True}
        if start:
            kwargs["ExclusiveStartKey"] = start
        page = client.scan(**kwargs)
        items += page["Items"]
        start = page.get("LastEvaluatedKey")
        if not start:
            return items


def create_table(client, name, hash_key=("pk", "S"), range_key=None, **extra):
    attributes = {hash_key[0]: hash_key[1]}
    schema = [{"AttributeName": hash_key[0], "KeyType": "HASH"}]
    if range_key:
        attributes[range_key[0]] = range_key[1]
        schema.append({"AttributeName": range_key[0], "KeyType": "RANGE"})
    for attribute, kind in extra.pop("extra_attributes", {}).items():
        attributes[attribute] = kind
    client.create_table(
        TableName=name, BillingMode="PAY_PER_REQUEST", KeySchema=schema,
        AttributeDefinitions=[{"AttributeName": a, "AttributeType": t} for a, t in attributes.items()],
        **extra,
    )
    return name


def error_of(excinfo):
    """(code, message, HTTP status) of a botocore ClientError."""
    error = excinfo.value.response
    return error["Error"]["Code"], error["Error"].get("Message", ""), error["ResponseMetadata"]["HTTPStatusCode"]
