"""What the scripts that run a suite against a fresh `switchyard store` share: a free port and
the store started on it, waited for until it answers `/health`."""

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

STARTUP_DEADLINE_S = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_store(binary: Path, work: Path, extra_args=()):
    """`binary store` on a free port with its data in `work`/data and its log in
    `work`/store.log; (process, port) once it answers, else the script exits saying why."""
    port = free_port()
    args = [str(binary), "store", "--data-dir", str(work / "data"), "--listen", f"127.0.0.1:{port}",
            *extra_args]
    log = open(work / "store.log", "w")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the store exited at start; see {work / 'store.log'}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    sys.exit(f"the store did not answer within {STARTUP_DEADLINE_S} s; see {work / 'store.log'}")


def clean_up(work: Path, keep: bool):
    """Removes the temporary directory, or says where it was kept."""
    if keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
