"""`switchyard lock run` with real processes: two regional stores with the lease table made
global through boto3, the real controller (probing two local apps, moving the active-region
pointer on `switchover`), and `lock run` holders racing in both regions. Covers the pointer path
(only the active region runs), the lease path (a second holder is skipped; a frozen holder's
lease expires and is taken by the other region, and the woken holder stops without touching the
new lease), a holder killed mid-run (its command dies with it; the lease expires), the pointer
moving mid-run (the command is stopped and the other region runs, never both at once), and the
exit codes with their messages. Jobs that leave processes in the background (Magento's cron:run
backgrounds each `use_separate_process` group and exits) keep the lease held until those end,
are stopped with it, and die with a killed holder; `--max-run-s` stops a hung job. Processes that
leave the job's process group and session (`setsid`, a double-forking daemon) are stopped all the
same: when the lease is lost, on SIGTERM to `lock run`, with a killed holder, and when the guard
between `lock run` and the job is killed. The first run after the pointer moves says once, on
stderr, that it waits for the hand-off, how long and why."""

import os
import shlex
import signal
import subprocess
import sys
import urllib.request
import json
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

import harness
from harness import BINARY, App, controller_toml, free_port, two_regions_toml

KEY = "integration-test-replication-key-0123456789"
TABLE = "switchyard_locks"
DEADLINE_S = 30
TTL_S = 5
GRACE_S = 1
# Exit statuses of `lock run` (README, "One region runs the cron").
NOT_ACTIVE, LEASE_HELD, POINTER_UNKNOWN, STORE_UNAVAILABLE, STOPPED, MAX_RUN = 100, 101, 102, 103, 104, 105
# What the README's crontab filters out: the normal skips only.
BENIGN_SKIP = "switchyard lock: skipped '"

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]


def wait_until(what, condition, deadline_s=DEADLINE_S, logs=()):
    return harness.wait_until(what, condition, deadline_s, logs)


def controller_config(us, eu, audit):
    return controller_toml(audit) + two_regions_toml(us.port, eu.port, names=("us-east-1-app", "eu-west-1-app")) + """
[[runbook]]
name = "pointer"
kind = "pointer"
"""


class Deployment:
    """Two regional stores with the global lease table, and the controller."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.processes = []
        self.strays = []
        self.apps = [App(), App()]
        self.ports = {"us-east-1": free_port(), "eu-west-1": free_port()}
        for region in self.ports:
            data = tmp / region
            data.mkdir()
            ready = data / "ready"
            command = [str(BINARY), "store", "--region", region, "--listen", f"127.0.0.1:{self.ports[region]}",
                       "--data-dir", str(data), "--ready-file", str(ready)]
            for peer, port in self.ports.items():
                if peer != region:
                    command += ["--peer", f"{peer}=http://127.0.0.1:{port}"]
            self.start(command, data / "store.log", env={"SWITCHYARD_REPLICATION_KEY": KEY})
            wait_until(f"store {region}", ready.exists, logs=[data / "store.log"])
        us = self.client("us-east-1")
        us.create_table(TableName=TABLE, KeySchema=[{"AttributeName": "name", "KeyType": "HASH"}],
                        AttributeDefinitions=[{"AttributeName": "name", "AttributeType": "S"}],
                        BillingMode="PAY_PER_REQUEST")
        wait_until("the table", lambda: us.describe_table(TableName=TABLE)["Table"]["TableStatus"] == "ACTIVE")
        us.update_table(TableName=TABLE, ReplicaUpdates=[{"Create": {"RegionName": "eu-west-1"}}])
        eu = self.client("eu-west-1")

        def replica_ready():
            try:
                return eu.describe_table(TableName=TABLE)["Table"]["TableStatus"] == "ACTIVE"
            except eu.exceptions.ResourceNotFoundException:
                return False

        wait_until("the eu-west-1 replica", replica_ready)
        config = tmp / "switchyard.toml"
        config.write_text(controller_config(self.apps[0], self.apps[1], tmp / "audit.jsonl"))
        ready = tmp / "controller.ready"
        self.controller_log = tmp / "controller.log"
        self.start([str(BINARY), "controller", "--config", str(config), "--listen", "127.0.0.1:0",
                    "--ready-file", str(ready)], self.controller_log)
        wait_until("the controller", lambda: ready.exists() and ready.read_text().strip(), logs=[self.controller_log])
        self.controller = f"http://{ready.read_text().strip()}"
        wait_until("the pointer on us-east-1", lambda: self.pointer()["region"] == "us-east-1",
                   logs=[self.controller_log])

    def start(self, command, log, env=None):
        process = subprocess.Popen(command, env=dict(os.environ, **(env or {})), stdout=subprocess.DEVNULL,
                                   stderr=open(log, "ab"))
        self.processes.append(process)
        return process

    def client(self, region):
        return boto3.client("dynamodb", region_name=region, endpoint_url=f"http://127.0.0.1:{self.ports[region]}",
                            aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret",
                            config=Config(retries={"max_attempts": 1, "mode": "standard"}))

    def pointer(self):
        with urllib.request.urlopen(f"{self.controller}/v1/active-region", timeout=5) as answer:
            return json.loads(answer.read())

    def switchover(self, region):
        result = subprocess.run([str(BINARY), "switchover", "--to", region, "--controller", self.controller],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        wait_until(f"the pointer on {region}", lambda: self.pointer()["region"] == region,
                   logs=[self.controller_log])

    def lease(self, region, name):
        item = self.client(region).get_item(TableName=TABLE, Key={"name": {"S": name}},
                                            ConsistentRead=True).get("Item")
        return None if item is None else {k: list(v.values())[0] for k, v in item.items()}

    def lock_command(self, region, name, command, ttl_s=TTL_S, controller=None, extra=()):
        return [str(BINARY), "lock", "run", "--name", name, "--region", region,
                "--store", f"http://127.0.0.1:{self.ports[region]}", "--controller", controller or self.controller,
                "--ttl-s", str(ttl_s), "--settle-ms", "200", "--kill-grace-s", str(GRACE_S), *extra, "--", *command]

    def lock(self, region, name, command, **kwargs):
        return subprocess.run(self.lock_command(region, name, command, **kwargs), capture_output=True, text=True,
                              timeout=60)

    def lock_background(self, region, name, command, log, **kwargs):
        # Its own session: the test signals it alone, like cron's child.
        process = subprocess.Popen(self.lock_command(region, name, command, **kwargs), stdout=subprocess.DEVNULL,
                                   stderr=open(log, "ab"), start_new_session=True)
        self.processes.append(process)
        return process

    def track(self, pid):
        """A process a job left outside its group: killed at the end if a failed test left it."""
        self.strays.append(pid)
        return pid

    def close(self):
        for pid in self.strays:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        for process in self.processes:
            if process.poll() is None:
                try:
                    os.kill(process.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
                process.kill()
                process.wait(timeout=10)
        for app in self.apps:
            app.stop()


@pytest.fixture
def deployment(tmp_path):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built (cargo build -p switchyard)")
    deployment = Deployment(tmp_path)
    yield deployment
    deployment.close()


def blocking_job(tmp, tag):
    """A job that marks itself running, records its token, and runs until the test lets it go
    (or it is stopped: SIGTERM removes the mark)."""
    running, release, token = tmp / f"{tag}.running", tmp / f"{tag}.release", tmp / f"{tag}.token"
    script = (f"trap 'rm -f {running}; exit 143' TERM; echo \"$SWITCHYARD_LOCK_TOKEN\" > {token}; "
              f"echo $$ > {running}; while [ ! -e {release} ]; do sleep 0.05; done; rm -f {running}")
    return ["sh", "-c", script], running, release, token


def alive(pid):
    """Whether `pid` runs (a zombie, killed and not yet reaped, counts as gone)."""
    try:
        return not Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (FileNotFoundError, ProcessLookupError):
        return False


def background_job(tmp, tag, leader_status=0, ignore_term=False):
    """A job like Magento's cron:run: it starts a process in the background (nohup, `&`) and
    exits at once with `leader_status`. The background process writes its pid and runs until the
    test lets it go (or it is stopped)."""
    pid, release = tmp / f"{tag}.bg.pid", tmp / f"{tag}.bg.release"
    trap = "trap '' TERM; " if ignore_term else ""
    # `\$$`: the background shell's own pid, not the leader's.
    inner = f"{trap}echo \\$$ > {pid}.tmp; mv {pid}.tmp {pid}; while [ ! -e {release} ]; do sleep 0.05; done"
    script = f"nohup sh -c \"{inner}\" >/dev/null 2>&1 & exit {leader_status}"
    return ["sh", "-c", script], pid, release


def test_only_the_active_region_runs_and_exit_codes_say_why(deployment, tmp_path):
    standby = deployment.lock("eu-west-1", "cron", ["true"])
    assert standby.returncode == NOT_ACTIVE, standby.stderr
    assert "eu-west-1 is not the active region (us-east-1" in standby.stderr, standby.stderr
    assert standby.stderr.startswith(BENIGN_SKIP), standby.stderr

    out = tmp_path / "env"
    active = deployment.lock("us-east-1", "cron", ["sh", "-c", f"env > {out}; exit 7"])
    assert active.returncode == 7, active.stderr
    env = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    generation = deployment.pointer()["generation"]
    assert int(env["SWITCHYARD_LOCK_TOKEN"]) == generation << 32
    assert env["SWITCHYARD_LOCK_NAME"] == "cron"
    assert env["SWITCHYARD_ACTIVE_REGION"] == "us-east-1"
    assert env["SWITCHYARD_GENERATION"] == str(generation)
    # Released at exit: the next run takes it at once with the next token.
    assert deployment.lease("us-east-1", "cron")["expires_at_ms"] == "0"
    again = deployment.lock("us-east-1", "cron", ["sh", "-c", 'echo "$SWITCHYARD_LOCK_TOKEN"'])
    assert again.returncode == 0, again.stderr
    assert int(again.stdout) == (generation << 32) + 1

    nowhere = deployment.lock("us-east-1", "cron", ["true"], controller=f"http://127.0.0.1:{free_port()}")
    assert nowhere.returncode == POINTER_UNKNOWN, nowhere.stderr
    assert "cannot read the active-region pointer" in nowhere.stderr
    # A failure, not a normal skip: the README's crontab filter lets it through to the log.
    assert BENIGN_SKIP not in nowhere.stderr, nowhere.stderr
    assert "switchyard lock: cannot run 'cron': " in nowhere.stderr, nowhere.stderr

    no_table = subprocess.run(deployment.lock_command("us-east-1", "cron", ["true"])[:-2] + ["--table", "missing",
                                                                                               "--", "true"],
                              capture_output=True, text=True, timeout=60)
    assert no_table.returncode == STORE_UNAVAILABLE, no_table.stderr
    assert "the lease table missing does not exist" in no_table.stderr
    assert BENIGN_SKIP not in no_table.stderr, no_table.stderr

    missing = deployment.lock("us-east-1", "cron", ["/nonexistent/program"])
    assert missing.returncode == 127, missing.stderr
    assert "/nonexistent/program" in missing.stderr

    too_short = deployment.lock("us-east-1", "cron", ["true"], ttl_s=1)
    # Bad arguments exit 2 (the README's table), whoever refuses them: clap or lock run.
    assert too_short.returncode == 2 and "--ttl-s 1 is out of range" in too_short.stderr, too_short.stderr
    no_limit = deployment.lock("us-east-1", "cron", ["true"], extra=["--max-run-s", "0"])
    assert no_limit.returncode == 2 and "--max-run-s 0 is out of range" in no_limit.stderr, no_limit.stderr
    # Said as lock run's own lines are, so the README's crontab filter mails them.
    assert too_short.stderr.startswith("switchyard lock: cannot run 'cron': "), too_short.stderr
    no_token = deployment.lock("us-east-1", "cron", ["true"], extra=["--token-file", str(tmp_path / "no.token")])
    assert no_token.returncode == 2, no_token.stderr
    assert no_token.stderr.startswith("switchyard lock: cannot run 'cron': read token file "), no_token.stderr
    assert "--token-file" in no_token.stderr, no_token.stderr
    # A region the lease table does not have is a wrong line, not a standby's normal skip.
    typo = deployment.lock_command("eu-west-1", "cron", ["true"])
    typo[typo.index("--region") + 1] = "eu-west1"
    wrong = subprocess.run(typo, capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2, wrong.stderr
    assert "--region eu-west1 is not one of the lease table's regions (" in wrong.stderr, wrong.stderr
    assert BENIGN_SKIP not in wrong.stderr, wrong.stderr


def test_a_second_holder_is_skipped_while_the_first_runs(deployment, tmp_path):
    job, running, release, token = blocking_job(tmp_path, "first")
    first = deployment.lock_background("us-east-1", "cron", job, tmp_path / "first.log")
    wait_until("the first job to run", running.exists, logs=[tmp_path / "first.log"])

    second = deployment.lock("us-east-1", "cron", ["true"])
    assert second.returncode == LEASE_HELD, second.stderr
    assert "held by" in second.stderr and "in us-east-1" in second.stderr, second.stderr
    assert second.stderr.startswith(BENIGN_SKIP), second.stderr
    # The standby region is skipped by the pointer before it even looks at the lease, and the
    # lease itself has replicated there.
    assert deployment.lock("eu-west-1", "cron", ["true"]).returncode == NOT_ACTIVE
    wait_until("the lease in eu-west-1", lambda: (deployment.lease("eu-west-1", "cron") or {}).get("token")
               == token.read_text().strip())
    # Another lock name is independent.
    assert deployment.lock("us-east-1", "other", ["true"]).returncode == 0

    release.touch()
    assert first.wait(timeout=30) == 0
    third = deployment.lock("us-east-1", "cron", ["sh", "-c", 'echo "$SWITCHYARD_LOCK_TOKEN"'])
    assert third.returncode == 0, third.stderr
    assert int(third.stdout) == int(token.read_text()) + 1


def test_a_killed_holder_takes_its_job_along_and_its_lease_expires(deployment, tmp_path):
    job, running, _release, _token = blocking_job(tmp_path, "killed")
    holder = deployment.lock_background("us-east-1", "cron", job, tmp_path / "killed.log")
    wait_until("the job to run", running.exists, logs=[tmp_path / "killed.log"])
    job_pid = int(running.read_text())
    holder.kill()
    holder.wait(timeout=10)

    def job_gone():
        try:
            os.kill(job_pid, 0)
        except ProcessLookupError:
            return True
        # A zombie (killed, not yet reaped by init) counts as gone.
        return Path(f"/proc/{job_pid}/stat").read_text().split(") ")[1].startswith("Z")

    wait_until("the job to die with its holder", job_gone)

    skipped = deployment.lock("us-east-1", "cron", ["true"])
    assert skipped.returncode == LEASE_HELD, skipped.stderr
    codes = []

    def taken():
        result = deployment.lock("us-east-1", "cron", ["true"])
        codes.append(result.returncode)
        return result.returncode == 0

    wait_until("the crashed holder's lease to expire", taken)
    assert set(codes) <= {LEASE_HELD, 0}, codes


def test_the_pointer_moving_stops_the_job_and_the_other_region_takes_over(deployment, tmp_path):
    job, running, _release, _token = blocking_job(tmp_path, "us")
    holder = deployment.lock_background("us-east-1", "cron", job, tmp_path / "us.log")
    wait_until("the job to run in us-east-1", running.exists, logs=[tmp_path / "us.log"])

    deployment.switchover("eu-west-1")
    overlap = tmp_path / "overlap"
    codes = []

    def eu_ran():
        # The eu-west-1 job records whether the us-east-1 job was still running.
        result = deployment.lock("eu-west-1", "cron", ["sh", "-c", f"if [ -e {running} ]; then touch {overlap}; fi"])
        codes.append(result.returncode)
        return result.returncode == 0

    wait_until("the job to run in eu-west-1", eu_ran, logs=[tmp_path / "us.log"])
    assert set(codes) <= {NOT_ACTIVE, LEASE_HELD, 0}, codes
    assert not overlap.exists(), f"both regions ran the job at once: {codes} {(tmp_path / 'us.log').read_text()}"
    assert holder.wait(timeout=30) == STOPPED
    log = (tmp_path / "us.log").read_text()
    assert "the active region moved to eu-west-1" in log, log
    assert not running.exists()

    # Back in us-east-1 the pointer now skips it.
    assert deployment.lock("us-east-1", "cron", ["true"]).returncode == NOT_ACTIVE


def test_a_frozen_holder_loses_its_lease_to_the_other_region_and_is_fenced(deployment, tmp_path):
    job, running, _release, token = blocking_job(tmp_path, "frozen")
    holder = deployment.lock_background("us-east-1", "cron", job, tmp_path / "frozen.log")
    wait_until("the job to run", running.exists, logs=[tmp_path / "frozen.log"])
    job_pid = int(running.read_text())
    wait_until("the lease in eu-west-1", lambda: (deployment.lease("eu-west-1", "cron") or {}).get("token")
               == token.read_text().strip())
    # Freeze the holder and its job (a VM pause): it can neither renew nor notice the move.
    # The job's process group: the guard `lock run` started (its leader), the job and what it started.
    group = os.getpgid(job_pid)
    os.kill(holder.pid, signal.SIGSTOP)
    os.killpg(group, signal.SIGSTOP)
    deployment.switchover("eu-west-1")

    held = deployment.lock("eu-west-1", "cron", ["true"])
    assert held.returncode == LEASE_HELD, held.stderr
    assert "in us-east-1" in held.stderr, held.stderr
    eu_token = tmp_path / "eu.token"
    codes = []

    def taken():
        result = deployment.lock("eu-west-1", "cron", ["sh", "-c", f'echo "$SWITCHYARD_LOCK_TOKEN" > {eu_token}'])
        codes.append(result.returncode)
        return result.returncode == 0

    wait_until("the frozen lease to expire", taken)
    assert set(codes) <= {LEASE_HELD, 0}, codes
    # The newer generation's token is above the old one.
    assert int(eu_token.read_text()) > int(token.read_text())
    lease = deployment.lease("eu-west-1", "cron")

    # Woken up, the old holder finds the pointer moved, stops its job and leaves the lease alone.
    os.killpg(group, signal.SIGCONT)
    os.kill(holder.pid, signal.SIGCONT)
    assert holder.wait(timeout=30) == STOPPED
    log = (tmp_path / "frozen.log").read_text()
    assert "stopping 'cron'" in log, log
    assert deployment.lease("eu-west-1", "cron")["token"] == lease["token"]


def test_a_holder_frozen_past_its_lease_kills_its_still_running_job_at_once(deployment, tmp_path):
    # Only `lock run` is frozen (SIGSTOP, a stalled process): its job, in a process group of
    # its own, runs on unsupervised. Once the lease expired another holder may run the job, so
    # the woken holder kills it at once, without the SIGTERM grace (which the job's trap shows).
    job, running, _release, token = blocking_job(tmp_path, "alone")
    holder = deployment.lock_background("us-east-1", "cron", job, tmp_path / "alone.log")
    wait_until("the job to run", running.exists, logs=[tmp_path / "alone.log"])
    os.kill(holder.pid, signal.SIGSTOP)
    codes = []

    def taken():
        result = deployment.lock("us-east-1", "cron", ["true"])
        codes.append(result.returncode)
        return result.returncode == 0

    wait_until("the frozen holder's lease to expire and be taken", taken)
    assert set(codes) <= {LEASE_HELD, 0}, codes
    os.kill(holder.pid, signal.SIGCONT)
    assert holder.wait(timeout=30) == STOPPED
    log = (tmp_path / "alone.log").read_text()
    assert "killing the command at once" in log, log
    assert running.exists(), "SIGKILL, not SIGTERM: the job's TERM trap never ran"
    pid = int(running.read_text())
    wait_until("the job to be gone", lambda: not Path(f"/proc/{pid}").exists() or
               Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z")


def test_the_lease_is_held_while_the_jobs_background_processes_run(deployment, tmp_path):
    # The job exits at once (status 7) and leaves a process in the background, as Magento's
    # cron:run does: the lease stays held, and renewed, until that process is gone too.
    job, bg_pid, release = background_job(tmp_path, "magento", leader_status=7)
    log = tmp_path / "magento.log"
    holder = deployment.lock_background("us-east-1", "cron", job, log)
    wait_until("the background process to run", bg_pid.exists, logs=[log])
    pid = int(bg_pid.read_text())
    token = deployment.lease("us-east-1", "cron")["token"]
    ran = tmp_path / "second.ran"
    expiry = deployment.lease("us-east-1", "cron")["expires_at_ms"]
    # Four renewals (every third of the TTL), longer than the TTL, all after the leader exited.
    for _ in range(4):
        assert expiry != "0", f"the lease was released while the job still ran: {log.read_text()}"
        wait_until("a renewal", lambda: deployment.lease("us-east-1", "cron")["expires_at_ms"] != expiry,
                   deadline_s=TTL_S * 2, logs=[log])
        expiry = deployment.lease("us-east-1", "cron")["expires_at_ms"]
        assert holder.poll() is None, log.read_text()
        assert alive(pid)
        second = deployment.lock("us-east-1", "cron", ["touch", str(ran)])
        assert second.returncode == LEASE_HELD, f"{second.returncode} {second.stderr} {log.read_text()}"
    assert not ran.exists(), "a second holder ran while the first job's background process ran"
    assert deployment.lease("us-east-1", "cron")["token"] == token

    release.touch()
    # The leader's status, once everything it started is gone; then the lease is free.
    assert holder.wait(timeout=30) == 7, log.read_text()
    assert not alive(pid)
    assert deployment.lease("us-east-1", "cron")["expires_at_ms"] == "0"
    assert deployment.lock("us-east-1", "cron", ["true"]).returncode == 0


def test_the_pointer_moving_stops_the_background_processes_too(deployment, tmp_path):
    job, bg_pid, _release = background_job(tmp_path, "moved")
    log = tmp_path / "moved.log"
    holder = deployment.lock_background("us-east-1", "cron", job, log)
    wait_until("the background process to run", bg_pid.exists, logs=[log])
    pid = int(bg_pid.read_text())
    deployment.switchover("eu-west-1")
    # Fenced as the job itself would be: the renewal sees the move and stops the process group.
    assert holder.wait(timeout=30) == STOPPED, log.read_text()
    assert "the active region moved to eu-west-1" in log.read_text()
    assert not alive(pid), "the background process outlived its lease"


def test_a_killed_holder_takes_the_jobs_background_processes_along(deployment, tmp_path):
    job, bg_pid, _release = background_job(tmp_path, "orphan")
    log = tmp_path / "orphan.log"
    holder = deployment.lock_background("us-east-1", "cron", job, log)
    wait_until("the background process to run", bg_pid.exists, logs=[log])
    pid = int(bg_pid.read_text())
    assert alive(pid)
    holder.kill()
    holder.wait(timeout=10)
    # Within a bound well below the TTL, so it never overlaps the next holder.
    wait_until("the background process to die with its holder", lambda: not alive(pid), deadline_s=3, logs=[log])


def test_max_run_stops_a_hung_job_and_releases_the_lease_once_it_is_gone(deployment, tmp_path):
    # A hung job that ignores SIGTERM, with a background process that ignores it too.
    job, bg_pid, _release = background_job(tmp_path, "hung", ignore_term=True)
    hung = ["sh", "-c", f"trap '' TERM; ({job[2]}); while true; do sleep 0.05; done"]
    log = tmp_path / "hung.log"
    holder = deployment.lock_background("us-east-1", "cron", hung, log, extra=["--max-run-s", "2"])
    wait_until("the background process to run", bg_pid.exists, logs=[log])
    pid = int(bg_pid.read_text())
    assert holder.wait(timeout=30) == MAX_RUN, log.read_text()
    text = log.read_text()
    assert "ran longer than --max-run-s 2" in text, text
    # SIGKILL after the grace reached the background process; the lease was released only then.
    assert not alive(pid), text
    assert deployment.lease("us-east-1", "cron")["expires_at_ms"] == "0"
    assert deployment.lock("us-east-1", "cron", ["true"]).returncode == 0


def setsid_job(tmp, tag):
    """A job that starts `setsid sh -c '... sleep 1000'` in the background (its own session and
    process group: a signal to the job's process group misses it) and then runs until stopped.
    Returns the command and the files where the leader and the escaped process write their pids."""
    leader, escaped = tmp / f"{tag}.leader.pid", tmp / f"{tag}.setsid.pid"
    inner = f"echo \\$$ > {escaped}.tmp; mv {escaped}.tmp {escaped}; exec sleep 1000"
    script = f"setsid sh -c \"{inner}\" >/dev/null 2>&1 & echo $$ > {leader}; while :; do sleep 0.05; done"
    return ["sh", "-c", script], leader, escaped


# A daemon as `daemon(3)` makes one: fork (the parent exits), setsid, fork again (the session
# leader exits), so the daemon's parent is gone and it is in a session of its own.
DAEMON = """
import os, sys
if os.fork():
    sys.exit(0)
os.setsid()
if os.fork():
    os._exit(0)
pid_file = sys.argv[1]
with open(pid_file + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(pid_file + ".tmp", pid_file)
devnull = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(devnull, fd)
os.execvp("sleep", ["sleep", "1000"])
"""


def daemon_job(tmp, tag):
    """A job that double-forks a daemon and exits 0 at once; the daemon writes its pid."""
    pid = tmp / f"{tag}.daemon.pid"
    return [sys.executable, "-c", DAEMON, str(pid)], pid


def escaped(pid, holder):
    """The process left the holder's session and the job's process group (the guard's)."""
    return os.getsid(pid) != os.getsid(holder.pid) and os.getpgid(pid) != holder_group(holder)


def holder_group(holder):
    """The job's process group: its leader is the guard, `lock run`'s only child."""
    children = Path(f"/proc/{holder.pid}/task/{holder.pid}/children")
    if children.exists():
        return int(children.read_text().split()[0])
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == holder.pid:
            return int(stat.parent.name)
    raise AssertionError(f"lock run (pid {holder.pid}) has no child")


def test_a_setsid_process_is_stopped_when_the_lease_is_lost(deployment, tmp_path):
    job, leader, escaped_pid = setsid_job(tmp_path, "lost")
    log = tmp_path / "lost.log"
    holder = deployment.lock_background("us-east-1", "cron", job, log)
    wait_until("the setsid'ed process to run", escaped_pid.exists, logs=[log])
    pid = deployment.track(int(escaped_pid.read_text()))
    assert escaped(pid, holder), "the test's process did not leave the job's session and group"
    # Another holder's record replaces this run's: its next renewal finds the lease lost.
    deployment.client("us-east-1").put_item(TableName=TABLE, Item={
        "name": {"S": "cron"}, "holder": {"S": "intruder:1:0"}, "region": {"S": "us-east-1"},
        "token": {"N": str(1 << 62)}, "generation": {"N": "1"}, "expires_at_ms": {"N": str(2 ** 53)}})
    assert holder.wait(timeout=30) == STOPPED, log.read_text()
    text = log.read_text()
    assert "the lease was lost" in text, text
    wait_until("the setsid'ed process to be stopped with the job", lambda: not alive(pid), logs=[log])
    assert not alive(int(leader.read_text()))
    # A lost lease is never released: the other holder's record stays.
    assert deployment.lease("us-east-1", "cron")["holder"] == "intruder:1:0"


def test_a_double_forked_daemon_keeps_the_lease_and_is_stopped_on_sigterm(deployment, tmp_path):
    job, daemon_pid = daemon_job(tmp_path, "daemon")
    log = tmp_path / "daemon.log"
    holder = deployment.lock_background("us-east-1", "cron", job, log)
    wait_until("the daemon to run", daemon_pid.exists, logs=[log])
    pid = deployment.track(int(daemon_pid.read_text()))
    assert escaped(pid, holder), "the daemon did not leave the job's session and group"
    # The job itself exited at once; the daemon runs under the lease.
    held = deployment.lock("us-east-1", "cron", ["true"])
    assert held.returncode == LEASE_HELD, held.stderr
    os.kill(holder.pid, signal.SIGTERM)
    # The job's own status (0) once everything it started is gone; then the lease is released.
    assert holder.wait(timeout=30) == 0, log.read_text()
    assert "SIGTERM: stopping 'cron'" in log.read_text()
    wait_until("the daemon to be stopped", lambda: not alive(pid), logs=[log])
    assert deployment.lease("us-east-1", "cron")["expires_at_ms"] == "0"


def test_a_killed_holder_takes_the_setsid_process_and_the_daemon_along(deployment, tmp_path):
    job, _leader, escaped_pid = setsid_job(tmp_path, "orphaned")
    _daemon, daemon_pid = daemon_job(tmp_path, "orphaned")
    both = ["sh", "-c", f"'{sys.executable}' -c '{DAEMON}' {daemon_pid}; exec \"$@\"", "sh", *job]
    log = tmp_path / "orphaned.log"
    holder = deployment.lock_background("us-east-1", "cron", both, log)
    wait_until("the setsid'ed process and the daemon to run", lambda: escaped_pid.exists() and daemon_pid.exists(),
               logs=[log])
    pids = [deployment.track(int(escaped_pid.read_text())), deployment.track(int(daemon_pid.read_text()))]
    assert all(escaped(pid, holder) for pid in pids)
    holder.kill()
    holder.wait(timeout=10)
    # The guard kills every process of the job, wherever its session: within a bound well below
    # the TTL, so nothing of it overlaps the next holder.
    wait_until("the escaped processes to die with their holder", lambda: not any(alive(pid) for pid in pids),
               deadline_s=3, logs=[log])


def test_a_killed_guard_leaves_nothing_running_and_the_lease_is_released_only_after(deployment, tmp_path):
    job, leader, escaped_pid = setsid_job(tmp_path, "guard")
    log = tmp_path / "guard.log"
    holder = deployment.lock_background("us-east-1", "cron", job, log)
    wait_until("the setsid'ed process to run", lambda: escaped_pid.exists() and leader.exists(), logs=[log])
    pids = [deployment.track(int(leader.read_text())), deployment.track(int(escaped_pid.read_text()))]
    guard = holder_group(holder)
    assert os.getpgid(pids[0]) == guard, "the job's leader runs in the guard's process group"
    assert escaped(pids[1], holder)
    os.kill(guard, signal.SIGKILL)
    # Its orphans came to `lock run` (a subreaper too), which stops them all and only then lets
    # the lease go.
    assert holder.wait(timeout=30) == STOPPED, log.read_text()
    text = log.read_text()
    assert "its guard (lock exec-guard) was killed by signal 9" in text, text
    assert not any(alive(pid) for pid in pids), text
    assert deployment.lease("us-east-1", "cron")["expires_at_ms"] == "0"
    assert deployment.lock("us-east-1", "cron", ["true"]).returncode == 0


def test_the_first_run_after_the_pointer_moves_says_that_it_waits_and_why(deployment, tmp_path):
    handoff = "switchyard lock: 'handoff': hand-off: waiting "
    # A name never taken: no record has reached this store, so this is a hand-off too. With
    # --ttl-s 5 and --kill-grace-s 1: a third of 5 s + 1 s + 1 s + 1 s.
    first = deployment.lock("us-east-1", "handoff", ["echo", "the job's output"])
    assert first.returncode == 0, first.stderr
    # stdout is the job's alone; the notice is one line on stderr.
    assert first.stdout == "the job's output\n", first.stdout
    lines = first.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(handoff + "4.7 s before starting the command"), first.stderr
    assert "no lease record has reached this store yet" in lines[0], first.stderr
    assert "later runs under generation" in lines[0], first.stderr
    # Under the same generation: no hand-off, nothing said.
    again = deployment.lock("us-east-1", "handoff", ["true"])
    assert again.returncode == 0 and again.stderr == "", again.stderr

    generation = deployment.pointer()["generation"]
    wait_until("the lease in eu-west-1", lambda: (deployment.lease("eu-west-1", "handoff") or {}).get("expires_at_ms")
               == "0")
    deployment.switchover("eu-west-1")
    moved = deployment.pointer()["generation"]
    assert moved > generation
    after = deployment.lock("eu-west-1", "handoff", ["echo", "ran in eu-west-1"])
    assert after.returncode == 0, after.stderr
    assert after.stdout == "ran in eu-west-1\n", after.stdout
    assert after.stderr.count("hand-off") == 1, after.stderr
    assert after.stderr.startswith(handoff), after.stderr
    assert f"last taken under pointer generation {generation}, the pointer is now at {moved}" in after.stderr, \
        after.stderr


def test_sigterm_during_the_hand_off_wait_releases_the_lease_and_runs_nothing(deployment, tmp_path):
    # A name never taken: a hand-off, so `lock run` writes its lease, then waits seconds before
    # it starts the command. A stop then (cron's timeout, a shutdown) must release the lease:
    # killed outright, it would leave the lease to block every region until it expired.
    ran = tmp_path / "ran"
    log = tmp_path / "lock.log"
    holder = deployment.lock_background("us-east-1", "stopped-early", ["touch", str(ran)], log)
    wait_until("the hand-off notice", lambda: "hand-off: waiting" in log.read_text(), logs=[log])
    lease = deployment.lease("us-east-1", "stopped-early")
    assert lease is not None and lease["expires_at_ms"] != "0", lease
    holder.send_signal(signal.SIGTERM)
    assert holder.wait(timeout=30) == 128 + signal.SIGTERM, log.read_text()
    assert "SIGTERM before the command started: lease released, the command did not run" in log.read_text()
    assert not ran.exists()
    assert deployment.lease("us-east-1", "stopped-early")["expires_at_ms"] == "0"
    # Taken at once by the next run (the release is a write under the same generation).
    after = deployment.lock("us-east-1", "stopped-early", ["touch", str(ran)])
    assert after.returncode == 0, after.stderr
    assert ran.exists()


# Starts the command in its arguments and appends a line to the file in its first for each
# SIGTERM, which it otherwise ignores.
COUNT_TERMS = """
import signal, subprocess, sys, time
def count(_signal, _frame):
    with open(sys.argv[1], "a") as f:
        f.write("TERM\\n")
signal.signal(signal.SIGTERM, count)
subprocess.Popen(sys.argv[2:])
while True:
    time.sleep(0.05)
"""


def test_a_stop_sends_sigterm_once_and_leaves_processes_it_did_not_start_alone(deployment, tmp_path):
    # The job counts the SIGTERMs it gets (a second one is, to many programs, the order to quit
    # without cleaning up) and leaves a setsid'ed process; `lock run` is started the way a
    # wrapper that forked before its `exec` starts it, so it has a child that is not the job's.
    terms = tmp_path / "terms"
    job, _leader, escaped_pid = setsid_job(tmp_path, "once")
    # Python runs its handler at once, so a second SIGTERM a moment later is seen as one more
    # (a shell's trap would merge them).
    counting = [sys.executable, "-c", COUNT_TERMS, str(terms), *job]
    inherited_pid = tmp_path / "inherited.pid"
    command = shlex.join(deployment.lock_command("us-east-1", "cron", counting))
    log = tmp_path / "once.log"
    holder = subprocess.Popen(["sh", "-c", f"sleep 1000 & echo $! > {inherited_pid}; exec {command}"],
                              stdout=subprocess.DEVNULL, stderr=open(log, "ab"), start_new_session=True)
    deployment.processes.append(holder)
    wait_until("the setsid'ed process to run", lambda: escaped_pid.exists() and inherited_pid.exists(), logs=[log])
    pid = deployment.track(int(escaped_pid.read_text()))
    inherited = deployment.track(int(inherited_pid.read_text()))
    os.kill(holder.pid, signal.SIGTERM)
    # The job's TERM trap does not exit: SIGKILL after the grace ends it (128 + 9).
    assert holder.wait(timeout=30) == 137, log.read_text()
    assert not alive(pid), log.read_text()
    assert terms.read_text().splitlines() == ["TERM"], "the job got SIGTERM more than once"
    assert alive(inherited), "lock run stopped a process it did not start"


def test_a_grandchild_lock_run_inherited_is_not_taken_for_the_jobs_when_its_parent_ends(deployment, tmp_path):
    # A wrapper forked a child before it exec'd `lock run`, and that child started a process of
    # its own (here `sleep 1000`). The child ends once the job runs: its process is reparented
    # to `lock run` (a subreaper), which must not take it for the job's — neither wait for it
    # with the lease held nor stop it.
    grandchild_pid, fifo = tmp_path / "grandchild.pid", tmp_path / "go"
    os.mkfifo(fifo)
    job = ["sh", "-c", f"echo go > {fifo}"]
    command = shlex.join(deployment.lock_command("us-east-1", "cron", job))
    log = tmp_path / "inherited.log"
    child = (f"(sleep 1000 & echo $! > {grandchild_pid}.tmp; mv {grandchild_pid}.tmp {grandchild_pid}; "
             f"read _ < {fifo})")
    holder = subprocess.Popen(
        ["sh", "-c", f"{child} & while [ ! -e {grandchild_pid} ]; do sleep 0.01; done; exec {command}"],
        stdout=subprocess.DEVNULL, stderr=open(log, "ab"), start_new_session=True)
    deployment.processes.append(holder)
    wait_until("the inherited grandchild to run", grandchild_pid.exists, logs=[log])
    grandchild = deployment.track(int(grandchild_pid.read_text()))
    try:
        status = holder.wait(timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"lock run still waits after its job ended: {log.read_text()}") from None
    assert status == 0, log.read_text()
    assert alive(grandchild), "lock run stopped a process it did not start"
