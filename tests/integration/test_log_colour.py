"""Log lines carry ANSI colour codes only on a terminal, and never with NO_COLOR set: a store's
startup line read through a pipe, through a pseudo-terminal, and through a pseudo-terminal
with NO_COLOR=1."""

import os
import pty
import select
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("SWITCHYARD_BIN", REPO / "target" / "debug" / "switchyard"))
DEADLINE_S = 20

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]


def startup_log(tmp_path, tty, env_extra=None):
    """The store's stderr up to its "store listening" line."""
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built")
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env.update(env_extra or {})
    data = tmp_path / f"data-{tty}-{bool(env_extra)}"
    command = [str(BINARY), "store", "--listen", "127.0.0.1:0", "--data-dir", str(data)]
    if tty:
        leader, follower = pty.openpty()
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=follower)
        os.close(follower)
        reader = leader
    else:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        reader = process.stderr.fileno()
    text = b""
    deadline = time.monotonic() + DEADLINE_S
    try:
        while b"store listening" not in text:
            assert time.monotonic() < deadline, text
            ready, _, _ = select.select([reader], [], [], 0.5)
            if ready:
                chunk = os.read(reader, 4096)
                assert chunk, f"stderr closed early: {text!r}"
                text += chunk
    finally:
        process.terminate()
        process.wait(timeout=20)
        if tty:
            os.close(leader)
    return text


def test_plain_through_a_pipe(tmp_path):
    assert b"\x1b[" not in startup_log(tmp_path, tty=False)


def test_coloured_on_a_terminal_unless_no_color(tmp_path):
    assert b"\x1b[" in startup_log(tmp_path, tty=True)
    assert b"\x1b[" not in startup_log(tmp_path, tty=True, env_extra={"NO_COLOR": "1"})
