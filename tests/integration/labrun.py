"""Starting a `switchyard lab` for a test module: a free port block below the ephemeral range,
up when `switchyard status --lab` says so, stopped with SIGTERM (and a clean exit asserted)."""

import contextlib
import random
import signal
import subprocess
import time

PORT_BLOCK_TRIES = 10
POLL_S = 0.3


def _status(binary, directory):
    return subprocess.run([str(binary), "status", "--lab", str(directory)], capture_output=True, text=True,
                          timeout=60)


@contextlib.contextmanager
def running_lab(binary, root, *args, start_deadline_s=90):
    """Yields (lab directory, base port) of a lab started with `args` under `root`."""
    directory = root / "lab"
    log_path = root / "lab.log"
    for _ in range(PORT_BLOCK_TRIES):
        # Below the kernel's ephemeral range (32768+), where outgoing connections take ports.
        base_port = random.randrange(20000, 32000, 500)
        log = open(log_path, "w")
        process = subprocess.Popen(
            [str(binary), "lab", "--dir", str(directory), "--base-port", str(base_port), *args],
            stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + start_deadline_s
        while process.poll() is None and _status(binary, directory).returncode != 0:
            if time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"the lab was not up within {start_deadline_s}s:\n"
                                     + log_path.read_text()[-5000:])
            time.sleep(POLL_S)
        if process.poll() is None:
            break
        assert "not free" in log_path.read_text(), log_path.read_text()[-5000:]
    else:
        raise AssertionError(f"no free port block for the lab in {PORT_BLOCK_TRIES} tries")
    try:
        yield directory, base_port
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    assert code == 0, log_path.read_text()[-5000:]
