"""Starting a `switchyard lab` for a test: a free port block below the ephemeral range, up when
`switchyard status --lab` says so, stopped with SIGTERM (and a clean exit asserted).

Every test that starts a lab goes through `running_lab`: the port-block retry, the readiness
wait and the clean stop live here once."""

import contextlib
import os
import random
import signal
import subprocess
import time

PORT_BLOCK_TRIES = 10
POLL_S = 0.3
STOP_DEADLINE_S = 60


def _status(binary, directory, env):
    return subprocess.run([str(binary), "status", "--lab", str(directory)], capture_output=True, text=True,
                          timeout=60, env=env)


class RunningLab:
    """A started lab. Unpacks as `(directory, base_port)`; `process` and `log_path` are there for
    tests that signal the lab themselves (call `killed()` after killing it on purpose)."""

    def __init__(self, directory, base_port, process, log_path):
        self.directory = directory
        self.base_port = base_port
        self.process = process
        self.log_path = log_path
        self.killed_on_purpose = False

    def __iter__(self):
        return iter((self.directory, self.base_port))

    def log_tail(self, chars=5000):
        return self.log_path.read_text(errors="replace")[-chars:]

    def killed(self):
        self.killed_on_purpose = True


@contextlib.contextmanager
def running_lab(binary, root, *args, start_deadline_s=90, env=None):
    """Yields a `RunningLab` started with `args` under `root` (its directory is `root/lab`)."""
    directory = root / "lab"
    log_path = root / "lab.log"
    env = dict(env) if env is not None else dict(os.environ)
    for _ in range(PORT_BLOCK_TRIES):
        # Below the kernel's ephemeral range (32768+), where outgoing connections take ports.
        base_port = random.randrange(20000, 32000, 500)
        log = open(log_path, "w")
        process = subprocess.Popen(
            [str(binary), "lab", "--dir", str(directory), "--base-port", str(base_port), *args],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        deadline = time.monotonic() + start_deadline_s
        while process.poll() is None and _status(binary, directory, env).returncode != 0:
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
    lab = RunningLab(directory, base_port, process, log_path)
    try:
        yield lab
    finally:
        if lab.killed_on_purpose:
            process.wait(timeout=STOP_DEADLINE_S)
        else:
            assert process.poll() is None, f"the lab ended during the test:\n{lab.log_tail()}"
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=STOP_DEADLINE_S)
            assert code == 0, lab.log_tail()
