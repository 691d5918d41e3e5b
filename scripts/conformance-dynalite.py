#!/usr/bin/env python3
"""Runs dynalite's test suite (mocha; its expectations were recorded against DynamoDB itself)
against the store, and optionally against a second endpoint (DynamoDB Local) side by side.

The suite is not in this repository, nor in dynalite's npm package: give a checkout of
github.com/mhart/dynalite (`git clone --depth 1 https://github.com/mhart/dynalite`). The script
copies its `test` and `db` directories into a temporary directory and, there only:

- replaces the in-process dynalite server in `test/helpers.js` with the endpoint under test
  (the port from `DYN_PORT`), leaving every assertion as it is;
- installs the suite's own dependencies (mocha 6, should, aws4, async, once, and what `db`
  needs) with npm, into that directory.

Then it starts `switchyard store` on a free port with a fresh data directory and runs each test
file in its own mocha process (a few tests call back twice, which ends a mocha run; one file
ending early does not end the others; each of its three blocks, serializations, validations and
functionality, runs in a mocha of its own too), printing passing and failing tests per file and in all.
With `--other URL`, the same files run against that endpoint too (for example DynamoDB Local on
`http://127.0.0.1:8000`) and the tests that pass there and fail here are listed. `connection.js`
(dynalite's own HTTP server) and `bench.js` are left out.

What the counts mean: most of what still fails are Java-specific wordings of DynamoDB's
SerializationException ("TRUE_VALUE cannot be converted to String"), constraint errors that
DynamoDB reports several at once ("3 validation errors detected: ..."), tests that expect
DynamoDB's partition hash order or a table that takes time to become ACTIVE, and messages
DynamoDB has since reworded (DynamoDB Local fails more of them than the store does). Results are
in BENCHMARKS.md ("DynamoDB conformance").

Usage: scripts/conformance-dynalite.py --suite PATH/dynalite [--binary B] [--other URL]
       [--files a.js,b.js] [--keep]
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
FILE_DEADLINE_S = 900
NPM_DEADLINE_S = 600
LEFT_OUT = ("helpers.js", "connection.js", "bench.js")
DEPENDENCIES = ["aws4@1", "mocha@6", "should@13", "async@2", "once@1", "big.js@5", "lazy@1",
                "buffer-crc32@0.2", "levelup@4", "memdown@5", "subleveldown@5", "lock@1", "minimist@1"]
# The describe blocks of each file (mocha's --grep matches them in the tests' full titles).
BLOCKS = ("serializations", "validations", "functionality")
# A mocha spec reporter line: a pass (check mark) or a numbered failure, with its title.
RESULT = re.compile(r"^\s*(✓|\d+\)) (.*?)(?: \(\d+ms\))?$")


def prepare(suite: Path, work: Path) -> Path:
    """The suite's tests under `work`, pointed at DYN_PORT, with their dependencies installed."""
    if not (suite / "test" / "helpers.js").is_file() or not (suite / "db").is_dir():
        sys.exit(f"{suite} is not a dynalite checkout (it needs test/helpers.js and db/)")
    shutil.copytree(suite / "test", work / "test")
    shutil.copytree(suite / "db", work / "db")
    helpers = work / "test" / "helpers.js"
    source = helpers.read_text()
    patches = [
        ("    dynalite = require('..')",
         "    dynalite = function() { return {listen: function(p, cb) { cb() }, close: function(cb) { cb() }} }"),
        ("var port = 10000 + Math.round(Math.random() * 10000),", "var port = +process.env.DYN_PORT,"),
    ]
    for old, new in patches:
        if old not in source:
            sys.exit("test/helpers.js has changed shape; update this script")
        source = source.replace(old, new)
    helpers.write_text(source)
    (work / "package.json").write_text('{"name": "dynalite-conformance", "version": "1.0.0", "private": true}\n')
    npm = shutil.which("npm")
    if not npm:
        sys.exit("npm is not installed (apt-get install -y npm)")
    print("installing the suite's dependencies with npm ...", flush=True)
    subprocess.run([npm, "install", "--no-audit", "--no-fund", "--silent", *DEPENDENCIES], cwd=work,
                   check=True, timeout=NPM_DEADLINE_S)
    return work / "test"


def run_files(work: Path, files: list[str], port: int, label: str, log: Path | None = None) -> dict:
    """{(file, block, title): passed} for every test the files ran against the endpoint on `port`;
    with `log`, each mocha's whole output (the failures' details) is written there too."""
    results = {}
    mocha = work / "node_modules" / ".bin" / "mocha"
    env = {**os.environ, "DYN_PORT": str(port), "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
           "AWS_SECRET_ACCESS_KEY": "secret", "AWS_REGION": "us-east-1"}
    for name in files:
        passed = failed = 0
        # Each of a file's blocks in a mocha of its own: a test that calls back twice ends its
        # mocha, and then only the rest of its block goes unrun.
        for block in BLOCKS:
            command = [str(mocha), "--require", "should", "--reporter", "spec", "-t", "30s", "-g", block,
                       "test/helpers.js", f"test/{name}"]
            try:
                output = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True,
                                        timeout=FILE_DEADLINE_S).stdout
            except subprocess.TimeoutExpired as expired:
                output = expired.stdout or ""
                if isinstance(output, bytes):
                    output = output.decode(errors="replace")
            if log:
                log.mkdir(parents=True, exist_ok=True)
                (log / f"{label.replace(':', '_')}-{name}-{block}.txt").write_text(output)
            # Only the list of tests as they ran (the failures' details follow the summary line).
            listing = re.split(r"\n\s+\d+ passing \(", output)[0]
            for line in listing.split("\n"):
                match = RESULT.match(line)
                if not match:
                    continue
                ok = match.group(1) == "✓"
                # A few titles repeat within a block: each occurrence is its own test.
                title, seen = match.group(2).strip(), 1
                while (name, block, title if seen == 1 else f"{title} #{seen}") in results:
                    seen += 1
                results[(name, block, title if seen == 1 else f"{title} #{seen}")] = ok
                passed += ok
                failed += not ok
        print(f"{label:>12} {name:<24} {passed:4} passing {failed:4} failing", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", type=Path, required=True, help="a checkout of github.com/mhart/dynalite")
    parser.add_argument("--binary", type=Path, default=ROOT / "target" / "release" / "switchyard",
                        help="the switchyard binary (default target/release/switchyard)")
    parser.add_argument("--other", help="a second endpoint to run the same files against, "
                                        "such as DynamoDB Local (http://127.0.0.1:8000)")
    parser.add_argument("--files", help="comma-separated test files (default: all but "
                                        + ", ".join(LEFT_OUT) + ")")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--log", type=Path, help="a directory to write each mocha's whole output to "
                                                 "(the failures' expected and actual answers)")
    args = parser.parse_args()
    if not args.binary.is_file():
        sys.exit(f"{args.binary} is not a file: build it (cargo build --release -p switchyard) or give --binary")
    other_port = None
    if args.other:
        match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/?", args.other)
        if not match:
            sys.exit(f"--other {args.other}: give http://127.0.0.1:PORT (the suite's helpers connect to 127.0.0.1)")
        other_port = int(match.group(1))
    work = Path(tempfile.mkdtemp(prefix="conformance-dynalite-"))
    try:
        tests = prepare(args.suite.resolve(), work)
        files = args.files.split(",") if args.files else sorted(
            p.name for p in tests.glob("*.js") if p.name not in LEFT_OUT)
        process, port = start_store(args.binary.resolve(), work)
        try:
            ours = run_files(work, files, port, "switchyard", args.log)
        finally:
            process.terminate()
            process.wait(timeout=30)
        total = len(ours)
        print(f"switchyard: {sum(ours.values())} of {total} passing")
        if other_port:
            theirs = run_files(work, files, other_port, args.other.split("//")[1], args.log)
            print(f"{args.other}: {sum(theirs.values())} of {len(theirs)} passing")
            only_there = sorted(key for key, ok in theirs.items() if ok and ours.get(key) is False)
            print(f"passing there and failing here: {len(only_there)}")
            for name, block, title in only_there:
                print(f"  {name} ({block}): {title}")
        return 0
    finally:
        clean_up(work, args.keep)


if __name__ == "__main__":
    sys.exit(main())
