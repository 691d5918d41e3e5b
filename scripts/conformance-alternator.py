#!/usr/bin/env python3
"""Runs ScyllaDB's Alternator test suite (a public DynamoDB conformance suite) against the store,
expecting DynamoDB's answers.

The suite is not in this repository: give the `test/alternator` directory of a scylladb/scylladb
checkout (`git clone --depth 1 --filter=blob:none --sparse https://github.com/scylladb/scylladb
&& git -C scylladb sparse-checkout set test/alternator`). The script copies it into a temporary
directory and, there only:

- adds small stand-ins for the Scylla test framework modules the suite imports (`test.conftest`,
  `test.cqlpy`, `test.pylib`, the Cassandra driver), none of which the tests need against a
  DynamoDB endpoint;
- makes `is_aws()` true, so every test expects DynamoDB's behaviour rather than Alternator's,
  and Scylla-only tests skip; the streams tests' five-second sleep meant for AWS becomes 50 ms;
- leaves out `test_audit.py` and `test_expression_caching.py` (Scylla's CQL and metrics).

Then it starts `switchyard store` on a free port with a fresh data directory (and, with
`--credentials`, a credentials file matching the suite's fallback key, so the signature tests
check signatures), runs pytest against it and prints pytest's summary. Results on 2026-12-05
are in BENCHMARKS.md ("DynamoDB conformance").

Usage: scripts/conformance-alternator.py --suite PATH/test/alternator [--binary B] [--credentials]
       [--python PATH] [-- PYTEST ARGS]
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from store_process import clean_up, start_store  # noqa: E402
SUITE_DEADLINE_S = 3600
# The suite's fallback key when it cannot read a role over CQL (conftest.py).
SUITE_ACCESS_KEY, SUITE_SECRET = "unknownuser", "unknownsecret"
LEFT_OUT = ("test_audit.py", "test_expression_caching.py")

STANDINS = {
    "test/__init__.py": "",
    "test/conftest.py": '''import pytest


def dynamic_scope():
    return "session"


def pytest_runtest_setup(item):
    marker = item.get_closest_marker("skip_env")
    if marker is not None:
        pytest.skip(marker.kwargs.get("reason", "skip_env"))
''',
    "test/cqlpy/__init__.py": "",
    "test/cqlpy/conftest.py": '''import pytest


@pytest.fixture(scope="session")
def host(request):
    return None
''',
    "test/pylib/__init__.py": "",
    "test/pylib/skip_types.py": '''import pytest


def skip_env(reason):
    pytest.skip(reason)


def skip_bug(*args, **kwargs):
    pytest.skip(str(args))
''',
    "test/pylib/connect_options.py": "def add_host_option(parser):\n    pass\n",
    "test/pylib/driver_utils.py": "def safe_driver_shutdown(*args, **kwargs):\n    pass\n",
    "cassandra/__init__.py": "",
    "cassandra/cluster.py": '''class NoHostAvailable(Exception):
    pass


class Cluster:
    def __init__(self, *args, **kwargs):
        raise NoHostAvailable()


ConsistencyLevel = ExecutionProfile = EXEC_PROFILE_DEFAULT = None
''',
    "cassandra/auth.py": "class PlainTextAuthProvider:\n    def __init__(self, *args, **kwargs):\n        pass\n",
    "cassandra/policies.py": "RoundRobinPolicy = None\n",
    "pytest.ini": "[pytest]\nmarkers =\n    veryslow\n    skip_env\n",
}


def prepare(suite: Path, work: Path) -> Path:
    """The suite copied under `work`/test/alternator with the stand-ins and patches."""
    if not (suite / "conftest.py").is_file() or not (suite / "util.py").is_file():
        sys.exit(f"{suite} is not the test/alternator directory of a scylladb checkout "
                 "(it needs conftest.py and util.py)")
    target = work / "test" / "alternator"
    shutil.copytree(suite, target)
    for name, text in STANDINS.items():
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text(text)
    util = target / "util.py"
    source = util.read_text()
    patched, count = re.subn(r"def is_aws\(dynamodb\):\n    return [^\n]*\n",
                             "def is_aws(dynamodb):\n    return True\n", source)
    if count != 1:
        sys.exit("util.py's is_aws() has changed shape; update this script")
    util.write_text(patched)
    streams = target / "test_streams.py"
    if streams.exists():
        streams.write_text(streams.read_text().replace("time.sleep(5 if is_aws(table) else 0.05)",
                                                       "time.sleep(0.05)"))
    return target


def start_suite_store(binary: Path, work: Path, credentials: bool):
    """The store, with a credentials file matching the suite's key if `credentials`; (process, url)."""
    extra = []
    if credentials:
        creds = work / "credentials"
        creds.write_text(f"{SUITE_ACCESS_KEY} {SUITE_SECRET}\n")
        extra = ["--credentials", str(creds)]
    process, port = start_store(binary, work, extra)
    return process, f"http://127.0.0.1:{port}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", type=Path, required=True,
                        help="the test/alternator directory of a scylladb/scylladb checkout")
    parser.add_argument("--binary", type=Path, default=ROOT / "target" / "release" / "switchyard",
                        help="the switchyard binary (default target/release/switchyard)")
    parser.add_argument("--credentials", action="store_true",
                        help="start the store with credentials matching the suite's key, so the "
                             "signature tests check signatures")
    parser.add_argument("--python", type=Path,
                        help="the Python (with boto3 and pytest) that runs the suite; default: the "
                             "repository's .venv, else this one (a venv with a newer boto3 runs the "
                             "tests that need one, such as DescribeStream's ShardFilter)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest after --")
    args = parser.parse_args()
    if not args.binary.is_file():
        sys.exit(f"{args.binary} is not a file: build it (cargo build --release -p switchyard) "
                 "or give --binary")
    python = args.python or ROOT / ".venv" / "bin" / "python"
    if args.python and not python.exists():
        sys.exit(f"--python {python}: no such file")
    if not python.exists():
        python = Path(sys.executable)
    work = Path(tempfile.mkdtemp(prefix="conformance-"))
    try:
        target = prepare(args.suite.resolve(), work)
        process, url = start_suite_store(args.binary.resolve(), work, args.credentials)
        try:
            command = [str(python), "-m", "pytest", "-q", "-rfE", "--url", url, str(target),
                       *[f"--ignore={target / name}" for name in LEFT_OUT], *args.pytest_args]
            print("$", " ".join(command), flush=True)
            env = {**os.environ, "PYTHONPATH": str(work)}
            return subprocess.run(command, cwd=work, env=env, timeout=SUITE_DEADLINE_S).returncode
        finally:
            process.terminate()
            process.wait(timeout=30)
    finally:
        clean_up(work, args.keep)


if __name__ == "__main__":
    sys.exit(main())
