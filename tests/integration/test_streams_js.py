"""DynamoDB Streams with the AWS SDK for JavaScript v3 (@aws-sdk/client-dynamodb-streams, installed
into tests/js by scripts/install-test-deps.sh) against the real binary: tests/js/streams.mjs
creates a streamed table, writes, and reads the stream with every operation; this checks what it
saw."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from test_store_harness import REGION, started_store

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]

JS = Path(__file__).resolve().parents[1] / "js"
NODE_DEADLINE_S = 120


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = started_store(tmp_path_factory, name="js")
    yield store
    store.stop()


def test_js_sdk_reads_the_stream(store):
    if not shutil.which("node") or not (JS / "node_modules" / "@aws-sdk" / "client-dynamodb-streams").exists():
        pytest.skip("node and tests/js/node_modules are needed (scripts/install-test-deps.sh installs them)")
    result = subprocess.run(["node", str(JS / "streams.mjs"), store.url, "js-streamed"],
                            capture_output=True, text=True, timeout=NODE_DEADLINE_S)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["arn"].startswith(f"arn:aws:dynamodb:{REGION}:000000000000:table/js-streamed/stream/")
    assert seen["listed"] == [seen["arn"]]
    # Right after CreateTable the stream may still be ENABLING (about a second), as on DynamoDB.
    assert seen["status"] in ("ENABLING", "ENABLED")
    assert seen["viewType"] == "NEW_AND_OLD_IMAGES"
    assert seen["events"] == ["INSERT", "MODIFY", "REMOVE"]
    assert seen["modifyOld"] == {"pk": {"S": "a"}, "n": {"N": "1"}}
    assert seen["modifyNew"] == {"pk": {"S": "a"}, "n": {"N": "2"}}
    assert seen["created"] is True
    assert len(seen["at"]) == 1
    assert seen["after"] == ["REMOVE"]
    assert seen["latest"] == 0 and seen["latestNext"] is True
