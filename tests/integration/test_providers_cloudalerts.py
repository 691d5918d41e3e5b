"""Alert channels and the cloudflare / digitalocean steps through the real controller process.

Alerts go to local receivers: a generic JSON webhook, a Slack-shaped incoming webhook (which
answers its first request 429 with Retry-After, as Slack does when throttling), a
PagerDuty-shaped Events API v2 endpoint (202 `{"status": "success", "dedup_key"}`, 400
`{"status": "invalid event"}` for a wrong routing key) and a real SMTP server (aiosmtpd from
PyPI) that requires STARTTLS and AUTH PLAIN, with a certificate from a CA made by openssl for
the test. `switchyard config check` reports provider and alert mistakes with line and column,
and the WooCommerce-on-DigitalOcean example validates.
"""

import json
import os
import signal
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest

import harness
from harness import (BINARY, NUMBERED_HEAD_LINES, REPO, TOKEN, App, QuietHandler, Served, controller_toml, free_port,
                     start_controller, stop_all, two_regions_toml)

ROUTING_KEY = "R0UT1NGKEY0123456789abcdefabcdef"
DEADLINE_S = 30

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]


def wait_until(what, condition, deadline_s=DEADLINE_S, logs=()):
    return harness.wait_until(what, condition, deadline_s, logs)


class Receivers(Served):
    """The HTTP alert receivers on one port: /hook, /slack and /pagerduty/v2/enqueue."""

    def __init__(self):
        self.requests = []
        self.lock = threading.Lock()
        self.slack_throttle = 1
        # What /hook answers (500: a receiver that is down, so delivery keeps retrying), and
        # the bodies it accepted.
        self.hook_status = 200
        self.hook_accepted = []
        receivers = self

        class Handler(QuietHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"null")
                with receivers.lock:
                    receivers.requests.append((self.path, dict(self.headers), body))
                    throttle = self.path == "/slack" and receivers.slack_throttle > 0
                    if throttle:
                        receivers.slack_throttle -= 1
                if self.path == "/slack":
                    if throttle:
                        self.answer(429, b"rate_limited", {"Retry-After": "1"})
                    else:
                        self.answer(200, b"ok")
                elif self.path == "/pagerduty/v2/enqueue":
                    if body.get("routing_key") != ROUTING_KEY:
                        self.answer(400, json.dumps({"status": "invalid event", "message": "Event object is invalid",
                                                     "errors": ["Invalid routing key"]}).encode())
                    else:
                        self.answer(202, json.dumps({"status": "success", "message": "Event processed",
                                                     "dedup_key": body.get("dedup_key")}).encode())
                else:
                    with receivers.lock:
                        status = receivers.hook_status
                        if status == 200:
                            receivers.hook_accepted.append(body)
                    self.answer(status, b"{}")

        super().__init__(Handler)

    def bodies(self, path):
        with self.lock:
            return [body for p, _, body in self.requests if p == path]


def make_certificates(folder):
    """A CA and a server certificate for 127.0.0.1 (rustls refuses a CA as the server's own)."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=switchyard test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                                    "extendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"


class Mailbox:
    """A local SMTP server (aiosmtpd) requiring STARTTLS and AUTH PLAIN, or with `implicit`
    speaking TLS from the first byte (port 465 style); keeps what it accepts."""

    def __init__(self, folder, implicit=False):
        import ssl

        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        folder.mkdir(parents=True, exist_ok=True)
        ca, cert, key = make_certificates(folder)
        self.ca = ca
        self.messages = []
        self.logins = []
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        mailbox = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                mailbox.messages.append({
                    "from": envelope.mail_from, "to": list(envelope.rcpt_tos),
                    "content": envelope.content.decode("utf-8", "replace"),
                    "tls": session.ssl is not None, "authenticated": session.authenticated,
                })
                return "250 OK"

        def authenticate(server, session, envelope, mechanism, auth_data):
            mailbox.logins.append((mechanism, auth_data.login))
            ok = auth_data.login == b"alerts" and auth_data.password == b"mail-s3cret"
            return AuthResult(success=ok)

        self.port = free_port()
        if implicit:
            # aiosmtpd offers AUTH over implicit TLS only without auth_require_tls (that flag
            # looks at STARTTLS); the whole connection is TLS here anyway.
            self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, ssl_context=context,
                                         authenticator=authenticate, auth_require_tls=False)
        else:
            self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, tls_context=context,
                                         require_starttls=True, authenticator=authenticate, auth_require_tls=True)
        self.controller.start()

    def stop(self):
        self.controller.stop()


def email_alert(mailbox, tls):
    return f"""
[[alerts]]
kind = "email"
smtp_server = "127.0.0.1:{mailbox.port}"
tls = "{tls}"
ca_file = "{mailbox.ca}"
from = "switchyard@shop.example"
to = ["oncall@shop.example", "ops@shop.example"]
username = "alerts"
password = {{ file = "smtp.password" }}
per_minute_max = 600
"""


def controller_config(tmp, us, eu, receivers, mailbox, runbook, hook_events=None, extra=""):
    (tmp / "slack.url").write_text(f"{receivers.url}/slack\n")
    (tmp / "pd.key").write_text(ROUTING_KEY)
    (tmp / "smtp.password").write_text("mail-s3cret")
    hook_filter = f"events = {json.dumps(hook_events)}\n" if hook_events else ""
    email = email_alert(mailbox, "starttls") if mailbox is not None else ""
    return controller_toml(tmp / "audit.jsonl", policy="""min_hold_ms = 600000
runbook_retry_ms = 100
startup_grace_ms = 0""") + two_regions_toml(us.port, eu.port) + f"""
{runbook}

[[alerts]]
kind = "webhook"
url = "{receivers.url}/hook"
per_minute_max = 600
{hook_filter}
[[alerts]]
kind = "slack"
url_secret = {{ file = "slack.url" }}
per_minute_max = 600

[[alerts]]
kind = "pagerduty"
url = "{receivers.url}/pagerduty/v2/enqueue"
routing_key = {{ file = "pd.key" }}
per_minute_max = 600
{email}
{extra}
"""


@pytest.fixture
def setup(tmp_path):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built (cargo build -p switchyard)")
    us, eu, receivers = App(), App(), Receivers()
    processes = []

    def start(config):
        path = tmp_path / "switchyard.toml"
        path.write_text(config)
        return start_controller(path, tmp_path, processes, deadline_s=DEADLINE_S)

    yield tmp_path, us, eu, receivers, start
    stop_all(processes, (us, eu, receivers))


def test_a_decision_and_every_region_down_reach_webhook_slack_pagerduty_and_email(setup):
    tmp, us, eu, receivers, start = setup
    try:
        mailbox = Mailbox(tmp / "starttls")
        implicit = Mailbox(tmp / "implicit", implicit=True)
    except ImportError:
        pytest.skip("aiosmtpd is not installed: pip install -r tests/requirements.txt")
    try:
        runbook = '[[runbook]]\nname = "pointer"\nkind = "pointer"\n'
        controller, url, log = start(controller_config(tmp, us, eu, receivers, mailbox, runbook,
                                                       extra=email_alert(implicit, "tls")))

        # The initial placement is a decision: raised when its runbook starts, resolved when
        # it succeeded, on every channel.
        def hook_events():
            return [(b["event"], b["action"]) for b in receivers.bodies("/hook")]

        wait_until("the decision's trigger and resolve at the webhook",
                   lambda: ("decision", "trigger") in hook_events() and ("decision", "resolve") in hook_events(),
                   logs=[log])
        trigger = next(b for b in receivers.bodies("/hook") if b["action"] == "trigger")
        assert trigger["severity"] == "info" and trigger["source"] == "controller", trigger
        assert "us-east-1" in trigger["message"] and trigger["generation"] >= 1, trigger
        resolve = next(b for b in receivers.bodies("/hook") if b["action"] == "resolve")
        assert resolve["incident"] == trigger["incident"], (trigger, resolve)

        pagerduty = wait_until("PagerDuty's trigger and resolve",
                               lambda: len(receivers.bodies("/pagerduty/v2/enqueue")) >= 2 and
                               receivers.bodies("/pagerduty/v2/enqueue"), logs=[log])
        assert pagerduty[0]["event_action"] == "trigger", pagerduty
        assert pagerduty[0]["routing_key"] == ROUTING_KEY
        assert pagerduty[0]["payload"]["severity"] == "info" and pagerduty[0]["payload"]["source"] == "controller"
        assert pagerduty[1] == {"routing_key": ROUTING_KEY, "event_action": "resolve",
                                "dedup_key": pagerduty[0]["dedup_key"]}, pagerduty

        # Slack throttled the first post (429, Retry-After: 1): it was sent again.
        slack = wait_until("Slack's posts after the throttle",
                           lambda: len(receivers.bodies("/slack")) >= 3 and receivers.bodies("/slack"), logs=[log])
        assert slack[0] == slack[1], "the throttled post is retried unchanged"
        assert "switchyard decision" in slack[0]["text"], slack

        messages = wait_until("two mails (trigger and resolve)", lambda: len(mailbox.messages) >= 2 and mailbox.messages,
                              logs=[log])
        first = messages[0]
        assert first["tls"] and first["authenticated"], first
        assert first["from"] == "switchyard@shop.example"
        assert first["to"] == ["oncall@shop.example", "ops@shop.example"]
        assert "Subject: [switchyard] decision:" in first["content"], first["content"]
        assert "Subject: [switchyard] resolved: decision" in messages[1]["content"], messages[1]["content"]
        assert ("PLAIN", b"alerts") in mailbox.logins
        over_tls = wait_until("a mail over implicit TLS", lambda: implicit.messages, logs=[log])
        # (aiosmtpd's session.ssl stays unset with implicit TLS; the port speaks nothing else.)
        assert over_tls[0]["authenticated"], over_tls[0]
        assert "Subject: [switchyard] decision:" in over_tls[0]["content"]

        # Every region down: a critical alert on every channel.
        us.stop()
        eu.stop()
        wait_until("the all_down alert at the webhook", lambda: ("all_down", "trigger") in hook_events(), logs=[log])
        down = next(b for b in receivers.bodies("/hook") if b["event"] == "all_down")
        assert down["severity"] == "critical", down
        wait_until("the all_down page", lambda: any(
            b.get("payload", {}).get("class") == "all_down" and b["payload"]["severity"] == "critical"
            for b in receivers.bodies("/pagerduty/v2/enqueue")), logs=[log])
        wait_until("the all_down mail", lambda: any("all_down" in m["content"] for m in mailbox.messages), logs=[log])

        request = urllib.request.Request(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            metrics = response.read().decode()
        assert 'switchyard_controller_alerts_sent_total{channel="webhook #1"}' in metrics, metrics
        assert 'switchyard_controller_alerts_dropped_total{channel="email #4"} 0' in metrics, metrics
        controller.send_signal(signal.SIGTERM)
        assert controller.wait(timeout=20) == 0, Path(log).read_text()[-3000:]
    finally:
        mailbox.stop()
        implicit.stop()


def test_failing_runbooks_raise_step_failed_then_stuck_and_a_channel_gets_only_its_events(setup):
    tmp, us, eu, receivers, start = setup
    runbook = '[[runbook]]\nname = "broken"\nkind = "command"\nprogram = "false"\nretries = 0\n'
    _, _, log = start(controller_config(tmp, us, eu, receivers, None, runbook, hook_events=["stuck"]))
    wait_until("the stuck alert at the webhook", lambda: receivers.bodies("/hook"), logs=[log])
    hook = receivers.bodies("/hook")
    assert all(b["event"] == "stuck" for b in hook), hook
    assert hook[0]["severity"] == "critical" and "runbooks in a row failed" in hook[0]["message"], hook
    assert "step 'broken'" in hook[0]["message"], hook
    # The channels without a filter saw the failed steps before that.
    wait_until("step_failed at PagerDuty", lambda: any(
        b.get("payload", {}).get("class") == "step_failed" for b in receivers.bodies("/pagerduty/v2/enqueue")),
        logs=[log])


def test_an_incident_left_open_at_a_restart_is_resolved_with_its_dedup_key_once_the_condition_ended(setup):
    tmp, us, eu, receivers, start = setup
    runbook = '[[runbook]]\nname = "pointer"\nkind = "pointer"\n'
    config = controller_config(tmp, us, eu, receivers, None, runbook)
    controller, _, log = start(config)

    def hook(event, action):
        return [b for b in receivers.bodies("/hook") if b["event"] == event and b["action"] == action]

    def paged(action):
        return [b for b in receivers.bodies("/pagerduty/v2/enqueue")
                if b["event_action"] == action and b["dedup_key"].endswith("/all_down")]

    wait_until("the decision resolved", lambda: hook("decision", "resolve"), logs=[log])
    us.stop()
    eu.stop()
    trigger = wait_until("the all_down trigger", lambda: hook("all_down", "trigger"), logs=[log])[0]
    wait_until("the all_down page", lambda: paged("trigger"), logs=[log])
    # The dedup key names the condition and the controller, not when or by which member.
    assert trigger["incident"] == "controller/all_down", trigger
    controller.send_signal(signal.SIGTERM)
    assert controller.wait(timeout=20) == 0, Path(log).read_text()[-3000:]
    assert not hook("all_down", "resolve")

    # The regions came back while the controller was down: the restarted controller finds the
    # incident open in its audit log and resolves it.
    back = [App(us.port), App(eu.port)]
    try:
        start(config)
        resolve = wait_until("the all_down resolve after the restart", lambda: hook("all_down", "resolve"),
                             logs=[log])[0]
        assert resolve["incident"] == trigger["incident"], (trigger, resolve)
        page = wait_until("PagerDuty's resolve", lambda: paged("resolve"), logs=[log])[0]
        assert page == {"routing_key": ROUTING_KEY, "event_action": "resolve",
                        "dedup_key": paged("trigger")[0]["dedup_key"]}, page
        records = [json.loads(line) for line in (tmp / "audit.jsonl").read_text().splitlines()]
        alert = next(r for r in records if r["kind"] == "alert" and r["key"] == "all_down")
        assert alert["incident"] == "controller/all_down", alert
        assert records[-1]["kind"] != "alert" and any(
            r["kind"] == "resolved" and r["key"] == "all_down" for r in records), records[-5:]
    finally:
        for app in back:
            app.stop()


def test_a_restart_while_the_condition_holds_does_not_page_it_again(setup):
    """A single controller restarted while every region is down: before, the restarted
    controller's first raise of all_down went out again (PagerDuty merged it by its dedup key;
    the webhook, Slack and a mail got a second trigger). Now the incident its audit log holds
    open is adopted: no second trigger, and the resolve, with the first trigger's dedup key,
    when the regions come back."""
    tmp, us, eu, receivers, start = setup
    runbook = '[[runbook]]\nname = "pointer"\nkind = "pointer"\n'
    # The restored incident is checked once every region has a verdict (startup_grace_ms = 0
    # would check it before any, find the condition not holding, resolve and raise it again).
    config = controller_config(tmp, us, eu, receivers, None, runbook).replace(
        "startup_grace_ms = 0", "startup_grace_ms = 60000")
    receivers.slack_throttle = 0
    controller, _, log = start(config)

    def hook(event, action):
        return [b for b in receivers.bodies("/hook") if b["event"] == event and b["action"] == action]

    def raises_recorded():
        audit = tmp / "audit.jsonl"
        lines = audit.read_text().splitlines() if audit.exists() else []
        return sum(1 for line in lines if '"kind":"alert"' in line and '"key":"all_down"' in line)

    wait_until("the decision resolved", lambda: hook("decision", "resolve"), logs=[log])
    us.stop()
    eu.stop()
    trigger = wait_until("the all_down trigger", lambda: hook("all_down", "trigger"), logs=[log])[0]
    wait_until("the all_down page", lambda: [b for b in receivers.bodies("/pagerduty/v2/enqueue")
                                             if b["dedup_key"].endswith("/all_down")], logs=[log])

    def slack(head):
        return [b for b in receivers.bodies("/slack") if f"*switchyard {head}*" in b["text"]]

    wait_until("the all_down post on Slack", lambda: slack("all_down"), logs=[log])
    # Delivered on every channel, and recorded so: a restart before that record pages again.
    wait_until("the delivery in the audit log", lambda: any(
        r["kind"] == "delivered" and r["key"] == "all_down" for r in audit_records(tmp)), logs=[log])
    recorded = raises_recorded()
    controller.send_signal(signal.SIGTERM)
    assert controller.wait(timeout=20) == 0, Path(log).read_text()[-3000:]

    # Still down at the restart: the new run raises all_down again, recorded and not sent.
    start(config)
    wait_until("the raise after the restart in the audit log", lambda: raises_recorded() > recorded, logs=[log])
    back = [App(us.port), App(eu.port)]
    try:
        resolve = wait_until("the all_down resolve", lambda: hook("all_down", "resolve"), logs=[log])[0]
        assert resolve["incident"] == trigger["incident"], (trigger, resolve)
        # One queue per channel, in order: a second trigger would have come before the resolve.
        assert len(hook("all_down", "trigger")) == 1, hook("all_down", "trigger")
        wait_until("Slack's resolve", lambda: slack("resolved: all_down"), logs=[log])
        assert len(slack("all_down")) == 1, slack("all_down")
    finally:
        for app in back:
            app.stop()


def audit_records(tmp):
    audit = tmp / "audit.jsonl"
    records = []
    for line in (audit.read_text().splitlines() if audit.exists() else []):
        try:
            records.append(json.loads(line))
        except ValueError:
            pass  # a line being written
    return records


def test_a_controller_killed_before_delivering_a_trigger_pages_it_after_its_restart(setup):
    """The incident is written to the audit log when it opens, before its alert is delivered.
    Before, a controller killed in between (crash, kill -9, OOM) adopted the incident at its
    restart and nobody was ever paged. Now the log records each delivery, and the restart
    pages again (same dedup key) an incident whose trigger was not recorded delivered: the
    webhook, down (500) while the condition started, gets the trigger exactly once."""
    tmp, us, eu, receivers, start = setup
    runbook = '[[runbook]]\nname = "pointer"\nkind = "pointer"\n'
    config = controller_config(tmp, us, eu, receivers, None, runbook).replace(
        "startup_grace_ms = 0", "startup_grace_ms = 60000")
    receivers.slack_throttle = 0
    controller, _, log = start(config)

    def accepted(event, action):
        with receivers.lock:
            return [b for b in receivers.hook_accepted if b["event"] == event and b["action"] == action]

    def raises(pending=None):
        return [r for r in audit_records(tmp) if r["kind"] == "alert" and r["key"] == "all_down"
                and (pending is None or r.get("delivery_pending", False) == pending)]

    wait_until("the decision resolved", lambda: accepted("decision", "resolve"), logs=[log])
    receivers.hook_status = 500
    us.stop()
    eu.stop()
    # (The failover's decision, before it, keeps failing at the webhook: all_down waits behind.)
    trigger = wait_until("the raise in the audit log, its delivery pending", lambda: raises(pending=True),
                         logs=[log])[0]
    wait_until("a failed delivery at the webhook",
               lambda: len(receivers.bodies("/hook")) > len(receivers.hook_accepted), logs=[log])
    assert not any(r["kind"] == "delivered" and r["key"] == "all_down" and not r.get("resolve")
                   for r in audit_records(tmp)), "the webhook refused it: not delivered"
    controller.send_signal(signal.SIGKILL)
    controller.wait(timeout=20)
    assert not accepted("all_down", "trigger")
    before_restart = len(raises())

    # Still down at the restart, the webhook back: paged again, once.
    receivers.hook_status = 200
    start(config)
    paged = wait_until("the all_down trigger after the restart", lambda: accepted("all_down", "trigger"),
                       logs=[log])[0]
    assert paged["incident"] == trigger["incident"] == "controller/all_down", (trigger, paged)
    wait_until("its delivery recorded", lambda: any(
        r["kind"] == "delivered" and r["key"] == "all_down" for r in audit_records(tmp)), logs=[log])
    # The engine's own raise of the condition (still holding) is recorded, not sent again: two
    # records since the restart, the page sent again and that raise.
    wait_until("the engine's raise after the restart", lambda: len(raises()) >= before_restart + 2, logs=[log])
    back = [App(us.port), App(eu.port)]
    try:
        resolve = wait_until("the all_down resolve", lambda: accepted("all_down", "resolve"), logs=[log])[0]
        assert resolve["incident"] == trigger["incident"], (trigger, resolve)
        # One queue per channel, in order: a second trigger would have come before the resolve.
        assert len(accepted("all_down", "trigger")) == 1, accepted("all_down", "trigger")
        # PagerDuty got the trigger again under the same dedup key (it merges it into the
        # incident open since the first run).
        pages = [b for b in receivers.bodies("/pagerduty/v2/enqueue") if b["dedup_key"].endswith("/all_down")]
        assert {b["dedup_key"] for b in pages} == {"controller/all_down"}, pages
    finally:
        for app in back:
            app.stop()


def test_a_retried_runbook_pages_once_per_condition_not_at_every_retry(setup):
    tmp, us, eu, receivers, start = setup
    runbook = '[[runbook]]\nname = "broken"\nkind = "command"\nprogram = "false"\nretries = 0\n'
    _, _, log = start(controller_config(tmp, us, eu, receivers, None, runbook))

    def finished():
        audit = tmp / "audit.jsonl"
        lines = audit.read_text().splitlines() if audit.exists() else []
        return sum(1 for line in lines if '"type":"runbook_finished"' in line)

    # 100 ms doubling: seven failed runbooks in about six seconds.
    wait_until("seven failed runbooks", lambda: finished() >= 7, logs=[log])
    triggers = [b["event"] for b in receivers.bodies("/hook") if b["action"] == "trigger"]
    assert triggers.count("decision") == 1, triggers
    assert triggers.count("step_failed") == 1, triggers
    assert triggers.count("stuck") == 1, triggers
    pages = [b["payload"]["class"] for b in receivers.bodies("/pagerduty/v2/enqueue") if b["event_action"] == "trigger"]
    assert len(pages) <= 3, pages


class RefusingMailServer:
    """A plain SMTP server (no TLS) that refuses RCPT TO for addresses starting with `gone`
    (550 5.1.1, as for an unknown mailbox) and keeps the dialogue and the messages."""

    def __init__(self):
        import socket
        self.lines, self.messages = [], []
        self.socket = socket.socket()
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen()
        self.port = self.socket.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            threading.Thread(target=self.session, args=(connection,), daemon=True).start()

    def session(self, connection):
        reader = connection.makefile("rb")
        connection.sendall(b"220 refusing ESMTP\r\n")
        while True:
            line = reader.readline()
            if not line:
                break
            self.lines.append(line.decode(errors="replace").strip())
            command = line.upper()
            if command.startswith(b"EHLO"):
                connection.sendall(b"250-refusing\r\n250 SIZE 1000000\r\n")
            elif command.startswith(b"RCPT TO:<GONE"):
                connection.sendall(b"550 5.1.1 <gone@shop.example>: user unknown\r\n")
            elif command.startswith(b"DATA"):
                connection.sendall(b"354 go ahead\r\n")
                data = b""
                while not data.endswith(b"\r\n.\r\n"):
                    more = reader.readline()
                    if not more:
                        return
                    data += more
                self.messages.append(data.decode(errors="replace"))
                connection.sendall(b"250 queued\r\n")
            elif command.startswith(b"QUIT"):
                connection.sendall(b"221 bye\r\n")
                break
            else:
                connection.sendall(b"250 OK\r\n")
        connection.close()

    def stop(self):
        self.socket.close()


def test_one_refused_mail_recipient_does_not_keep_the_alert_from_the_others(setup):
    tmp, us, eu, receivers, start = setup
    server = RefusingMailServer()
    try:
        runbook = '[[runbook]]\nname = "pointer"\nkind = "pointer"\n'
        email = f"""
[[alerts]]
kind = "email"
smtp_server = "127.0.0.1:{server.port}"
tls = "none"
from = "switchyard@shop.example"
to = ["oncall@shop.example", "gone@shop.example"]
per_minute_max = 600
"""
        _, _, log = start(controller_config(tmp, us, eu, receivers, None, runbook, extra=email))
        messages = wait_until("the decision mail", lambda: server.messages, logs=[log])
        assert "Subject: [switchyard] decision:" in messages[0], messages[0]
        assert "Content-Transfer-Encoding: quoted-printable" in messages[0], messages[0]
        lines = server.lines
        assert "RCPT TO:<oncall@shop.example>" in lines and "RCPT TO:<gone@shop.example>" in lines, lines
        assert "QUIT" in lines, lines
        wait_until("the refused recipient in the log",
                   lambda: "gone@shop.example: 550 5.1.1" in Path(log).read_text(), logs=[log])
    finally:
        server.stop()


class FakeDigitalOcean(Served):
    """DigitalOcean's API v2 for domain records, in the documented shapes: Bearer token (401
    `{"id": "unauthorized"}` otherwise), `GET /v2/domains/{domain}/records?name=FULL&type=T`
    with `links.pages`, records named relative to the domain, `GET`/`PUT .../records/{id}`
    answering `{"domain_record": ...}`."""

    def __init__(self, token, records):
        self.records = records
        self.puts = []
        fake = self

        class Handler(QuietHandler):
            def do_GET(self):
                self.route("GET", None)

            def do_PUT(self):
                length = int(self.headers.get("Content-Length", "0"))
                self.route("PUT", json.loads(self.rfile.read(length) or b"null"))

            def route(self, method, body):
                from urllib.parse import parse_qs, urlparse
                if self.headers.get("Authorization") != f"Bearer {token}":
                    return self.answer(401, {"id": "unauthorized", "message": "Unable to authenticate you."})
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                parts = url.path.strip("/").split("/")
                if method == "GET" and parts[:2] == ["v2", "domains"] and parts[3:] == ["records"]:
                    domain = parts[2]
                    full = query.get("name")
                    name = None if full is None else ("@" if full == domain else full.removesuffix("." + domain))
                    found = [r for r in fake.records if (name is None or r["name"] == name)
                             and r["type"] == query.get("type", r["type"])]
                    return self.answer(200, {"domain_records": found, "links": {}, "meta": {"total": len(found)}})
                if parts[:2] == ["v2", "domains"] and len(parts) == 5 and parts[3] == "records":
                    record = next((r for r in fake.records if str(r["id"]) == parts[4]), None)
                    if record is None:
                        return self.answer(404, {"id": "not_found",
                                                 "message": "The resource you were accessing could not be found."})
                    if method == "PUT":
                        fake.puts.append(body)
                        record["data"] = body["data"]
                    return self.answer(200, {"domain_record": record})
                return self.answer(404, {"id": "not_found", "message": "The resource you were accessing could not be found."})

        super().__init__(Handler)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_failover_moves_the_digitalocean_record_and_the_audit_log_shows_the_read_back(setup):
    tmp, us, eu, receivers, start = setup
    record = {"id": 3352893, "type": "A", "name": "www", "data": "192.0.2.10", "priority": None, "port": None,
              "ttl": 30, "weight": None, "flags": None, "tag": None}
    fake = FakeDigitalOcean("dop_v1_integration", [record])
    try:
        (tmp / "do.token").write_text("dop_v1_integration\n")
        runbook = f"""
[[runbook]]
name = "do-dns"
kind = "digitalocean"
timeout_ms = 10000

[runbook.digitalocean]
token = {{ file = "do.token" }}
api_url = "{fake.url}"
domain = "shop.example"
record = "www.shop.example"
type = "A"
values = {{ us-east-1 = "192.0.2.10", eu-west-1 = "198.51.100.20" }}
"""
        _, _, log = start(controller_config(tmp, us, eu, receivers, None, runbook))
        audit = tmp / "audit.jsonl"

        def steps():
            if not audit.exists():
                return []
            entries = [json.loads(line) for line in audit.read_text().splitlines() if line.strip()]
            return [e for e in entries if e.get("step") == "do-dns"]

        wait_until("the initial placement's step", lambda: any(e.get("outcome") == "ok" for e in steps()), logs=[log])
        assert "already 192.0.2.10" in steps()[0]["detail"], steps()
        assert fake.puts == []
        us.stop()
        wait_until("the record to move", lambda: record["data"] == "198.51.100.20", logs=[log])
        assert fake.puts == [{"type": "A", "data": "198.51.100.20"}], fake.puts
        moved = wait_until("the audit entry", lambda: [e for e in steps() if "set to 198.51.100.20" in e["detail"]],
                           logs=[log])
        assert "(was 192.0.2.10); read back" in moved[0]["detail"], moved
        assert moved[0]["outcome"] == "ok"
    finally:
        fake.stop()


def run_cli(*args, env=None):
    return subprocess.run([str(BINARY), *args], env=env or dict(os.environ), capture_output=True, text=True,
                          timeout=30)


def test_config_check_points_at_provider_and_alert_mistakes(tmp_path):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built (cargo build -p switchyard)")
    (tmp_path / "cf.token").write_text("token\n")
    config = tmp_path / "bad.toml"
    lines = [
        *NUMBERED_HEAD_LINES,                               # 1-16
        "[[runbook]]",                                      # 17
        'name = "cf"',                                      # 18
        'kind = "cloudflare"',                              # 19
        "[runbook.cloudflare]",                             # 20
        'token = { file = "cf.token" }',                    # 21
        'zone_id = "xyz"',                                  # 22
        'record = "shop.example.com"',                      # 23
        'type = "A"',                                       # 24
        'values = { nyc3 = "192.0.2.1", ams3 = "not-an-ip" }',  # 25
        "[[runbook]]",                                      # 26
        'name = "do"',                                      # 27
        'kind = "digitalocean"',                            # 28
        "[[alerts]]",                                       # 29
        'kind = "pagerduty"',                               # 30
        "[[alerts]]",                                       # 31
        'kind = "email"',                                   # 32
        'smtp_server = "smtp.example.com"',                 # 33
        'tls = "none"',                                     # 34
        'from = "switchyard@shop.example.com"',             # 35
        'to = ["oncall@shop.example.com"]',                 # 36
        'username = "u"',                                   # 37
        'password = { file = "cf.token" }',                 # 38
        "[[alerts]]",                                       # 39
        'kind = "sms"',                                     # 40
    ]
    config.write_text("\n".join(lines) + "\n")
    result = run_cli("config", "check", str(config))
    assert result.returncode == 1, result.stdout
    expected = [
        "22:11: error: cloudflare step 'cf' zone_id 'xyz' is not a Cloudflare identifier",
        "25:39: error: cloudflare step 'cf' value of ams3: 'not-an-ip' is not an IPv4 address",
        "28:8: error: step 'do' (kind = \"digitalocean\") has no [runbook.digitalocean] table",
        "30:8: error: alert pagerduty #1 has no routing_key",
        "38:12: error: alert email #2: the password would cross the network in clear",
        "40:8: error: unknown alert kind 'sms'",
    ]
    for line in expected:
        assert f"{config}:{line}" in result.stderr, f"missing {line!r} in:\n{result.stderr}"


def test_the_woocommerce_digitalocean_example_validates_with_its_secrets_in_the_environment():
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built (cargo build -p switchyard)")
    example = REPO / "docs" / "examples" / "woocommerce-digitalocean.toml"
    secrets = {"DIGITALOCEAN_TOKEN": "dop_v1_example", "CLOUDFLARE_API_TOKEN": "cf-example",
               "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T000/B000/XXXX",
               "PAGERDUTY_ROUTING_KEY": "example-routing-key", "SMTP_PASSWORD": "example"}
    good = run_cli("config", "check", str(example), env=dict(os.environ, **secrets))
    assert good.returncode == 0, good.stderr
    assert "ok (2 regions" in good.stdout and "5 runbook steps" in good.stdout, good.stdout
    # Without them, each missing secret is named with its line.
    bare = {k: v for k, v in os.environ.items() if k not in secrets}
    missing = run_cli("config", "check", str(example), env=bare)
    assert missing.returncode == 1
    for variable in secrets:
        assert f"the environment variable {variable} is not set" in missing.stderr, missing.stderr


def test_config_check_warns_about_a_short_reserved_ip_timeout_and_an_inline_slack_url(tmp_path):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built (cargo build -p switchyard)")
    (tmp_path / "do.token").write_text("dop_v1_x\n")
    config = tmp_path / "warn.toml"
    config.write_text("\n".join([
        "[quorum]",                                                    # 1
        'vantages = ["controller"]',                                  # 2
        "[[regions]]",                                                 # 3
        'name = "nyc3-a"',                                             # 4
        "priority = 1",                                                # 5
        "[[regions]]",                                                 # 6
        'name = "nyc3-b"',                                             # 7
        "priority = 2",                                                # 8
        "[[checks]]",                                                  # 9
        'name = "a"',                                                  # 10
        'region = "nyc3-a"',                                           # 11
        'kind = { type = "tcp", address = "127.0.0.1:1" }',            # 12
        "[[checks]]",                                                  # 13
        'name = "b"',                                                  # 14
        'region = "nyc3-b"',                                           # 15
        'kind = { type = "tcp", address = "127.0.0.1:2" }',            # 16
        "[[runbook]]",                                                 # 17
        'name = "ip"',                                                 # 18
        'kind = "digitalocean"',                                       # 19
        "[runbook.digitalocean]",                                      # 20
        'token = { file = "do.token" }',                               # 21
        'reserved_ip = "203.0.113.7"',                                 # 22
        "droplets = { nyc3-a = 3164444, nyc3-b = 3164445 }",           # 23
        "[[alerts]]",                                                  # 24
        'kind = "slack"',                                              # 25
        'url = "https://hooks.slack.com/services/T000/B000/XXXX"',     # 26
    ]) + "\n")
    result = run_cli("config", "check", str(config))
    assert result.returncode == 0, result.stderr
    assert (f"{config}:19:8: warning: step 'ip': timeout_ms = 5000 cuts the reserved IP's action off before "
            "action_wait_ms = 60000 has passed") in result.stderr, result.stderr
    assert f"{config}:26:7: warning: alert slack #1: the Slack webhook URL is a secret" in result.stderr, result.stderr
