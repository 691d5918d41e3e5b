"""The active-region pointer for applications, through a controller restart: the Server-Sent
Events stream (`GET /v1/active-region/stream`) sends the current value at once and every
change, ends when the controller shuts down, and a reconnecting client gets the value the
restarted controller recovered; `switchyard pointer watch` keeps its env file while the
controller is gone and follows the next change after it is back."""

import http.client
import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from test_lock import App, controller_config, free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("SWITCHYARD_BIN", REPO / "target" / "debug" / "switchyard"))

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]


class EventReader:
    """One SSE connection read in a thread: the parsed events, and whether the stream ended."""

    def __init__(self, port):
        self.events, self.ended, self.headers = [], threading.Event(), {}
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.connection.request("GET", "/v1/active-region/stream", headers={"Accept": "text/event-stream"})
        self.response = self.connection.getresponse()
        self.headers = dict(self.response.getheaders())
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        fields = {}
        try:
            while True:
                line = self.response.readline()
                if not line:
                    break
                line = line.decode().rstrip("\n")
                if line == "":
                    if "data" in fields:
                        self.events.append(dict(fields))
                    fields = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(":")
                    fields[name] = value[1:] if value.startswith(" ") else value
        except (OSError, AttributeError, http.client.HTTPException):  # AttributeError: closed by close()
            pass
        self.ended.set()

    def values(self):
        return [json.loads(event["data"]) for event in self.events]

    def close(self):
        self.connection.close()


class Controller:
    def __init__(self, tmp, us, eu):
        self.tmp, self.port, self.process = tmp, free_port(), None
        self.config = tmp / "switchyard.toml"
        self.config.write_text(controller_config(us, eu, tmp / "audit.jsonl"))
        self.log = tmp / "controller.log"
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self):
        ready = self.tmp / "controller.ready"
        if ready.exists():
            ready.unlink()
        self.process = subprocess.Popen([str(BINARY), "controller", "--config", str(self.config), "--listen",
                                         f"127.0.0.1:{self.port}", "--ready-file", str(ready)],
                                        stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))
        wait_until("the controller", ready.exists, logs=[self.log])

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=30) == 0, self.log.read_text()[-3000:]

    def switchover(self, region):
        result = subprocess.run([str(BINARY), "switchover", "--to", region, "--controller", self.url],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr


@pytest.fixture
def apps():
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built (cargo build -p switchyard)")
    us, eu = App(), App()
    yield us, eu
    us.stop()
    eu.stop()


def test_sse_and_pointer_watch_through_a_controller_restart(apps, tmp_path):
    us, eu = apps
    controller = Controller(tmp_path, us, eu)
    controller.start()
    env_file, watch_log = tmp_path / "region.env", tmp_path / "watch.log"
    watcher = subprocess.Popen([str(BINARY), "pointer", "watch", "--controller", controller.url, "--write-env",
                                str(env_file)], stdout=subprocess.DEVNULL, stderr=open(watch_log, "ab"))
    try:
        def env():
            return env_file.read_text() if env_file.exists() else ""

        stream = EventReader(controller.port)
        assert stream.response.status == 200
        assert stream.headers.get("content-type", "").startswith("text/event-stream"), stream.headers
        wait_until("the first event naming us-east-1",
                   lambda: any(v["region"] == "us-east-1" for v in stream.values()), logs=[controller.log])
        first = stream.events[0]
        assert first["event"] == "active-region"
        assert first["retry"].isdigit()
        assert first["id"] == str(json.loads(first["data"])["generation"])

        controller.switchover("eu-west-1")
        wait_until("the change on the stream", lambda: any(v["region"] == "eu-west-1" for v in stream.values()),
                   logs=[controller.log])
        generations = [v["generation"] for v in stream.values()]
        assert generations == sorted(generations) and generations[-1] > generations[0], generations
        moved = generations[-1]
        wait_until("pointer watch on eu-west-1", lambda: "AWS_REGION=eu-west-1" in env(), logs=[watch_log])

        # The controller goes away: the stream ends cleanly, the watcher keeps its file and runs on.
        controller.stop()
        assert stream.ended.wait(timeout=30), "the stream did not end when the controller stopped"
        stream.close()
        with pytest.raises(OSError):
            EventReader(controller.port)
        assert watcher.poll() is None, watch_log.read_text()
        assert f"SWITCHYARD_GENERATION={moved}" in env()
        wait_until("the watcher to notice", lambda: "retrying" in watch_log.read_text(), logs=[watch_log])

        # Back again: a reconnecting client gets the recovered pointer at once.
        controller.start()
        again = EventReader(controller.port)
        wait_until("the recovered pointer on the new stream", lambda: again.values(), logs=[controller.log])
        recovered = again.values()[0]
        assert recovered["region"] == "eu-west-1", recovered
        assert recovered["generation"] >= moved, recovered

        # And the watcher, still running, follows the next change.
        controller.switchover("us-east-1")
        wait_until("the stream to follow", lambda: any(v["region"] == "us-east-1" for v in again.values()),
                   logs=[controller.log])
        wait_until("pointer watch back on us-east-1", lambda: "AWS_REGION=us-east-1" in env(), logs=[watch_log])
        assert watcher.poll() is None
        again.close()
    finally:
        watcher.kill()
        watcher.wait(timeout=10)
        if controller.process.poll() is None:
            controller.process.kill()
            controller.process.wait(timeout=10)
