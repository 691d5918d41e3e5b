"""`switchyard dns` as a black box: the real binary on loopback, asked by dig (bind9-dnsutils) and
dnspython, with health pushed over its admin API the way the controller does it."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.xfr
import dns.zone
import pytest

from harness import failover_zone_toml

REPO = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("SWITCHYARD_BIN", REPO / "target" / "debug" / "switchyard"))
START_DEADLINE_S = 20
CHANGE_DEADLINE_S = 15
TOKEN = "dns-integration-token-0123456789"

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]

CONFIG = """
[store]
listen = "127.0.0.1:1"   # another part's section: ignored by `switchyard dns`

[dns]
axfr_allow = ["127.0.0.2"]
reload_interval_ms = 100

""" + failover_zone_toml("serial = 2026112401\nminimum = 30", [
    ("plain", "A", ["192.0.2.1"]),
    ("plain", "AAAA", ["2001:db8::1"]),
    ("www", "CNAME", ["plain"]),
    ("@", "MX", ["10 mail.shop.example."]),
    ("mail", "A", ["192.0.2.25"]),
    ("@", "TXT", ["v=spf1 mx -all"]),
    ("_https._tcp", "SRV", ["10 5 443 plain.shop.example."]),
    ("big", "TXT", [str(i) * 200 for i in range(6)]),
])


class DnsServer:
    def __init__(self, workdir, config_text, token=TOKEN):
        self.workdir = workdir
        self.config = workdir / "deploy.toml"
        self.config.write_text(config_text)
        self.token = token
        self.log = workdir / "dns.log"
        self.state_dir = workdir / "state"
        self.process = None

    def start(self):
        ready = self.workdir / "ready"
        if ready.exists():
            ready.unlink()
        command = [str(BINARY), "dns", "--config", str(self.config), "--listen", "127.0.0.1:0",
                   "--admin-listen", "127.0.0.1:0", "--state-dir", str(self.state_dir),
                   "--ready-file", str(ready), "--seed", "7"]
        env = dict(os.environ, SWITCHYARD_LOG="info")
        env.pop("SWITCHYARD_CONTROL_TOKEN", None)
        if self.token:
            env["SWITCHYARD_CONTROL_TOKEN"] = self.token
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))
        deadline = time.monotonic() + START_DEADLINE_S
        while not (ready.exists() and len(ready.read_text().splitlines()) == 2):
            if self.process.poll() is not None:
                raise AssertionError(f"dns exited: {self.log.read_text()[-2000:]}")
            assert time.monotonic() < deadline, f"dns not ready in {START_DEADLINE_S}s: {self.log.read_text()[-2000:]}"
            time.sleep(0.05)
        dns_address, admin_address = ready.read_text().splitlines()
        self.port = int(dns_address.rsplit(":", 1)[1])
        self.admin = f"http://{admin_address}"

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            assert self.process.wait(timeout=20) == 0, self.log.read_text()[-2000:]

    def dig(self, *args):
        result = subprocess.run(["dig", "@127.0.0.1", "-p", str(self.port), "+time=2", "+tries=1", *args],
                                capture_output=True, text=True, timeout=30)
        return result.stdout

    def short(self, name, rtype="A"):
        return self.dig(name, rtype, "+short").split()

    def ask(self, name, rtype="A", tcp=False, **kwargs):
        query = dns.message.make_query(name, rtype, **kwargs)
        send = dns.query.tcp if tcp else dns.query.udp
        return send(query, "127.0.0.1", port=self.port, timeout=3)

    def put(self, path, body, token=None):
        request = urllib.request.Request(self.admin + path, data=json.dumps(body).encode(), method="PUT",
                                         headers={"Content-Type": "application/json"})
        token = self.token if token is None else token
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def get(self, path):
        with urllib.request.urlopen(self.admin + path, timeout=5) as response:
            return response.read().decode()


@pytest.fixture
def server(tmp_path):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built")
    server = DnsServer(tmp_path, CONFIG)
    server.start()
    yield server
    server.stop()


def wait_for(condition, what):
    deadline = time.monotonic() + CHANGE_DEADLINE_S
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_records_of_each_type_with_dig(server):
    assert server.short("plain.shop.example", "A") == ["192.0.2.1"]
    assert server.short("plain.shop.example", "AAAA") == ["2001:db8::1"]
    assert server.short("www.shop.example", "A") == ["plain.shop.example.", "192.0.2.1"]
    assert server.short("www.shop.example", "CNAME") == ["plain.shop.example."]
    assert server.short("shop.example", "MX") == ["10", "mail.shop.example."]
    assert server.short("shop.example", "TXT") == ['"v=spf1', 'mx', '-all"']
    assert server.short("_https._tcp.shop.example", "SRV") == ["10", "5", "443", "plain.shop.example."]
    assert server.short("shop.example", "NS") == ["ns1.shop.example."]
    soa = server.short("shop.example", "SOA")
    assert soa[0] == "ns1.shop.example." and soa[2] == "2026112401"
    full = server.dig("plain.shop.example", "A")
    assert re.search(r"flags: qr aa", full), full
    assert "udp: 1232" in full, "EDNS(0) advertised"


def test_nxdomain_and_nodata_with_dnspython(server):
    missing = server.ask("nope.shop.example", "A")
    assert missing.rcode() == dns.rcode.NXDOMAIN
    assert missing.flags & dns.flags.AA
    assert [rrset.rdtype for rrset in missing.authority] == [dns.rdatatype.SOA]
    assert missing.authority[0].ttl == 30, "negative TTL: min(SOA TTL, MINIMUM)"
    nodata = server.ask("plain.shop.example", "MX")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    assert [rrset.rdtype for rrset in nodata.authority] == [dns.rdatatype.SOA]
    outside = server.ask("www.example.org", "A")
    assert outside.rcode() == dns.rcode.REFUSED


def test_case_is_preserved(server):
    response = server.ask("PlAiN.ShOp.ExAmPlE", "A")
    assert str(response.answer[0].name) == "PlAiN.ShOp.ExAmPlE."
    assert response.answer[0][0].address == "192.0.2.1"


def test_truncation_and_tcp_fallback(server):
    truncated = server.ask("big.shop.example", "TXT")
    assert truncated.flags & dns.flags.TC and not truncated.answer
    response, used_tcp = dns.query.udp_with_fallback(dns.message.make_query("big.shop.example", "TXT"),
                                                     "127.0.0.1", port=server.port, timeout=3)
    assert used_tcp
    assert len(response.answer[0]) == 6
    assert "flags: qr aa tc" in server.dig("big.shop.example", "TXT", "+noedns", "+ignore")
    # dig retries over TCP by itself after a truncated UDP answer.
    assert len(server.dig("big.shop.example", "TXT", "+noedns", "+short").splitlines()) == 6


def test_axfr_refused_unless_allowed(server):
    refused = server.dig("shop.example", "AXFR")
    assert "Transfer failed" in refused, refused
    with pytest.raises(dns.xfr.TransferError):
        dns.zone.from_xfr(dns.query.xfr("127.0.0.1", "shop.example", port=server.port, timeout=5))
    allowed = server.dig("-b", "127.0.0.2", "shop.example", "AXFR")
    assert "XFR size" in allowed, allowed
    zone = dns.zone.from_xfr(dns.query.xfr("127.0.0.1", "shop.example", port=server.port, timeout=5,
                                           source="127.0.0.2"))
    assert zone.find_rdataset("plain", "A")[0].address == "192.0.2.1"


def test_failover_flips_on_health_push_and_ignores_stale_generations(server):
    assert server.short("app.shop.example") == ["192.0.2.10"]
    assert server.ask("app.shop.example").answer[0].ttl == 10
    status, body = server.put("/v1/health", {"generation": 5, "targets": {"us-east-1": "unhealthy"}})
    assert status == 200, body
    assert server.short("app.shop.example") == ["198.51.100.10"]
    # A controller of an older generation says the primary is fine: refused, no flip back.
    status, body = server.put("/v1/health", {"generation": 4, "targets": {"us-east-1": "healthy"}})
    assert status == 409 and body["error"] == "stale_generation", body
    assert server.short("app.shop.example") == ["198.51.100.10"]
    # Equal generation is idempotent.
    assert server.put("/v1/health", {"generation": 5, "targets": {"us-east-1": "unhealthy"}})[0] == 200
    # Both down: static stability answers the primary.
    assert server.put("/v1/health", {"generation": 6, "targets": {"eu-west-1": "unhealthy"}})[0] == 200
    assert server.short("app.shop.example") == ["192.0.2.10"]
    assert server.put("/v1/health", {"generation": 7, "targets": {"us-east-1": "healthy",
                                                                  "eu-west-1": "healthy"}})[0] == 200
    assert server.short("app.shop.example") == ["192.0.2.10"]
    view = json.loads(server.get("/v1/health"))
    assert view["generation"] == 7 and view["targets"]["us-east-1"] == "healthy"
    metrics = server.get("/metrics")
    assert 'switchyard_dns_view_pushes_total{outcome="stale"} 1' in metrics
    assert re.search(r'switchyard_dns_queries_total\{name="app.shop.example.",type="A",rcode="NOERROR"', metrics)


def test_pushes_need_the_token_and_valid_bodies(server):
    status, body = server.put("/v1/health", {"generation": 1, "targets": {"us-east-1": "unhealthy"}}, token="wrong")
    assert status == 401, body
    assert server.short("app.shop.example") == ["192.0.2.10"]
    status, body = server.put("/v1/health", {"generation": 1, "targets": {"us-east-1": "sideways"}})
    assert status == 400 and "sideways" in body["message"], body


def test_active_region_txt_pointer(server):
    status, body = server.put("/v1/txt", {"generation": 3, "name": "_active-region.shop.example.",
                                          "value": "eu-west-1"})
    assert status == 200, body
    assert server.short("_active-region.shop.example", "TXT") == ['"eu-west-1"']
    status, body = server.put("/v1/txt", {"generation": 2, "name": "_active-region.shop.example.",
                                          "value": "us-east-1"})
    assert status == 409, body
    assert server.short("_active-region.shop.example", "TXT") == ['"eu-west-1"']
    status, body = server.put("/v1/txt", {"generation": 3, "name": "x.example.org.", "value": "v"})
    assert status == 400 and "outside" in body["message"], body
    # A wildcard name would answer only its literal self, unlike a configured wildcard: refused.
    status, body = server.put("/v1/txt", {"generation": 3, "name": "*.eu.shop.example.", "value": "v"})
    assert status == 400 and "wildcard" in body["message"], body


def test_view_survives_a_restart(server):
    assert server.put("/v1/health", {"generation": 9, "targets": {"us-east-1": "unhealthy"}})[0] == 200
    server.stop()
    server.start()
    assert server.short("app.shop.example") == ["198.51.100.10"]
    assert server.put("/v1/health", {"generation": 8, "targets": {"us-east-1": "healthy"}})[0] == 409


def test_hot_reload_and_bad_files_keep_the_old_zones(server):
    assert server.short("new.shop.example") == []
    server.config.write_text(CONFIG + '\n[[dns.zones.records]]\nname = "new"\ntype = "A"\nvalues = ["192.0.2.77"]\n')
    wait_for(lambda: server.short("new.shop.example") == ["192.0.2.77"], "the reloaded record")
    lines = (CONFIG + '\n[[dns.zones.records]]\nname = "bad"\ntype = "A"\nvalues = ["192.0.2.300"]\n')
    server.config.write_text(lines)
    bad_line = lines.splitlines().index('values = ["192.0.2.300"]') + 1
    wait_for(lambda: f"deploy.toml:{bad_line}:" in server.log.read_text(), "the rejected reload in the log")
    assert server.short("new.shop.example") == ["192.0.2.77"]
    assert server.short("plain.shop.example") == ["192.0.2.1"]
    server.config.write_text(CONFIG)
    server.process.send_signal(signal.SIGHUP)
    wait_for(lambda: server.short("new.shop.example") == [], "the record removed after SIGHUP")


def test_garbage_is_survived(server):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        for packet in [b"", b"\x00", b"\x12\x34\x01\x00\x00\x01" + b"\x00" * 6, os.urandom(300)]:
            sock.sendto(packet, ("127.0.0.1", server.port))
        formerr = None
        sock.sendto(b"\x12\x34\x01\x00\x00\x01" + b"\x00" * 6, ("127.0.0.1", server.port))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            data = sock.recv(4096)
            if data[:2] == b"\x12\x34":
                formerr = data
                break
        assert formerr is not None and formerr[3] & 0x0F == dns.rcode.FORMERR
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as tcp:
        tcp.sendall(b"\x00\x00")  # announces an empty message: the server hangs up
        assert tcp.recv(10) == b""
    assert server.short("plain.shop.example") == ["192.0.2.1"]
    assert server.process.poll() is None


def test_queries_beyond_4096_bytes_are_answered(server):
    """A query padded (EDNS padding, RFC 7830) past 4096 bytes is answered over TCP, up to the
    65,535 bytes DNS over TCP allows, and over UDP, as BIND answers them."""
    for size in (4097, 20000, 65535):
        query = dns.message.make_query("plain.shop.example", "A", use_edns=0)
        wire_size = len(query.to_wire())
        # The payload size also bounds what dnspython writes.
        query.use_edns(0, payload=65535, options=[dns.edns.GenericOption(dns.edns.OptionType.PADDING,
                                                          b"\0" * (size - wire_size - 4))])
        assert len(query.to_wire()) == size
        answer = dns.query.tcp(query, "127.0.0.1", port=server.port, timeout=5)
        assert answer.rcode() == dns.rcode.NOERROR and answer.answer[0][0].address == "192.0.2.1", size
    udp = dns.message.make_query("plain.shop.example", "A", use_edns=0, payload=65535,
                                 options=[dns.edns.GenericOption(dns.edns.OptionType.PADDING, b"\0" * 9000)])
    answer = dns.query.udp(udp, "127.0.0.1", port=server.port, timeout=5)
    assert answer.rcode() == dns.rcode.NOERROR and answer.answer[0][0].address == "192.0.2.1"
    # dig pads only to blocks of at most 512 bytes; it is answered the same way.
    assert server.short("plain.shop.example", "A") == server.dig("plain.shop.example", "A", "+padding=512",
                                                                   "+short").split()


def test_rate_limited_answers_are_slipped_and_dig_gets_them_over_tcp(tmp_path):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built")
    limited = CONFIG + "\n[dns.rate_limit]\nresponses_per_second = 2\nslip = 1\nwindow_s = 60\n"
    server = DnsServer(tmp_path, limited)
    server.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            for query_id in range(10):
                query = dns.message.make_query("plain.shop.example", "A")
                query.id = query_id
                sock.sendto(query.to_wire(), ("127.0.0.1", server.port))
            answers = [dns.message.from_wire(sock.recv(4096)) for _ in range(10)]
        full = [a for a in answers if a.answer]
        slipped = [a for a in answers if a.flags & dns.flags.TC]
        # Two a second pass; with slip 1 every limited answer comes back empty with TC set.
        assert 2 <= len(full) < 10, answers
        assert len(full) + len(slipped) == 10
        assert all(not a.answer for a in slipped)
        # dig retries a truncated answer over TCP, which is never limited.
        udp_only = server.dig("plain.shop.example", "A", "+ignore")
        assert "flags: qr aa tc" in udp_only, udp_only
        assert server.short("plain.shop.example") == ["192.0.2.1"]
        metrics = server.get("/metrics")
        assert re.search(r'switchyard_dns_rate_limited_responses_total\{action="slipped"\} [1-9]', metrics), metrics
    finally:
        server.stop()


def test_one_client_cannot_hold_every_tcp_slot(tmp_path):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built")
    server = DnsServer(tmp_path, CONFIG.replace("[dns]\n", "[dns]\ntcp_connections_per_client_max = 3\n", 1))
    server.start()
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(3)]
    try:
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        try:
            assert extra.recv(10) == b"", "the fourth connection of one address is closed at once"
        except ConnectionResetError:
            pass
        finally:
            extra.close()
        # Another client address is still answered over TCP.
        query = dns.message.make_query("plain.shop.example", "A")
        answer = dns.query.tcp(query, "127.0.0.1", port=server.port, timeout=5, source="127.0.0.4")
        assert [r.to_text() for r in answer.answer[0]] == ["192.0.2.1"]
    finally:
        for connection in held:
            connection.close()
        server.stop()


NAMED = shutil.which("named") or "/usr/sbin/named"
# Long enough that within a test only a NOTIFY can make BIND fetch a zone again.
SOA_TIMERS = "refresh = 3600\nretry = 3600"

NESTED_CONFIG = """
[dns]
axfr_allow = ["127.0.0.1"]
notify = [NOTIFY_TARGETS]

[[dns.zones]]
origin = "example."
ns = ["ns1"]

[dns.zones.soa]
serial = 100
""" + SOA_TIMERS + """

[[dns.zones.records]]
name = "ns1"
type = "A"
values = ["192.0.2.1"]
""" + failover_zone_toml("serial = 2026112401\n" + SOA_TIMERS)


def free_port():
    """A port free for UDP and TCP on 127.0.0.1 (as BIND listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
                socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no port free for UDP and TCP")


class Secondary:
    """BIND9 `named` as a secondary of `zones`, transferred from switchyard on `primary_port`."""

    def __init__(self, directory, port, primary_port, zones, key=None, algorithm="hmac-sha256"):
        """`key`: (name, base64 secret) of `algorithm`: the secondary transfers with it
        (`primaries { ... key }`) and takes only NOTIFYs signed with it (`allow-notify { key }`)."""
        self.directory = directory
        self.port = port
        directory.mkdir()
        d = str(directory)
        text = (f'options {{\n  directory "{d}";\n  pid-file "{d}/named.pid";\n  session-keyfile "{d}/session.key";\n'
                f'  managed-keys-directory "{d}";\n  listen-on port {port} {{ 127.0.0.1; }};\n  listen-on-v6 {{ none; }};\n'
                f'  recursion no;\n  notify no;\n  dnssec-validation no;\n}};\ncontrols {{ }};\n')
        keyed, allow_notify = "", ""
        if key:
            name, secret = key
            text += f'key "{name}" {{\n  algorithm {algorithm};\n  secret "{secret}";\n}};\n'
            keyed = f' key "{name}"'
            allow_notify = f'  allow-notify {{ key "{name}"; }};\n'
        for zone in zones:
            text += (f'zone "{zone}" {{\n  type secondary;\n  primaries {{ 127.0.0.1 port {primary_port}{keyed}; }};\n'
                     f'{allow_notify}  file "{d}/{zone}.db";\n}};\n')
        self.conf = directory / "named.conf"
        self.conf.write_text(text)
        self.log = directory / "named.log"
        self.process = subprocess.Popen([NAMED, "-g", "-4", "-n", "1", "-c", str(self.conf)],
                                        stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)

    def dig(self, *args):
        result = subprocess.run(["dig", "@127.0.0.1", "-p", str(self.port), "+time=1", "+tries=1", "+norec", *args],
                                capture_output=True, text=True, timeout=30)
        return result.stdout

    def short(self, name, rtype="A"):
        return self.dig(name, rtype, "+short").split()

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_until(condition, what, log_paths, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in log_paths if p.exists())
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{logs}"
        time.sleep(0.1)


def test_bind_secondaries_follow_a_failover_by_notify_and_refer_to_the_child_zone(tmp_path):
    """BIND9 as a secondary of the parent and the child zone (refresh 3600 s: only a NOTIFY makes
    it fetch within the test) sees a failover flipped by a health push; BIND9 as a secondary of
    the parent alone refers a name of the child to the child's name servers (the delegation
    switchyard puts in the parent's transfer), where it had answered NXDOMAIN."""
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built")
    if not Path(NAMED).exists():
        pytest.skip("named not installed: apt-get install bind9 (scripts/install-test-deps.sh)")
    both_port, parent_port = free_port(), free_port()
    targets = f'"127.0.0.1:{both_port}", "127.0.0.1:{parent_port}"'
    server = DnsServer(tmp_path, NESTED_CONFIG.replace("NOTIFY_TARGETS", targets))
    server.start()
    secondaries = []
    try:
        both = Secondary(tmp_path / "both", both_port, server.port, ["example", "shop.example"])
        secondaries.append(both)
        parent = Secondary(tmp_path / "parent", parent_port, server.port, ["example"])
        secondaries.append(parent)
        logs = [server.log, both.log, parent.log]
        wait_until(lambda: both.short("app.shop.example") == ["192.0.2.10"], "BIND's first transfer", logs)
        assert "flags: qr aa" in both.dig("app.shop.example", "A")
        status, body = server.put("/v1/health", {"generation": 3, "targets": {"us-east-1": "unhealthy"}})
        assert status == 200, body
        assert server.short("app.shop.example") == ["198.51.100.10"]
        wait_until(lambda: both.short("app.shop.example") == ["198.51.100.10"],
                   "the failover on BIND's secondary", logs)
        assert both.short("shop.example", "SOA")[2] == "2026112402", "the serial moved by the push"
        wait_until(lambda: re.search(r'switchyard_dns_notifies_total\{outcome="acknowledged"\} [1-9]',
                                     server.get("/metrics")), "an acknowledged NOTIFY", logs)
        assert "received notify for zone 'shop.example'" in both.log.read_text()
        # The parent's secondary: a referral to the child's name servers, with glue. The push
        # changed the child alone: the parent keeps its serial (and got no NOTIFY for it).
        wait_until(lambda: parent.short("example", "SOA")[2:3] == ["100"], "the parent's transfer", logs)
        assert server.short("example", "SOA")[2] == "100", "the parent's serial holds"
        referral = dns.query.udp(dns.message.make_query("app.shop.example", "A"), "127.0.0.1",
                                 port=parent.port, timeout=3)
        assert referral.rcode() == dns.rcode.NOERROR, referral
        assert not referral.flags & dns.flags.AA and not referral.answer, referral
        assert [(str(r.name), r.rdtype) for r in referral.authority] == [("shop.example.", dns.rdatatype.NS)], referral
        assert [r.to_text() for r in referral.authority[0]] == ["ns1.shop.example."]
        assert [(str(r.name), r[0].to_text()) for r in referral.additional] == [("ns1.shop.example.", "192.0.2.53")]
        assert "status: NXDOMAIN" in parent.dig("nope.example"), "the parent's own names still answer"
        # DS of the child's apex: the parent side answers it, here as on BIND serving both zones.
        for port in (server.port, both.port):
            ds = dns.query.udp(dns.message.make_query("shop.example", "DS"), "127.0.0.1", port=port, timeout=3)
            assert ds.rcode() == dns.rcode.NOERROR and ds.flags & dns.flags.AA and not ds.answer, ds
            assert [(str(r.name), r.rdtype) for r in ds.authority] == [("example.", dns.rdatatype.SOA)], ds
    finally:
        for secondary in secondaries:
            secondary.stop()
        server.stop()


KEYED_HOSTS = 2000
TSIG_SECRET = "2HK0YGgkgF7e+w1Yk1tBF5h5qGFQf3c1l0jC2hL6R3A="
OTHER_SECRET = "c3dpdGNoeWFyZC1vdGhlci1rZXktc2VjcmV0LTMyYg=="

KEYED_CONFIG = """
[dns]
notify = [NOTIFY_TARGETS]
transfer_key = "xfr-key"
notify_key = "xfr-key"

[[dns.tsig_keys]]
key = { file = "xfr.key" }
""" + failover_zone_toml("serial = 2026112401\n" + SOA_TIMERS,
                         # Enough records for a transfer of several messages, each signed.
                         [(f"h{i}", "A", [f"198.51.100.{i % 250}"]) for i in range(KEYED_HOSTS)])


def keyed_server(tmp_path, targets, algorithm="hmac-sha256", secret=TSIG_SECRET):
    (tmp_path / "xfr.key").write_text(
        f'key "xfr-key" {{\n\talgorithm {algorithm};\n\tsecret "{secret}";\n}};\n')
    server = DnsServer(tmp_path, KEYED_CONFIG.replace("NOTIFY_TARGETS", targets))
    server.start()
    return server


def test_bind_transfers_a_keyed_zone_with_the_key_and_follows_a_signed_notify(tmp_path):
    """BIND9 as a secondary with `primaries { ... key "xfr-key"; }` and `allow-notify { key
    "xfr-key"; }` transfers the zone whose transfers need that key, and a NOTIFY signed with it
    makes BIND fetch a changed zone (refresh 3600 s: nothing else would within the test). dig is
    the client: without the key, or with another secret, nothing is transferred."""
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built")
    if not Path(NAMED).exists():
        pytest.skip("named not installed: apt-get install bind9 (scripts/install-test-deps.sh)")
    port = free_port()
    server = keyed_server(tmp_path, f'"127.0.0.1:{port}"')
    secondary = None
    try:
        # dig as a client: the key transfers; no key or another secret does not.
        signed = server.dig("shop.example", "AXFR", "-y", f"hmac-sha256:xfr-key:{TSIG_SECRET}")
        assert "app.shop.example." in signed and "; Transfer failed" not in signed, signed[-2000:]
        assert "tsig verify failure" not in signed.lower(), signed
        assert signed.count("\tSOA\t") == 2, signed[-2000:]
        messages = re.search(r"XFR size: (\d+) records \(messages (\d+)", signed)
        assert messages and int(messages.group(1)) > KEYED_HOSTS and int(messages.group(2)) >= 2, signed[-500:]
        unsigned = server.dig("shop.example", "AXFR")
        assert "Transfer failed" in unsigned and "app.shop.example." not in unsigned, unsigned
        forged = server.dig("shop.example", "AXFR", "-y", f"hmac-sha256:xfr-key:{OTHER_SECRET}")
        assert "app.shop.example." not in forged, forged
        assert "NOTAUTH" in forged or "BADSIG" in forged or "Transfer failed" in forged, forged
        # A signed query over UDP gets a signed answer dig verifies.
        answer = server.dig("app.shop.example", "A", "-y", f"hmac-sha256:xfr-key:{TSIG_SECRET}")
        assert "192.0.2.10" in answer and "status: NOERROR" in answer, answer
        assert "TSIG" in answer and "NOERROR" in answer.split("TSIG", 1)[1], answer
        # BIND as the secondary.
        secondary = Secondary(tmp_path / "keyed", port, server.port, ["shop.example"],
                              key=("xfr-key", TSIG_SECRET))
        logs = [server.log, secondary.log]
        wait_until(lambda: secondary.short("app.shop.example") == ["192.0.2.10"], "BIND's signed transfer", logs)
        assert secondary.short(f"h{KEYED_HOSTS - 1}.shop.example") == [f"198.51.100.{(KEYED_HOSTS - 1) % 250}"]
        completed = re.search(r"transfer of 'shop.example/IN' from 127.0.0.1#\d+: Transfer completed: (\d+) messages",
                              secondary.log.read_text())
        assert completed and int(completed.group(1)) >= 2, "BIND verified a transfer of several signed messages"
        status, body = server.put("/v1/health", {"generation": 3, "targets": {"us-east-1": "unhealthy"}})
        assert status == 200, body
        wait_until(lambda: secondary.short("app.shop.example") == ["198.51.100.10"],
                   "the failover on BIND's secondary after a signed NOTIFY", logs)
        assert secondary.short("shop.example", "SOA")[2] == "2026112402"
        log = secondary.log.read_text()
        assert "received notify for zone 'shop.example': TSIG 'xfr-key'" in log, log[-3000:]
        wait_until(lambda: re.search(r'switchyard_dns_notifies_total\{outcome="acknowledged"\} [1-9]',
                                     server.get("/metrics")), "an acknowledged signed NOTIFY", logs)
    finally:
        if secondary:
            secondary.stop()
        server.stop()


def test_bind_with_another_secret_gets_nothing_and_refuses_our_notify(tmp_path):
    """BIND9 holding `xfr-key` with another secret: its transfer is refused (NOTAUTH, BADSIG), so
    it serves nothing of the zone, and it does not take our NOTIFY (signed with the real
    secret)."""
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built")
    if not Path(NAMED).exists():
        pytest.skip("named not installed: apt-get install bind9 (scripts/install-test-deps.sh)")
    port = free_port()
    server = keyed_server(tmp_path, f'"127.0.0.1:{port}"')
    secondary = None
    try:
        secondary = Secondary(tmp_path / "wrong", port, server.port, ["shop.example"],
                              key=("xfr-key", OTHER_SECRET))
        logs = [server.log, secondary.log]
        # BIND's SOA query before a transfer is answered NOTAUTH/BADSIG: it transfers nothing.
        wait_until(lambda: "zone shop.example/IN: refresh: failure trying primary" in secondary.log.read_text()
                   and "tsig indicates error" in secondary.log.read_text(), "BIND's failed refresh", logs)
        answer = secondary.dig("app.shop.example", "A")
        assert "192.0.2.10" not in answer and "status: SERVFAIL" in answer, answer
        assert not (secondary.directory / "shop.example.db").exists()
        # Our NOTIFY, signed with the real secret: BIND answers NOTAUTH with an unsigned BADSIG.
        # Unsigned, it could be forged: switchyard logs it and retries; only when the NOTIFY's
        # transmissions are spent (46 s) is it counted as rejected, with BIND's reason.
        wait_until(lambda: "request has invalid signature: TSIG xfr-key: tsig verify failure (BADSIG)"
                   in secondary.log.read_text(), "BIND's refusal of the NOTIFY", logs)
        wait_until(lambda: "an unsigned TSIG error answered the NOTIFY" in server.log.read_text(),
                   "the unsigned refusal logged", logs)
        assert not re.search(r'switchyard_dns_notifies_total\{outcome="rejected"\} [1-9]', server.get("/metrics"))
        wait_until(lambda: re.search(r'switchyard_dns_notifies_total\{outcome="rejected"\} [1-9]',
                                     server.get("/metrics")), "the NOTIFY counted as rejected", logs,
                   timeout_s=90)
        assert not re.search(r'switchyard_dns_notifies_total\{outcome="acknowledged"\} [1-9]', server.get("/metrics"))
        log = server.log.read_text()
        assert "given up as rejected" in log and "TSIG BADSIG" in log, log[-3000:]
    finally:
        if secondary:
            secondary.stop()
        server.stop()


SHA512_SECRET = "CzBVep/E6Q4zWH2ix+wRNluApcrvFDleg6jN8hc8YYar0PUaP2SJrtP4HUJnjLHW+yBFao+02f4jSG2St9wBJg=="


def test_bind_and_dig_transfer_with_an_hmac_sha512_key(tmp_path):
    """An hmac-sha512 key (`tsig-keygen -a hmac-sha512`, common with BIND): dig signs a transfer
    and a query with it, BIND9 as a keyed secondary transfers with it and follows a NOTIFY signed
    with it. The same secret under hmac-sha256 is another key (BADKEY); a MAC truncated below the
    key's length gets BADTRUNC."""
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built")
    if not Path(NAMED).exists():
        pytest.skip("named not installed: apt-get install bind9 (scripts/install-test-deps.sh)")
    port = free_port()
    server = keyed_server(tmp_path, f'"127.0.0.1:{port}"', algorithm="hmac-sha512", secret=SHA512_SECRET)
    secondary = None
    try:
        signed = server.dig("shop.example", "AXFR", "-y", f"hmac-sha512:xfr-key:{SHA512_SECRET}")
        assert "app.shop.example." in signed and "; Transfer failed" not in signed, signed[-2000:]
        assert "tsig verify failure" not in signed.lower(), signed[-2000:]
        messages = re.search(r"XFR size: (\d+) records \(messages (\d+)", signed)
        assert messages and int(messages.group(2)) >= 2, signed[-500:]
        answer = server.dig("app.shop.example", "A", "-y", f"hmac-sha512:xfr-key:{SHA512_SECRET}")
        assert "192.0.2.10" in answer and "status: NOERROR" in answer, answer
        assert re.search(r"xfr-key\.\s+0\s+ANY\s+TSIG\s+hmac-sha512\. \d+ 300 64 ", answer), answer
        other_algorithm = server.dig("shop.example", "AXFR", "-y", f"hmac-sha256:xfr-key:{SHA512_SECRET}")
        assert "app.shop.example." not in other_algorithm, other_algorithm
        assert "BADKEY" in other_algorithm or "NOTAUTH" in other_algorithm, other_algorithm
        truncated = server.dig("app.shop.example", "A", "-y", f"hmac-sha512-256:xfr-key:{SHA512_SECRET}")
        assert "192.0.2.10" not in truncated and "BADTRUNC" in truncated, truncated
        metrics = server.get("/metrics")
        assert re.search(r'name="<tsig-badkey>".*\} [1-9]', metrics), metrics
        assert re.search(r'name="<tsig-badtrunc>".*\} [1-9]', metrics), metrics
        secondary = Secondary(tmp_path / "sha512", port, server.port, ["shop.example"],
                              key=("xfr-key", SHA512_SECRET), algorithm="hmac-sha512")
        logs = [server.log, secondary.log]
        wait_until(lambda: secondary.short("app.shop.example") == ["192.0.2.10"], "BIND's hmac-sha512 transfer", logs)
        status, body = server.put("/v1/health", {"generation": 3, "targets": {"us-east-1": "unhealthy"}})
        assert status == 200, body
        wait_until(lambda: secondary.short("app.shop.example") == ["198.51.100.10"],
                   "the failover on BIND's secondary after an hmac-sha512 NOTIFY", logs)
        assert "received notify for zone 'shop.example': TSIG 'xfr-key'" in secondary.log.read_text()
    finally:
        if secondary:
            secondary.stop()
        server.stop()



def test_a_key_declared_truncated_answers_with_the_requests_mac_length(tmp_path):
    """A key held as `hmac-sha256-128` accepts a request's full MAC as well as a 128-bit one; the
    answer's MAC has the request's length (RFC 8945 §5.3.1, as BIND answers), so a client holding
    the key untruncated (`dig -y hmac-sha256:`) can verify it."""
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built")
    server = keyed_server(tmp_path, '"127.0.0.1:9"', algorithm="hmac-sha256-128")
    try:
        full = server.dig("app.shop.example", "A", "-y", f"hmac-sha256:xfr-key:{TSIG_SECRET}")
        assert "192.0.2.10" in full and "status: NOERROR" in full, full
        assert re.search(r"xfr-key\.\s+0\s+ANY\s+TSIG\s+hmac-sha256\. \d+ 300 32 ", full), full
        assert "tsig verify failure" not in full.lower(), full
        transfer = server.dig("shop.example", "AXFR", "-y", f"hmac-sha256:xfr-key:{TSIG_SECRET}")
        assert "app.shop.example." in transfer and "; Transfer failed" not in transfer, transfer[-2000:]
        assert "tsig verify failure" not in transfer.lower(), transfer[-2000:]
        truncated = server.dig("app.shop.example", "A", "-y", f"hmac-sha256-128:xfr-key:{TSIG_SECRET}")
        assert "192.0.2.10" in truncated and "status: NOERROR" in truncated, truncated
        assert "tsig verify failure" not in truncated.lower(), truncated
        assert re.search(r"xfr-key\.\s+0\s+ANY\s+TSIG\s+hmac-sha256\. \d+ 300 16 ", truncated), truncated
    finally:
        server.stop()

ROUTED_NS_CONFIG = """
[dns]
axfr_allow = ["127.0.0.1"]
notify = [NOTIFY_TARGETS]

[[dns.zones]]
origin = "example."
ns = ["ns1"]
[dns.zones.soa]
serial = 100
""" + SOA_TIMERS + """
[[dns.zones.records]]
name = "ns1"
type = "A"
values = ["192.0.2.1"]

[[dns.zones]]
origin = "shop.example."
ns = ["ns1", "ns2"]
[dns.zones.soa]
serial = 7
""" + SOA_TIMERS + """
[[dns.zones.records]]
name = "ns1"
type = "A"
values = ["192.0.2.53"]
[[dns.zones.records]]
name = "ns2"
type = "A"
policy = "failover"
[[dns.zones.records.members]]
role = "primary"
values = ["192.0.2.54"]
health = "us-east-1"
[[dns.zones.records.members]]
role = "secondary"
values = ["198.51.100.54"]
health = "eu-west-1"

[[dns.zones]]
origin = "other.test."
ns = ["ns1"]
[dns.zones.soa]
serial = 900
""" + SOA_TIMERS + """
[[dns.zones.records]]
name = "ns1"
type = "A"
values = ["192.0.2.9"]
[[dns.zones.records]]
name = "app"
type = "A"
policy = "failover"
[[dns.zones.records.members]]
role = "primary"
values = ["192.0.2.90"]
health = "ap-south-1"
[[dns.zones.records.members]]
role = "secondary"
values = ["198.51.100.90"]
health = "eu-west-1"
"""


def notifies(server, outcome):
    found = re.search(rf'switchyard_dns_notifies_total\{{outcome="{outcome}"\}} (\d+)', server.get("/metrics"))
    return int(found.group(1)) if found else 0


def test_routed_name_servers_are_glue_and_a_failover_notifies_only_the_zone_it_changes(tmp_path):
    """BIND9 as a secondary of `example.` and `other.test.` (not of the child `shop.example.`):
    its referral for the child carries glue for both name servers, `ns2` answered by a failover
    record. A failover of ns2 changes the parent's glue: the parent's serial moves, BIND is
    notified and refers with the new address, while `other.test.` (no record of it changed) keeps
    its serial and gets no NOTIFY."""
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built")
    if not Path(NAMED).exists():
        pytest.skip("named not installed: apt-get install bind9 (scripts/install-test-deps.sh)")
    port = free_port()
    server = DnsServer(tmp_path, ROUTED_NS_CONFIG.replace("NOTIFY_TARGETS", f'"127.0.0.1:{port}"'))
    server.start()
    secondary = None
    try:
        # dig: this server's own answers carry the routed address as glue too.
        ns = server.dig("shop.example", "NS")
        assert re.search(r"ns2\.shop\.example\.\s+\d+\s+IN\s+A\s+192\.0\.2\.54", ns), ns
        axfr = server.dig("example", "AXFR")
        assert re.search(r"ns2\.shop\.example\.\s+\d+\s+IN\s+A\s+192\.0\.2\.54", axfr), axfr
        secondary = Secondary(tmp_path / "parent", port, server.port, ["example", "other.test"])
        logs = [server.log, secondary.log]
        wait_until(lambda: secondary.short("example", "SOA")[2:3] == ["100"]
                   and secondary.short("other.test", "SOA")[2:3] == ["900"], "BIND's first transfers", logs)

        def referral_glue():
            referral = dns.query.udp(dns.message.make_query("www.shop.example", "A"), "127.0.0.1",
                                     port=secondary.port, timeout=3)
            assert not referral.flags & dns.flags.AA and not referral.answer, referral
            assert sorted(r.to_text() for r in referral.authority[0]) == ["ns1.shop.example.", "ns2.shop.example."]
            return sorted((str(r.name), r[0].to_text()) for r in referral.additional)

        assert referral_glue() == [("ns1.shop.example.", "192.0.2.53"), ("ns2.shop.example.", "192.0.2.54")]
        # Every NOTIFY of the start answered (shop.example.'s refused: BIND does not serve it):
        # nothing pending, the count settled.
        wait_until(lambda: notifies(server, "acknowledged") >= 2 and notifies(server, "rejected") >= 1,
                   "the start's NOTIFYs answered", logs)
        sent_before = notifies(server, "sent")
        other_notifies = secondary.log.read_text().count("received notify for zone 'other.test'")
        status, body = server.put("/v1/health", {"generation": 3, "targets": {"us-east-1": "unhealthy"}})
        assert status == 200, body
        assert server.short("example", "SOA")[2] == "101", "the parent's glue changed"
        assert server.short("shop.example", "SOA")[2] == "8"
        assert server.short("other.test", "SOA")[2] == "900", "other.test did not change"
        wait_until(lambda: secondary.short("example", "SOA")[2:3] == ["101"], "the parent's NOTIFY and transfer", logs)
        assert referral_glue() == [("ns1.shop.example.", "192.0.2.53"), ("ns2.shop.example.", "198.51.100.54")]
        wait_until(lambda: notifies(server, "acknowledged") >= 3 and notifies(server, "rejected") >= 2,
                   "the NOTIFYs of the push answered", logs)
        # One NOTIFY per changed zone: example. and shop.example. (refused again), none for
        # other.test.
        assert notifies(server, "sent") - sent_before == 2, server.get("/metrics")
        assert secondary.log.read_text().count("received notify for zone 'other.test'") == other_notifies
        assert secondary.short("other.test", "SOA")[2] == "900"
    finally:
        if secondary:
            secondary.stop()
        server.stop()
