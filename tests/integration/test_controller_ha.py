"""Several controllers on a real etcd (`[controller.ha]`): one leads, the others follow and name
it; killing the leader mid-runbook hands the runbook to another member, which rolls it forward
with a higher generation; a frozen old leader (a partition in time: SIGSTOP) stops acting when it
wakes up, and the DNS server refuses its generation."""

import base64
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from harness import (BINARY, TOKEN, App, QuietHandler, Served, complete_jsonl, controller_toml, failover_zone_toml,
                     free_port, start_controller, stop_all, two_regions_toml, wait_until)
from test_dns import DnsServer
from test_fault_proxy import FaultProxy
from test_providers_cloudalerts import ROUTING_KEY, Receivers

ETCD = shutil.which("etcd")
LEASE_MS = 2000
START_DEADLINE_S = 30
# Generous liveness bounds (not timing assertions): the figures go in BENCHMARKS.md.
TAKEOVER_DEADLINE_S = 30

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]

DNS_CONFIG = "\n[dns]" + failover_zone_toml("serial = 2026112401\nminimum = 30")


class Etcd:
    """An etcd cluster of `size` members from Debian's etcd-server, on free loopback ports."""

    def __init__(self, workdir, size=1, extra=()):
        names = [f"e{i}" for i in range(size)]
        ports = {name: (free_port(), free_port()) for name in names}
        cluster = ",".join(f"{name}=http://127.0.0.1:{ports[name][1]}" for name in names)
        self.urls = [f"http://127.0.0.1:{ports[name][0]}" for name in names]
        self.url = self.urls[0]
        self.client_port = ports[names[0]][0]
        self.log = workdir / "etcd.log"
        self.processes = []
        self.commands = []
        for name in names:
            client, peer = f"http://127.0.0.1:{ports[name][0]}", f"http://127.0.0.1:{ports[name][1]}"
            self.commands.append(
                [ETCD, "--name", name, "--data-dir", str(workdir / f"etcd-{name}"),
                 "--listen-client-urls", client, "--advertise-client-urls", client,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", cluster, "--initial-cluster-state", "new",
                 "--initial-cluster-token", "switchyard-test", *extra])
            self.processes.append(subprocess.Popen(self.commands[-1], stdout=subprocess.DEVNULL,
                                                   stderr=open(self.log, "ab")))
        self.wait_healthy()

    def wait_healthy(self):
        def healthy(url):
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as response:
                    return json.loads(response.read()).get("health") == "true"
            except OSError:
                return False

        def all_healthy():
            assert all(p.poll() is None for p in self.processes), self.log.read_text()[-2000:]
            return all(healthy(url) for url in self.urls)

        wait_until("etcd to be healthy", all_healthy, START_DEADLINE_S, [self.log])

    def kill(self, index):
        self.processes[index].kill()
        self.processes[index].wait(timeout=10)

    def restart(self, index):
        """Kills member `index` and starts it again on its data: its in-memory state (the auth
        tokens it issued) is gone."""
        self.kill(index)
        self.processes[index] = subprocess.Popen(self.commands[index], stdout=subprocess.DEVNULL,
                                                 stderr=open(self.log, "ab"))
        self.wait_healthy()

    def enable_auth(self, password):
        """Creates the user root with `password` and turns etcd's authentication on (through
        its JSON gateway)."""
        for path, body in (("/v3/auth/user/add", {"name": "root", "password": password}),
                           ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
                           ("/v3/auth/enable", {})):
            self.call(path, body)

    def call(self, path, body, token=None):
        """One request to etcd's JSON gateway; raises HTTPError when refused."""
        headers = {"Content-Type": "application/json", **({"Authorization": token} if token else {})}
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST", headers=headers)
        with urllib.request.urlopen(req, timeout=5) as response:
            return json.loads(response.read())

    def stop(self):
        stop_all(self.processes)


def config_text(us, eu, workdir, member, etcd_urls, dns_admin, vantages=("controller", "probe")):
    # The audit log in the file is overridden by --audit-log where given. "probe" is an agent the
    # test plays; one vote decides, so the controller's own checks suffice.
    return controller_toml(f"{workdir}/audit-{member}.jsonl", vantages,
                           policy="min_hold_ms = 600000\nrunbook_retry_ms = 200", quorum="quorum = 1") + f"""
[controller.ha]
etcd = {json.dumps(etcd_urls)}
member = "{member}"
lease_ms = {LEASE_MS}
prefix = "/switchyard/test"
""" + two_regions_toml(us.port, eu.port) + f"""
[dns]
admin_url = "{dns_admin}"

[[runbook]]
name = "record"
kind = "command"
program = "sh"
args = ["-c", "echo \\"$SWITCHYARD_GENERATION $SWITCHYARD_TO {member}\\" >> {workdir}/record.log"]

# Holds the runbook while the file `hold` exists: the test kills or freezes the leader here.
[[runbook]]
name = "hold"
kind = "command"
program = "sh"
args = ["-c", "while [ -f {workdir}/hold ]; do sleep 0.05; done; echo \\"$SWITCHYARD_GENERATION {member}\\" >> {workdir}/held.log"]
timeout_ms = 120000
retries = 0

[[runbook]]
name = "dns"
kind = "dns_health"

[[runbook]]
name = "pointer"
kind = "pointer"
"""


def request(url, path, method="GET", body=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json",
                                          **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=5) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")
    except OSError:
        return None, {}


class Group:
    def __init__(self, tmp_path, etcd_size=1, etcd_extra=()):
        self.tmp = tmp_path
        self.us, self.eu = App(), App()
        self.etcd = Etcd(tmp_path, etcd_size, etcd_extra)
        (tmp_path / "dns-dir").mkdir()
        self.dns = DnsServer(tmp_path / "dns-dir", DNS_CONFIG, token=TOKEN)
        self.dns.start()
        self.members = {}

    def start(self, member, etcd_url=None, shared=False, vantages=("controller", "probe"), extra=(), ha_extra="",
              env_extra=None, tick_ms=None, config_extra=""):
        """Starts `member` with a file of its own, or (`shared`) with one file for the whole
        group and `--member`/`--audit-log` on the command line. `ha_extra` goes into its
        `[controller.ha]`; `config_extra` (tables such as `[[alerts]]`) at the end of its file."""
        extra = list(extra)
        if shared:
            config = self.tmp / "group.toml"
            if not config.exists():
                config.write_text(config_text(self.us, self.eu, self.tmp, "group", self.etcd.urls, self.dns.admin,
                                              vantages))
            extra += ["--member", member, "--audit-log", str(self.tmp / f"audit-{member}.jsonl")]
        else:
            config = self.tmp / f"{member}.toml"
            text = config_text(self.us, self.eu, self.tmp, member, [etcd_url or self.etcd.url], self.dns.admin)
            text = text.replace('prefix = "/switchyard/test"\n', 'prefix = "/switchyard/test"\n' + ha_extra, 1)
            if tick_ms is not None:
                text = text.replace("tick_ms = 50\n", f"tick_ms = {tick_ms}\n", 1)
            config.write_text(text + config_extra)
        env = dict(os.environ, SWITCHYARD_CONTROL_TOKEN=TOKEN, SWITCHYARD_LOG="info", **(env_extra or {}))
        self.members[member] = start_controller(config, self.tmp, env=env, args=extra, deadline_s=START_DEADLINE_S,
                                                name=member)

    def logs(self):
        return [log for _, _, log in self.members.values()] + [self.etcd.log]

    def status(self, member):
        status, body = request(self.members[member][1], "/v1/status")
        return body if status == 200 else None

    def leader(self, among=None):
        """The one member that says it acts, once every other live member names it."""
        names = among or [m for m, (p, _, _) in self.members.items() if p.poll() is None]
        statuses = {m: self.status(m) for m in names}
        if any(s is None for s in statuses.values()):
            return None
        acting = [m for m, s in statuses.items() if s["ha"]["acting"]]
        if len(acting) != 1:
            return None
        leader = acting[0]
        if all((s["ha"]["leader"] or {}).get("member") == leader for s in statuses.values()):
            return leader
        return None

    def record(self):
        path = self.tmp / "record.log"
        lines = path.read_text().splitlines() if path.exists() else []
        return [(int(g), to, member) for g, to, member in (line.split() for line in lines)]

    def stop(self):
        for process, _, _ in self.members.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
                process.wait(timeout=10)
        try:
            self.dns.stop()
        except Exception:
            pass
        self.etcd.stop()
        for app in (self.us, self.eu):
            try:
                app.stop()
            except Exception:
                pass


@pytest.fixture
def group(tmp_path):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built (cargo build -p switchyard)")
    if ETCD is None:
        pytest.skip("etcd is not installed (Debian package etcd-server; scripts/install-test-deps.sh installs it)")
    group = Group(tmp_path)
    yield group
    group.stop()


def placed(group, member, region):
    """Etcd (as `member` last read it) records `region` as placed, with no runbook in progress."""
    shared = ((group.status(member) or {}).get("ha") or {}).get("shared") or {}
    return (shared.get("observed") or {}).get("active") == region and shared.get("runbook") is None


def dns_generation(group):
    return json.loads(group.dns.get("/v1/health"))["generation"]


def test_killing_the_leader_mid_runbook_hands_it_to_another_member(group):
    for member in ("c1", "c2", "c3"):
        group.start(member)
    first = wait_until("one leader named by every member", group.leader, TAKEOVER_DEADLINE_S, group.logs())
    # The first placement is applied by the leader only.
    wait_until("the initial placement", lambda: placed(group, first, "us-east-1"), logs=group.logs())
    assert {m for _, _, m in group.record()} == {first}
    followers = [m for m in group.members if m != first]

    # A follower passes operator commands on to the leader, with the caller's token.
    status, body = request(group.members[followers[0]][1], "/v1/pause", "POST")
    assert status == 200 and body["accepted"], body
    assert body["forwarded_to"]["member"] == first
    assert group.status(first)["engine"]["paused"] is True
    # ... once only: a command another member already passed on is refused, naming the leader.
    status, body = request(group.members[followers[1]][1], "/v1/resume", "POST",
                           headers={"X-Switchyard-Forwarded-By": followers[0]})
    assert status == 421, body
    assert body["code"] == "not_leader"
    assert body["leader"]["member"] == first
    assert group.members[first][1] in body["error"]
    assert group.status(first)["engine"]["paused"] is True
    # The CLI, pointed at a follower, gets its command to the leader and says so.
    resumed = subprocess.run([str(BINARY), "resume", "--controller", group.members[followers[1]][1]],
                             env=dict(os.environ, SWITCHYARD_CONTROL_TOKEN=TOKEN), capture_output=True, text=True,
                             timeout=30)
    assert resumed.returncode == 0, resumed.stderr
    assert f"passed on to the leader {first} at {group.members[first][1]}" in resumed.stderr, resumed.stderr
    assert group.status(first)["engine"]["paused"] is False
    # Given every member (--controller URL,URL) with the first one down, the CLI asks the next:
    # the command never left, so it cannot act twice.
    down = f"http://127.0.0.1:{free_port()}"
    for command, paused in (("pause", True), ("resume", False)):
        sent = subprocess.run([str(BINARY), command, "--controller", f"{down},{group.members[followers[1]][1]}"],
                              env=dict(os.environ, SWITCHYARD_CONTROL_TOKEN=TOKEN), capture_output=True, text=True,
                              timeout=30)
        assert sent.returncode == 0, sent.stderr
        assert f"answered by {group.members[followers[1]][1]}" in sent.stderr and down in sent.stderr, sent.stderr
        assert group.status(first)["engine"]["paused"] is paused
    # An agent may report to any member: a follower passes the report on to the leader.
    report = {"vantage": "probe", "sent_at_ms": int(time.time() * 1000), "results": []}
    status, body = request(group.members[followers[1]][1], "/v1/agent/report", "POST", report)
    assert status == 204, body

    def probe_fresh_at_leader():
        vantages = (group.status(first) or {}).get("vantages") or []
        return any(v["name"] == "probe" and v["fresh"] for v in vantages)

    wait_until("the forwarded report at the leader", probe_fresh_at_leader, logs=group.logs())
    # The CLI shows who leads.
    shown = subprocess.run([str(BINARY), "status", "--controller", group.members[followers[0]][1]],
                           env=dict(os.environ, SWITCHYARD_CONTROL_TOKEN=TOKEN), capture_output=True, text=True,
                           timeout=30)
    assert f"leader: {first} at {group.members[first][1]}" in shown.stdout, shown.stdout

    # Fail over, and hold the runbook after its first step; kill -9 the leader there.
    (group.tmp / "hold").write_text("")
    group.us.stop()
    wait_until("the failover to start", lambda: any(to == "eu-west-1" for _, to, _ in group.record()),
               logs=group.logs())
    started = [g for g, to, m in group.record() if to == "eu-west-1"]
    assert len(started) == 1
    old_generation = started[0]
    # The leader records the step in etcd before the next one (the held one) starts.
    wait_until("etcd to record the first step as done", lambda: "record" in (
        ((group.status(first) or {}).get("ha", {}).get("shared") or {}).get("runbook") or {}).get("steps_done", []),
        logs=group.logs())
    process = group.members[first][0]
    process.kill()
    process.wait(timeout=10)
    (group.tmp / "hold").unlink()

    second = wait_until("another member to lead", lambda: group.leader(followers), TAKEOVER_DEADLINE_S, group.logs())
    assert second != first
    # The new leader rolls the runbook forward with a higher generation and completes it. The
    # first step, which the old leader applied and etcd recorded, is not applied again.
    wait_until("the roll-forward to reach DNS", lambda: dns_generation(group) > old_generation, logs=group.logs())
    rolled_generation = dns_generation(group)
    assert [g for g, to, _ in group.record() if to == "eu-west-1"] == [old_generation], group.record()
    second_audit = [json.loads(line) for line in (group.tmp / f"audit-{second}.jsonl").read_text().splitlines()]
    steps = {(r["step"], r["outcome"]): r for r in second_audit
             if r.get("kind") == "step" and r["generation"] == rolled_generation}
    assert f"applied under generation {old_generation}" in steps[("record", "skipped")]["detail"], steps
    assert ("dns", "ok") in steps and ("pointer", "ok") in steps, steps
    status = group.status(second)
    wait_until("the pointer on every member", lambda: all(
        (group.status(m) or {}).get("pointer", {}).get("region") == "eu-west-1" for m in followers),
        logs=group.logs())
    assert status["ha"]["shared"]["generation"] >= rolled_generation
    # Generations never went back: each record line is above the one before.
    generations = [g for g, _, _ in group.record()]
    assert generations == sorted(generations) and len(set(generations)) == len(generations), generations
    # The surviving follower names the new leader and shows the placement etcd records.
    third = [m for m in followers if m != second][0]
    wait_until("the follower to show the new placement", lambda: (group.status(third) or {}).get("engine", {}).get(
        "observed", {}) == {"active": "eu-west-1", "serving": ["eu-west-1"]}, logs=group.logs())
    assert group.status(third)["ha"]["leader"]["member"] == second
    audit = (group.tmp / f"audit-{second}.jsonl").read_text()
    assert '"event":"leading"' in audit


def test_a_command_the_frozen_leader_took_but_did_not_answer_is_not_sent_again(group):
    # A follower passes the command on; the leader, frozen (SIGSTOP), takes the connection but
    # does not answer. The command may yet be acted on when it wakes, so the follower answers
    # 504 forward_outcome_unknown, not 421 (which tells the CLI to send it to the leader again).
    for member in ("c1", "c2"):
        group.start(member)
    first = wait_until("one leader", group.leader, TAKEOVER_DEADLINE_S, group.logs())
    other = [m for m in group.members if m != first][0]
    wait_until("the follower to know the leader", lambda: ((group.status(other) or {}).get("ha") or {}).get(
        "leader", {}).get("member") == first, TAKEOVER_DEADLINE_S, group.logs())
    process = group.members[first][0]
    process.send_signal(signal.SIGSTOP)
    try:
        sent = subprocess.run([str(BINARY), "pause", "--controller", group.members[other][1]],
                              env=dict(os.environ, SWITCHYARD_CONTROL_TOKEN=TOKEN), capture_output=True, text=True,
                              timeout=60)
    finally:
        process.send_signal(signal.SIGCONT)
    assert sent.returncode != 0, sent.stdout
    assert "HTTP 504" in sent.stderr and "may or may not take it" in sent.stderr, sent.stderr
    assert "sending the command to the leader" not in sent.stderr, sent.stderr


def test_a_frozen_leader_stops_acting_when_it_wakes_and_dns_refuses_its_generation(group):
    for member in ("c1", "c2"):
        group.start(member)
    first = wait_until("one leader", group.leader, TAKEOVER_DEADLINE_S, group.logs())
    wait_until("the initial placement in DNS", lambda: dns_generation(group) > 0, logs=group.logs())
    (group.tmp / "hold").write_text("")
    group.us.stop()
    wait_until("the failover to start", lambda: any(to == "eu-west-1" for _, to, _ in group.record()),
               logs=group.logs())
    old_generation = [g for g, to, _ in group.record() if to == "eu-west-1"][0]
    # Freeze the leader inside the held step (a long GC pause or a partition in time).
    process = group.members[first][0]
    process.send_signal(signal.SIGSTOP)
    (group.tmp / "hold").unlink()
    other = [m for m in group.members if m != first][0]
    wait_until("the other member to lead", lambda: group.leader([other]), TAKEOVER_DEADLINE_S, group.logs())
    wait_until("the roll-forward to reach DNS", lambda: dns_generation(group) > old_generation, logs=group.logs())
    new_generation = dns_generation(group)

    # The old leader wakes up (inside the held step, or inside the guard before it): it must
    # not run the DNS step.
    process.send_signal(signal.SIGCONT)
    def follows():
        ha = (group.status(first) or {}).get("ha") or {}
        return ha.get("role") == "follower" and (ha.get("leader") or {}).get("member") == other

    wait_until("the old leader to follow", follows, TAKEOVER_DEADLINE_S, group.logs())
    audit = [json.loads(line) for line in (group.tmp / f"audit-{first}.jsonl").read_text().splitlines()]
    late = [r for r in audit if r.get("kind") == "step" and r["generation"] == old_generation
            and r["step"] in ("dns", "pointer") and r["outcome"] == "ok"]
    assert late == [], late
    assert dns_generation(group) == new_generation
    # And had its push been in flight, DNS refuses the old generation.
    status, body = group.dns.put("/v1/health", {"generation": old_generation,
                                                "targets": {"us-east-1": "healthy", "eu-west-1": "unhealthy"}})
    assert status == 409, body
    stepped = [r for r in audit if r.get("kind") == "leadership" and r["event"] == "stepped_down"]
    assert stepped, "the old leader recorded that it stopped acting"


def test_a_leader_cut_from_etcd_stops_acting_and_the_other_member_fails_over(group, tmp_path):
    # Each member reaches etcd through its own link in a fault proxy; both see the regions.
    ports = {member: free_port() for member in ("c1", "c2")}
    (tmp_path / "fp").mkdir()
    proxy = FaultProxy(tmp_path / "fp", *[arg for member, port in ports.items() for arg in
                                          ("--proxy", f"etcd-{member}=127.0.0.1:{port}=127.0.0.1:{group.etcd.client_port}")])
    try:
        for member, port in ports.items():
            group.start(member, etcd_url=f"http://127.0.0.1:{port}")
        first = wait_until("one leader", group.leader, TAKEOVER_DEADLINE_S, group.logs())
        other = [m for m in ports if m != first][0]

        # (Cut before the initial runbook is recorded as done, the other member would roll it
        # forward first, as it should.)
        wait_until("the initial placement recorded in etcd", lambda: placed(group, first, "us-east-1"),
                   logs=group.logs())
        # Blackhole the leader's link to etcd, both ways.
        for stream in ("upstream", "downstream"):
            status, body = proxy.call("POST", f"/proxies/etcd-{first}/toxics",
                                      {"type": "timeout", "stream": stream, "attributes": {"timeout": 0}})
            assert status == 200, body

        def cut_off():
            health = request(group.members[first][1], "/health")[1]
            return health.get("status") == "degraded" and health["ha"]["acting"] is False

        wait_until("the cut leader to stop acting and say so", cut_off, TAKEOVER_DEADLINE_S, group.logs())
        wait_until("the other member to lead", lambda: group.leader([other]), TAKEOVER_DEADLINE_S, group.logs())
        # The primary fails: both members see it, only the leader acts.
        before = len(group.record())
        group.us.stop()
        wait_until("the failover in DNS", lambda: json.loads(group.dns.get("/v1/health"))["targets"].get(
            "eu-west-1") == "healthy", logs=group.logs())
        moved = group.record()[before:]
        assert moved and all(m == other and to == "eu-west-1" for _, to, m in moved), moved
        status, body = request(group.members[first][1], "/v1/failover", "POST")
        assert status == 421 and body["code"] == "not_leader", body
        audit = (group.tmp / f"audit-{first}.jsonl").read_text()
        assert '"event":"stepped_down"' in audit
        # Healed, it follows the new leader.
        assert proxy.call("POST", "/reset")[0] in (200, 204)

        def follows():
            ha = (group.status(first) or {}).get("ha") or {}
            return (ha.get("leader") or {}).get("member") == other and ha.get("etcd_error") is None

        wait_until("the healed member to follow", follows, TAKEOVER_DEADLINE_S, group.logs())
        assert group.record()[before:] == moved, "nothing ran again after the heal"
        # Its log said why it stopped acting, once, and when etcd answered again.
        log = Path(group.members[first][2]).read_text()
        assert log.count("etcd does not answer") == 1, log[-3000:]
        assert "etcd answers again" in log, log[-3000:]
        assert "grpc request error" not in log and "MetadataMap" not in log, log[-3000:]
    finally:
        proxy.stop()


def test_a_second_controller_with_a_members_name_is_named_in_its_log(group):
    """Two controllers given one member name share its leader key, audit records and vantage:
    the one that follows says so in its log (ERROR), and the leader keeps leading."""
    group.start("c1")
    wait_until("c1 to lead", lambda: group.leader(["c1"]), TAKEOVER_DEADLINE_S, group.logs())
    group.start("twin", extra=["--member", "c1", "--audit-log", str(group.tmp / "audit-twin.jsonl")])
    twin_log = Path(group.members["twin"][2])
    wait_until("the twin to say its name is taken",
               lambda: "another controller runs with this member name" in twin_log.read_text(),
               TAKEOVER_DEADLINE_S, group.logs())
    assert group.leader(["c1"]), "the first keeps leading"


def test_a_leader_cut_from_etcd_mid_step_drops_the_step_it_was_running(group, tmp_path):
    # A step may outlast the lease many times over (a media copy, a promotion's wait, a hook):
    # the leader that stops acting drops it there and then, rather than finishing it while
    # another member may already act.
    ports = {member: free_port() for member in ("c1", "c2")}
    (tmp_path / "fp").mkdir()
    proxy = FaultProxy(tmp_path / "fp", *[arg for member, port in ports.items() for arg in
                                          ("--proxy", f"etcd-{member}=127.0.0.1:{port}=127.0.0.1:{group.etcd.client_port}")])
    try:
        for member, port in ports.items():
            group.start(member, etcd_url=f"http://127.0.0.1:{port}")
        first = wait_until("one leader", group.leader, TAKEOVER_DEADLINE_S, group.logs())
        other = [m for m in ports if m != first][0]
        wait_until("the initial placement recorded in etcd", lambda: placed(group, first, "us-east-1"),
                   logs=group.logs())
        (group.tmp / "hold").write_text("")
        group.us.stop()
        wait_until("the failover to start", lambda: any(to == "eu-west-1" for _, to, _ in group.record()),
                   logs=group.logs())
        failover = [g for g, to, _ in group.record() if to == "eu-west-1"][0]
        wait_until("etcd to record the failover's first step as done, the held step running", lambda: "record" in (
            ((group.status(first) or {}).get("ha", {}).get("shared") or {}).get("runbook") or {}).get(
            "steps_done", []), logs=group.logs())
        # The held step is under way, past its guard in etcd (health says which, and under
        # which generation): the cut below catches the step itself, not the guard's call.
        in_flight = wait_until("the leader's health to show the held step under way", lambda: (
            request(group.members[first][1], "/health")[1].get("ha") or {}).get("step_in_flight"),
            logs=group.logs())
        assert in_flight["step"] == "hold" and in_flight["generation"] == failover, in_flight
        for stream in ("upstream", "downstream"):
            status, body = proxy.call("POST", f"/proxies/etcd-{first}/toxics",
                                      {"type": "timeout", "stream": stream, "attributes": {"timeout": 0}})
            assert status == 200, body

        def cut_off():
            health = request(group.members[first][1], "/health")[1]
            return health.get("status") == "degraded" and health["ha"]["acting"] is False

        wait_until("the cut leader to stop acting", cut_off, TAKEOVER_DEADLINE_S, group.logs())
        audit_path = group.tmp / f"audit-{first}.jsonl"

        def stopped_mid_step():
            audit = complete_jsonl(audit_path)
            return [r for r in audit if r.get("kind") == "step" and r["step"] == "hold" and r["outcome"] == "stopped"]

        stopped = wait_until("the cut leader to drop its held step", stopped_mid_step, TAKEOVER_DEADLINE_S,
                             group.logs())
        assert "stopped mid-step" in stopped[0]["detail"], stopped
        # Dropped, the step is no longer shown under way.
        assert request(group.members[first][1], "/health")[1]["ha"]["step_in_flight"] is None
        # Released now, the held step would finish on the old leader had it kept running.
        (group.tmp / "hold").unlink()
        wait_until("the other member to finish the failover", lambda: json.loads(group.dns.get("/v1/health"))[
            "targets"].get("eu-west-1") == "healthy", TAKEOVER_DEADLINE_S, group.logs())
        held = [(int(g), member) for g, member in
                (line.split() for line in (group.tmp / "held.log").read_text().splitlines())]
        assert any(member == other and g > failover for g, member in held), held
        assert not any(member == first and g >= failover for g, member in held), held
    finally:
        proxy.stop()


def test_with_etcd_authentication_a_member_authenticates_again_when_its_token_expires(group):
    # etcd's JWT auth tokens expire (here after 1 s): a member must authenticate again, or it
    # stops reaching etcd a second after it started and never leads (nor fails over) again.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (group.tmp / "jwt.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.TraditionalOpenSSL,
                                                          serialization.NoEncryption()))
    (group.tmp / "jwt.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    group.etcd.commands[0] += ["--auth-token", f"jwt,pub-key={group.tmp / 'jwt.pub'},"
                                               f"priv-key={group.tmp / 'jwt.key'},sign-method=RS256,ttl=1s"]
    group.etcd.restart(0)
    group.etcd.enable_auth("etcd-secret")
    (group.tmp / "etcd-password").write_text("etcd-secret\n")
    group.start("c1", ha_extra='user = "root"\npassword_file = "etcd-password"\n')
    wait_until("the member to lead", lambda: group.leader(["c1"]), TAKEOVER_DEADLINE_S, group.logs())
    wait_until("the initial placement in DNS", lambda: dns_generation(group) > 0, logs=group.logs())
    # A token issued now expires after the member's own (issued when it connected).
    token = group.etcd.call("/v3/auth/authenticate", {"name": "root", "password": "etcd-secret"})["token"]

    def expired():
        try:
            group.etcd.call("/v3/kv/range", {"key": "eA=="}, token)
            return False
        except urllib.error.HTTPError as error:
            return b"invalid auth token" in error.read()

    wait_until("a token issued after the member's to expire", expired, TAKEOVER_DEADLINE_S, group.logs())
    # The member still acts: it fails over.
    group.us.stop()
    wait_until("the failover in DNS", lambda: json.loads(group.dns.get("/v1/health"))["targets"].get(
        "eu-west-1") == "healthy", TAKEOVER_DEADLINE_S, group.logs())
    audit = (group.tmp / "audit-c1.jsonl").read_text()
    assert '"event":"stepped_down"' not in audit, "the member kept its lease throughout"


def test_a_member_cut_off_from_etcd_says_its_pointer_may_be_stale_and_lock_run_does_not_trust_it(group, tmp_path):
    # lock run and pointer watch ask the member at their site: cut off from etcd, it cannot
    # know whether another member moved the active region. It still names the region it knew
    # (an etcd outage must not take the applications down: static stability) but says why it
    # may be stale, and lock run does not run a job on that word.
    ports = {member: free_port() for member in ("c1", "c2")}
    (tmp_path / "fp").mkdir()
    proxy = FaultProxy(tmp_path / "fp", *[arg for member, port in ports.items() for arg in
                                          ("--proxy", f"etcd-{member}=127.0.0.1:{port}=127.0.0.1:{group.etcd.client_port}")])
    try:
        for member, port in ports.items():
            group.start(member, etcd_url=f"http://127.0.0.1:{port}")
        first = wait_until("one leader", group.leader, TAKEOVER_DEADLINE_S, group.logs())
        other = [m for m in ports if m != first][0]
        wait_until("the pointer on the follower", lambda: request(group.members[other][1], "/v1/active-region")[1].get(
            "region") == "us-east-1", logs=group.logs())
        assert "stale" not in request(group.members[other][1], "/v1/active-region")[1]
        for stream in ("upstream", "downstream"):
            status, body = proxy.call("POST", f"/proxies/etcd-{other}/toxics",
                                      {"type": "timeout", "stream": stream, "attributes": {"timeout": 0}})
            assert status == 200, body

        def stale():
            status, body = request(group.members[other][1], "/v1/active-region")
            return body if status == 200 and "stale" in body else None

        body = wait_until("the cut-off follower to say its pointer may be stale", stale, TAKEOVER_DEADLINE_S,
                          group.logs())
        assert "has not reached etcd" in body["stale"] and body["region"] == "us-east-1", body
        status, body = request(group.members[first][1], "/v1/active-region")
        assert status == 200 and body["region"] == "us-east-1" and "stale" not in body, body
        # lock run reads it as "pointer unknown" and skips (exit 102) instead of running.
        skipped = subprocess.run([str(BINARY), "lock", "run", "--name", "job", "--region", "us-east-1",
                                  "--store", "http://127.0.0.1:9", "--controller", group.members[other][1], "--",
                                  "true"], env=dict(os.environ, SWITCHYARD_CONTROL_TOKEN=TOKEN), capture_output=True,
                                 text=True, timeout=30)
        assert skipped.returncode == 102, skipped.stderr
        assert "the pointer may be stale" in skipped.stderr and "has not reached etcd" in skipped.stderr, \
            skipped.stderr
        # Given both members, it takes the pointer from the one that reaches etcd: past the pointer,
        # it stops at the store (nothing listens on port 9), not at the stale word.
        both = subprocess.run([str(BINARY), "lock", "run", "--name", "job", "--region", "us-east-1",
                               "--store", "http://127.0.0.1:9", "--controller",
                               f"{group.members[other][1]},{group.members[first][1]}", "--", "true"],
                              env=dict(os.environ, SWITCHYARD_CONTROL_TOKEN=TOKEN), capture_output=True, text=True,
                              timeout=30)
        assert both.returncode == 103, both.stderr
        assert "cannot use the local store" in both.stderr, both.stderr
        assert proxy.call("POST", "/reset")[0] in (200, 204)
        wait_until("the healed follower's pointer to be fresh again", lambda: "stale" not in request(
            group.members[other][1], "/v1/active-region")[1], TAKEOVER_DEADLINE_S, group.logs())
    finally:
        proxy.stop()


def test_a_command_reaching_a_new_leader_before_its_first_tick_keeps_the_preferences_in_etcd(group):
    # Between winning the key and its next tick a new leader's engine is still the follower's;
    # an operator command then saved that engine's preferences (not paused, its own preferred
    # region) over the ones etcd holds. Slow ticks (10 s) make that window wide.
    for member in ("c1", "c2"):
        group.start(member, tick_ms=10000)
    first = wait_until("one leader", group.leader, TAKEOVER_DEADLINE_S, group.logs())
    other = [m for m in group.members if m != first][0]
    status, body = request(group.members[first][1], "/v1/pause", "POST")
    assert status == 200 and body["accepted"], body
    wait_until("etcd to record the pause", lambda: ((group.status(other) or {}).get("ha", {}).get("shared") or {}).get(
        "paused") is True, logs=group.logs())
    process = group.members[first][0]
    process.kill()
    process.wait(timeout=10)
    wait_until("the other member to act", lambda: ((group.status(other) or {}).get("ha") or {}).get("acting"),
               TAKEOVER_DEADLINE_S, group.logs())
    # The command lands on the engine restored from etcd (paused), so that is what it saves.
    request(group.members[other][1], "/v1/acknowledge", "POST")
    engine = group.status(other)["engine"]
    assert engine["paused"] is True, engine


LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


def test_a_new_leader_whose_clock_runs_ahead_keeps_the_old_leaders_hourly_count(group):
    # The hold and the hourly count move to the next leader as wall-clock times of the old
    # leader's clock: read on a clock two hours ahead they looked two hours old, and the
    # new leader forgot every recent transition (and a hold would end early).
    if not os.path.exists(LIBFAKETIME):
        pytest.skip("libfaketime missing (Debian package faketime)")
    group.start("c1")
    wait_until("c1 to lead", lambda: group.leader(["c1"]), TAKEOVER_DEADLINE_S, group.logs())
    group.start("c2", env_extra={"LD_PRELOAD": LIBFAKETIME, "FAKETIME": "+2h", "FAKETIME_DONT_FAKE_MONOTONIC": "1"})
    wait_until("c2 to follow c1", lambda: group.leader(["c1", "c2"]) == "c1", TAKEOVER_DEADLINE_S, group.logs())
    group.us.stop()
    wait_until("the failover recorded in etcd", lambda: placed(group, "c2", "eu-west-1"), TAKEOVER_DEADLINE_S,
               group.logs())
    first = group.status("c1")
    counted, generation = first["engine"]["transitions_last_hour"], first["ha"]["shared"]["generation"]
    assert counted >= 1
    process = group.members["c1"][0]
    process.kill()
    process.wait(timeout=10)

    def restored():
        status = group.status("c2") or {}
        engine = status.get("engine") or {}
        return status.get("ha", {}).get("acting") and engine.get("generation", 0) >= generation and engine

    engine = wait_until("c2 to lead with its engine restored from etcd", restored, TAKEOVER_DEADLINE_S, group.logs())
    assert engine["transitions_last_hour"] == counted, engine


def three_on_three(tmp_path):
    """Three controllers (us, eu, ap: one file for the group, each naming itself with --member) on a
    three-member etcd, once one leads: (group, leader). The caller stops the group."""
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built (cargo build -p switchyard)")
    if ETCD is None:
        pytest.skip("etcd is not installed (Debian package etcd-server; scripts/install-test-deps.sh installs it)")
    group = Group(tmp_path, etcd_size=3)
    try:
        for member in ("us", "eu", "ap"):
            group.start(member, shared=True)
        return group, wait_until("one leader named by every member", group.leader, TAKEOVER_DEADLINE_S, group.logs())
    except BaseException:
        group.stop()
        raise


def test_three_controllers_on_a_three_member_etcd_survive_losing_an_etcd_member_and_the_leader(tmp_path):
    group, first = three_on_three(tmp_path)
    try:
        wait_until("the initial placement in DNS", lambda: dns_generation(group) > 0, logs=group.logs())
        # etcd keeps its quorum with two of three members: nothing changes.
        group.etcd.kill(0)
        # The leader dies too: another member takes over through the two etcd members left.
        process = group.members[first][0]
        process.kill()
        process.wait(timeout=10)
        rest = [m for m in group.members if m != first]
        second = wait_until("another member to lead", lambda: group.leader(rest), TAKEOVER_DEADLINE_S, group.logs())
        before = dns_generation(group)
        group.us.stop()
        wait_until("the failover in DNS", lambda: json.loads(group.dns.get("/v1/health"))["targets"].get(
            "eu-west-1") == "healthy", logs=group.logs())
        assert dns_generation(group) > before
        audit = (tmp_path / f"audit-{second}.jsonl").read_text()
        assert '"event":"leading"' in audit
    finally:
        group.stop()


def etcd_raft_leader(etcd):
    """The index of the etcd member leading raft (as a one-item list, never falsy), once every
    member names the same one."""
    ids, leaders = [], set()
    for url in etcd.urls:
        req = urllib.request.Request(url + "/v3/maintenance/status", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=2) as response:
                body = json.loads(response.read())
        except OSError:
            return None
        ids.append(str(body["header"]["member_id"]))
        leaders.add(str(body.get("leader")))
    if len(leaders) != 1:
        return None
    leader = leaders.pop()
    return [ids.index(leader)] if leader in ids else None


def test_a_leader_dying_with_etcds_raft_leader_is_deposed_though_etcd_extends_its_lease(tmp_path):
    """One site lost: the leading controller and the etcd member leading raft die at once. The
    new raft leader gives every lease its whole TTL again (etcd's lessor `Promote`), so the dead
    leader's key would outlive it by the TTL plus an election; a follower deposes it once it
    has seen it unrenewed for the lease (a heartbeat moves its mod revision every third)."""
    group, first = three_on_three(tmp_path)
    try:
        [raft] = wait_until("etcd's raft leader", lambda: etcd_raft_leader(group.etcd), START_DEADLINE_S,
                            group.logs())
        process = group.members[first][0]
        started = time.monotonic()
        process.kill()
        group.etcd.processes[raft].kill()
        process.wait(timeout=10)
        group.etcd.processes[raft].wait(timeout=10)
        rest = [m for m in group.members if m != first]
        second = wait_until("another member to lead", lambda: group.leader(rest), TAKEOVER_DEADLINE_S, group.logs())
        print(f"leader and raft leader killed -> {second} acting: {time.monotonic() - started:.2f} s")
        # Either survivor may depose the key, and either may then win the campaign.
        deposed = {member: [json.loads(line) for line in (tmp_path / f"audit-{member}.jsonl").read_text().splitlines()
                            if '"event":"deposed"' in line] for member in rest}
        deposer = next((member for member, events in deposed.items() if events), None)
        assert deposer, "the new leader took over after a survivor deposed the dead one's key, not by waiting out its lease"
        assert f"member {first}'s leader key" in deposed[deposer][-1]["detail"], deposed
        assert group.status(deposer)["ha"]["last_deposed"].startswith(f"deposed {first}'s leader key")
    finally:
        group.stop()


def test_the_leader_compacts_etcds_history_older_than_compact_history_s(group):
    """The heartbeat writes the leader key every third of the lease; etcd keeps every revision
    until compacted (its quota fills in months), so the leader compacts history older than
    `compact_history_s` (here 10 s: rounds every 10 s, each up to the revision of the round
    before)."""
    group.start("c1", ha_extra="compact_history_s = 10\n")
    wait_until("c1 to lead", lambda: group.leader(["c1"]), TAKEOVER_DEADLINE_S, group.logs())
    key = base64.b64encode(b"/switchyard/test/leader").decode()
    first = int(group.etcd.call("/v3/kv/range", {"key": key})["header"]["revision"])

    def compacted():
        try:
            group.etcd.call("/v3/kv/range", {"key": key, "revision": str(first)})
            return False
        except urllib.error.HTTPError as error:
            body = error.read().decode()
            assert "compacted" in body, body
            return True

    wait_until("etcd's history before the first look compacted", compacted, 60, group.logs())
    # History newer than compact_history_s is kept: the revision now is still readable.
    now = int(group.etcd.call("/v3/kv/range", {"key": key})["header"]["revision"])
    assert now > first, "the heartbeat moved the revision on"
    group.etcd.call("/v3/kv/range", {"key": key, "revision": str(now)})
    assert group.status("c1")["ha"]["acting"]


def test_an_etcd_out_of_space_is_named_with_its_fix_and_a_member_leads_once_it_is_freed(tmp_path):
    """etcd's NOSPACE alarm (its database at --quota-backend-bytes) refuses every write and lease
    grant: the leader's heartbeat fails, it steps down and no member can campaign. The member
    says so with the operator's fix, and leads again once the space is freed and the alarm
    disarmed, with no restart."""
    if not BINARY.exists() or ETCD is None:
        pytest.skip("needs the built binary and etcd (scripts/install-test-deps.sh)")
    group = Group(tmp_path, etcd_extra=("--quota-backend-bytes", str(8 << 20)))
    try:
        group.start("c1")
        wait_until("c1 to lead", lambda: group.leader(["c1"]), TAKEOVER_DEADLINE_S, group.logs())
        junk = base64.b64encode(b"x" * (1 << 20)).decode()
        for i in range(64):
            try:
                group.etcd.call("/v3/kv/put", {"key": base64.b64encode(f"/junk/{i}".encode()).decode(),
                                               "value": junk})
            except urllib.error.HTTPError as error:
                body = error.read().decode()
                assert "database space exceeded" in body, body
                break
        else:
            pytest.fail("etcd took 64 MiB under an 8 MiB quota")

        def named():
            ha = (group.status("c1") or {}).get("ha") or {}
            error = ha.get("etcd_error") or ""
            return error if "alarm disarm" in error and not ha.get("acting") else None

        error = wait_until("c1 to step down naming etcd's NOSPACE alarm and its fix", named, TAKEOVER_DEADLINE_S,
                           group.logs())
        assert "database space exceeded" in error and "\n    fix: etcd's NOSPACE alarm" in error, error
        # The operator's fix, as the message gives it.
        group.etcd.call("/v3/kv/deleterange", {"key": base64.b64encode(b"/junk/").decode(),
                                               "range_end": base64.b64encode(b"/junk0").decode()})
        revision = int(group.etcd.call("/v3/kv/range", {"key": base64.b64encode(b"/").decode()})["header"]["revision"])
        group.etcd.call("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        group.etcd.call("/v3/maintenance/defragment", {})
        alarms = group.etcd.call("/v3/maintenance/alarm", {"action": "GET"}).get("alarms") or []
        assert any(a.get("alarm") == "NOSPACE" for a in alarms), alarms
        for alarm in alarms:
            group.etcd.call("/v3/maintenance/alarm", {"action": "DEACTIVATE", "memberID": alarm["memberID"],
                                                      "alarm": "NOSPACE"})
        wait_until("c1 to lead again once etcd has room", lambda: group.leader(["c1"]), TAKEOVER_DEADLINE_S,
                   group.logs())
        assert group.status("c1")["ha"]["etcd_error"] is None
    finally:
        group.stop()


class RefusingMember(Served):
    """A stand-in for a member that could not pass a command on: it answers every POST with
    421 naming `leader`, as a follower does when the leader did not answer it in time."""

    def __init__(self, leader_member, leader_url):
        body = json.dumps({"accepted": False, "code": "not_leader", "error": "this controller does not lead",
                           "reason": "this controller does not lead", "member": "stand-in",
                           "leader": {"member": leader_member, "address": leader_url}}).encode()
        self.posts = []
        posts = self.posts

        class Handler(QuietHandler):
            def do_POST(self):
                posts.append(self.path)
                self.answer(421, body, {"Content-Type": "application/json"})

        super().__init__(Handler)


def test_the_cli_follows_a_refusal_to_the_leader_and_members_with_own_vantages_share_their_views(group):
    # One file; each member probes under a vantage name of its own (--vantage).
    vantages = ("v-c1", "v-c2", "probe")
    for member in ("c1", "c2"):
        group.start(member, shared=True, vantages=vantages, extra=["--vantage", f"v-{member}"])
    first = wait_until("one leader named by every member", group.leader, TAKEOVER_DEADLINE_S, group.logs())
    other = [m for m in group.members if m != first][0]

    # The follower passes its own probes' reports on: the leader counts both members' views.
    def both_fresh_at_leader():
        vantages = {v["name"]: v["fresh"] for v in (group.status(first) or {}).get("vantages") or []}
        return vantages.get("v-c1") and vantages.get("v-c2")

    wait_until("both members' views fresh at the leader", both_fresh_at_leader, TAKEOVER_DEADLINE_S, group.logs())

    # A member that answers 421 naming the leader: the CLI sends the command there, once.
    stand_in = RefusingMember(first, group.members[first][1])
    try:
        paused = subprocess.run([str(BINARY), "pause", "--controller", stand_in.url],
                                env=dict(os.environ, SWITCHYARD_CONTROL_TOKEN=TOKEN), capture_output=True,
                                text=True, timeout=30)
        assert paused.returncode == 0, paused.stderr
        assert f"sending the command to the leader {first} at {group.members[first][1]}" in paused.stderr
        assert stand_in.posts == ["/v1/pause"]
        assert group.status(first)["engine"]["paused"] is True
        # A refusal naming itself (or nobody) is not followed: the CLI says why it was not taken.
        stand_in_self = RefusingMember("stand-in", None)
        try:
            refused = subprocess.run([str(BINARY), "resume", "--controller", stand_in_self.url],
                                     env=dict(os.environ, SWITCHYARD_CONTROL_TOKEN=TOKEN), capture_output=True,
                                     text=True, timeout=30)
            assert refused.returncode != 0
            assert "not taken: this controller does not lead" in refused.stderr, refused.stderr
            assert stand_in_self.posts == ["/v1/resume"]
        finally:
            stand_in_self.stop()
    finally:
        stand_in.stop()
    assert group.status(other)["ha"]["leader"]["vantage"] == f"v-{first}"

    # A --vantage outside [quorum] vantages is refused with the fix.
    bad = subprocess.run([str(BINARY), "controller", "--config", str(group.tmp / "group.toml"),
                          "--listen", "127.0.0.1:0", "--member", "c9", "--vantage", "nowhere"],
                         env=dict(os.environ, SWITCHYARD_CONTROL_TOKEN=TOKEN), capture_output=True, text=True,
                         timeout=30)
    assert bad.returncode != 0
    assert "--vantage nowhere is not in [quorum] vantages (v-c1, v-c2, probe)" in bad.stderr, bad.stderr


def test_a_member_that_knows_no_leader_sends_an_agent_with_other_members_elsewhere(tmp_path):
    """A member cut off from etcd since its start knows no leader and cannot pass a report on:
    an agent that has other members to try is answered 503 `no_leader` (its next report goes to
    the next member); one with this member only is still answered 204 (the report counts here)."""
    processes, us, eu = [], App(), App()
    try:
        config = tmp_path / "lone.toml"
        config.write_text(config_text(us, eu, tmp_path, "lone", [f"http://127.0.0.1:{free_port()}"],
                                      f"http://127.0.0.1:{free_port()}"))
        _, url, _ = start_controller(config, tmp_path, processes)
        sent = int(time.time() * 1000)
        status, body = request(url, "/v1/agent/report", "POST", {"vantage": "probe", "sent_at_ms": sent, "results": []},
                               headers={"X-Switchyard-Members": "2"})
        assert status == 503 and body.get("code") == "no_leader", body
        assert "lone" in body["error"] and "another member" in body["error"], body
        status, body = request(url, "/v1/agent/report", "POST",
                               {"vantage": "probe", "sent_at_ms": sent + 1, "results": []})
        assert status == 204, body
    finally:
        stop_all(processes, (us, eu), terminate_s=15)


def alerts_toml(tmp, receivers):
    """A webhook and a PagerDuty-shaped channel to the test's receivers."""
    (tmp / "pd.key").write_text(ROUTING_KEY)
    return f"""
[[alerts]]
kind = "webhook"
url = "{receivers.url}/hook"
per_minute_max = 600

[[alerts]]
kind = "pagerduty"
url = "{receivers.url}/pagerduty/v2/enqueue"
routing_key = {{ file = "{tmp / 'pd.key'}" }}
per_minute_max = 600
"""


def incidents_in_etcd(group):
    """The leader's list of open incidents (`{prefix}/incidents`) as etcd holds it, or None."""
    key = base64.b64encode(b"/switchyard/test/incidents").decode()
    kvs = group.etcd.call("/v3/kv/range", {"key": key}).get("kvs") or []
    return json.loads(base64.b64decode(kvs[0]["value"])) if kvs else None


def listed(group, key, written_by=None):
    """The incident of condition `key` in etcd's list (written by `written_by`, when given)."""
    incidents = incidents_in_etcd(group) or {}
    if written_by is not None and incidents.get("written_by") != written_by:
        return None
    return next((i for i in incidents.get("incidents", []) if i["key"] == key), None)


class Pages:
    """What the receivers got for condition `all_down`."""

    def __init__(self, receivers):
        self.receivers = receivers

    def hook(self, action):
        return [b for b in self.receivers.bodies("/hook") if b["event"] == "all_down" and b["action"] == action]

    def paged(self, action):
        return [b for b in self.receivers.bodies("/pagerduty/v2/enqueue")
                if b["event_action"] == action and b["dedup_key"].endswith("/all_down")]


def bring_back(group):
    group.us, group.eu = App(group.us.port), App(group.eu.port)


def test_a_new_leader_adopts_the_open_incident_and_does_not_page_a_condition_still_holding_again(group):
    receivers = Receivers()
    pages = Pages(receivers)
    try:
        for member in ("c1", "c2"):
            group.start(member, config_extra=alerts_toml(group.tmp, receivers))
        first = wait_until("one leader", group.leader, TAKEOVER_DEADLINE_S, group.logs())
        other = [m for m in group.members if m != first][0]
        wait_until("the initial placement", lambda: placed(group, first, "us-east-1"), logs=group.logs())
        group.us.stop()
        group.eu.stop()
        trigger = wait_until("the all_down trigger", lambda: pages.hook("trigger"), logs=group.logs())[0]
        assert trigger["incident"] == "switchyard/test/all_down", trigger
        # The leader keeps the open incident in etcd under the group's prefix.
        entry = wait_until("the incident in etcd", lambda: listed(group, "all_down", first), logs=group.logs())
        assert entry["incident"] == trigger["incident"] and entry["opened_at_ms"] > 0, entry
        wait_until("the all_down page", lambda: pages.paged("trigger"), logs=group.logs())
        # Delivered on every channel, and the list says so (else the next leader pages again).
        wait_until("the delivery in etcd's list", lambda: (listed(group, "all_down", first) or {}).get("delivered"),
                   logs=group.logs())

        process = group.members[first][0]
        process.kill()
        process.wait(timeout=10)
        wait_until("the other member to lead", lambda: group.leader([other]), TAKEOVER_DEADLINE_S, group.logs())
        # Every region is still down: the new leader's engine raises the condition, which the
        # leader takes as the incident it adopted (recorded with its dedup key, not sent).
        audit = group.tmp / f"audit-{other}.jsonl"

        def raised_by_the_new_leader():
            records = complete_jsonl(audit)
            return [r for r in records if r.get("kind") == "alert" and r["key"] == "all_down"]

        record = wait_until("the new leader to take the condition as holding", raised_by_the_new_leader,
                            TAKEOVER_DEADLINE_S, group.logs())[0]
        assert record["incident"] == trigger["incident"], record
        wait_until("the new leader's list in etcd", lambda: listed(group, "all_down", other), TAKEOVER_DEADLINE_S,
                   group.logs())

        # The regions come back: the new leader resolves the incident the old one opened.
        bring_back(group)
        resolve = wait_until("the all_down resolve", lambda: pages.hook("resolve"), TAKEOVER_DEADLINE_S,
                             group.logs())[0]
        assert resolve["incident"] == trigger["incident"], (trigger, resolve)
        # Each channel's queue is in order: a second trigger would have come before the resolve.
        assert len(pages.hook("trigger")) == 1, pages.hook("trigger")
        page = wait_until("PagerDuty's resolve", lambda: pages.paged("resolve"), logs=group.logs())[0]
        assert page["dedup_key"] == pages.paged("trigger")[0]["dedup_key"], page
        assert len(pages.paged("trigger")) == 1, pages.paged("trigger")
        wait_until("the resolved incident out of etcd's list", lambda: listed(group, "all_down") is None
                   and incidents_in_etcd(group) is not None, logs=group.logs())
    finally:
        receivers.stop()


def test_an_incident_the_old_leader_opened_is_resolved_by_the_next_with_its_dedup_key(group):
    # The condition ends while no member leads; the next leader has never seen it (a fresh
    # member, no audit log): only etcd's list tells it the incident is open on the pager.
    receivers = Receivers()
    pages = Pages(receivers)
    try:
        group.start("c1", config_extra=alerts_toml(group.tmp, receivers))
        wait_until("c1 to lead", lambda: group.leader(["c1"]), TAKEOVER_DEADLINE_S, group.logs())
        wait_until("the initial placement", lambda: placed(group, "c1", "us-east-1"), logs=group.logs())
        group.us.stop()
        group.eu.stop()
        trigger = wait_until("the all_down trigger", lambda: pages.hook("trigger"), logs=group.logs())[0]
        wait_until("the incident in etcd", lambda: listed(group, "all_down", "c1"), logs=group.logs())
        wait_until("the all_down page", lambda: pages.paged("trigger"), logs=group.logs())
        wait_until("the delivery in etcd's list", lambda: (listed(group, "all_down", "c1") or {}).get("delivered"),
                   logs=group.logs())
        process = group.members["c1"][0]
        process.kill()
        process.wait(timeout=10)
        bring_back(group)

        group.start("c2", config_extra=alerts_toml(group.tmp, receivers))
        wait_until("c2 to lead", lambda: group.leader(["c2"]), TAKEOVER_DEADLINE_S, group.logs())
        resolve = wait_until("the all_down resolve by c2", lambda: pages.hook("resolve"), TAKEOVER_DEADLINE_S,
                             group.logs())[0]
        assert resolve["incident"] == trigger["incident"], (trigger, resolve)
        assert len(pages.hook("trigger")) == 1, pages.hook("trigger")
        page = wait_until("PagerDuty's resolve", lambda: pages.paged("resolve"), logs=group.logs())[0]
        assert page == {"routing_key": ROUTING_KEY, "event_action": "resolve",
                        "dedup_key": pages.paged("trigger")[0]["dedup_key"]}, page
        log = group.members["c2"][2]
        assert "the group's list in etcd" in open(log).read()
        wait_until("the resolved incident out of etcd's list", lambda: listed(group, "all_down", "c2") is None
                   and (incidents_in_etcd(group) or {}).get("written_by") == "c2", logs=group.logs())
    finally:
        receivers.stop()


def test_a_leader_killed_before_delivering_a_trigger_leaves_it_to_the_next_leader_to_page(group):
    """The leader opened the incident and wrote it to etcd's list, but its webhook answered 500
    until it was killed: the list says the trigger was not delivered, and the next leader pages
    it (same dedup key) instead of adopting it silently. Before, nobody was ever paged."""
    receivers = Receivers()
    pages = Pages(receivers)
    try:
        group.start("c1", config_extra=alerts_toml(group.tmp, receivers))
        wait_until("c1 to lead", lambda: group.leader(["c1"]), TAKEOVER_DEADLINE_S, group.logs())
        wait_until("the initial placement", lambda: placed(group, "c1", "us-east-1"), logs=group.logs())
        receivers.hook_status = 500
        group.us.stop()
        group.eu.stop()
        entry = wait_until("the incident in etcd", lambda: listed(group, "all_down", "c1"), logs=group.logs())
        assert entry["delivered"] is False, entry
        wait_until("a failed delivery at the webhook",
                   lambda: len(receivers.bodies("/hook")) > len(receivers.hook_accepted), logs=group.logs())
        process = group.members["c1"][0]
        process.kill()
        process.wait(timeout=10)
        with receivers.lock:
            assert not [b for b in receivers.hook_accepted if b["event"] == "all_down"]
        receivers.hook_status = 200

        group.start("c2", config_extra=alerts_toml(group.tmp, receivers))
        wait_until("c2 to lead", lambda: group.leader(["c2"]), TAKEOVER_DEADLINE_S, group.logs())

        def accepted(action):
            with receivers.lock:
                return [b for b in receivers.hook_accepted if b["event"] == "all_down" and b["action"] == action]

        trigger = wait_until("the all_down trigger from c2", lambda: accepted("trigger"), TAKEOVER_DEADLINE_S,
                             group.logs())[0]
        assert trigger["incident"] == entry["incident"] == "switchyard/test/all_down", (entry, trigger)
        wait_until("the delivery in c2's list", lambda: (listed(group, "all_down", "c2") or {}).get("delivered"),
                   TAKEOVER_DEADLINE_S, group.logs())
        bring_back(group)
        resolve = wait_until("the all_down resolve", lambda: accepted("resolve"), TAKEOVER_DEADLINE_S,
                             group.logs())[0]
        assert resolve["incident"] == trigger["incident"], (trigger, resolve)
        # In order per channel: a second trigger (c2's engine raising the condition) would
        # have come before the resolve.
        assert len(accepted("trigger")) == 1, accepted("trigger")
        assert {b["dedup_key"] for b in pages.paged("trigger")} == {"switchyard/test/all_down"}
    finally:
        receivers.stop()


def test_a_resolve_the_killed_leader_did_not_deliver_is_sent_by_the_next_leader(group):
    """The leader resolved the incident (out of etcd's open incidents) while its webhook
    answered 500, and was killed: before, nobody ever sent that resolve and the pager stayed
    open for good. Its list now keeps the resolve until it is delivered, and the next leader
    sends it again under the same dedup key."""
    receivers = Receivers()
    try:
        group.start("c1", config_extra=alerts_toml(group.tmp, receivers))
        wait_until("c1 to lead", lambda: group.leader(["c1"]), TAKEOVER_DEADLINE_S, group.logs())
        wait_until("the initial placement", lambda: placed(group, "c1", "us-east-1"), logs=group.logs())
        group.us.stop()
        group.eu.stop()
        entry = wait_until("the delivered incident in etcd",
                           lambda: (listed(group, "all_down", "c1") or {}).get("delivered") and
                           listed(group, "all_down", "c1"), logs=group.logs())
        receivers.hook_status = 500
        bring_back(group)

        def resolving():
            return [r for r in (incidents_in_etcd(group) or {}).get("resolving", []) if r["key"] == "all_down"]

        pending = wait_until("the resolve pending in etcd's list", resolving, logs=group.logs())[0]
        assert pending["incident"] == entry["incident"] and listed(group, "all_down") is None, pending
        process = group.members["c1"][0]
        process.kill()
        process.wait(timeout=10)

        def accepted(action):
            with receivers.lock:
                return [b for b in receivers.hook_accepted if b["event"] == "all_down" and b["action"] == action]

        assert not accepted("resolve")
        receivers.hook_status = 200
        group.start("c2", config_extra=alerts_toml(group.tmp, receivers))
        wait_until("c2 to lead", lambda: group.leader(["c2"]), TAKEOVER_DEADLINE_S, group.logs())
        resolve = wait_until("the all_down resolve from c2", lambda: accepted("resolve"), TAKEOVER_DEADLINE_S,
                             group.logs())[0]
        assert resolve["incident"] == entry["incident"], (entry, resolve)
        wait_until("the resolve out of c2's list", lambda: not resolving()
                   and (incidents_in_etcd(group) or {}).get("written_by") == "c2", TAKEOVER_DEADLINE_S, group.logs())
    finally:
        receivers.stop()
