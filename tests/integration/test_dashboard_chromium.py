"""The pages people look at, rendered by a real browser: Debian's `chromium`, headless, with
its own fresh profile and no network of its own (no QUIC, no background fetches, no updates).
One lab (started with `--quiet`, whose one-line summary is checked too) serves the controller's
dashboard; a short drill on it (`--quiet`: one line) writes the HTML report. Chromium runs the
dashboard's JavaScript (`--virtual-time-budget` lets its fetches and timers finish before
`--dump-dom`), and the test asserts the rendered regions table names both regions and the
events table has rows; the drill report shows its chart. Screenshots of both are kept as test
artifacts in tests/artifacts/ (gitignored)."""

import os
import re
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from harness import running_lab

REPO = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("SWITCHYARD_BIN", REPO / "target" / "debug" / "switchyard"))
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM_TIMEOUT_S = 60
ACTIVE_DEADLINE_S = 90
DRILL_TIMEOUT_S = 120
REGIONS = ("us-east-1", "eu-west-1")

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]


def chromium_binary():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium(profile, *args):
    """One headless run with a fresh profile; returns its stdout."""
    command = [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def keep(artifact, name):
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(artifact, ARTIFACTS / name)


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built")
    if chromium_binary() is None:
        pytest.skip("chromium missing: apt-get install chromium (scripts/install-test-deps.sh does)")
    root = tmp_path_factory.mktemp("chromium")
    with running_lab(BINARY, root, "--regions", "2", "--quiet") as (directory, base_port):
        yield directory, base_port, root


# Audit records the dashboard's events table shows (`EVENTS_SHOWN` in dashboard.html).
DASHBOARD_EVENTS_SHOWN = 30


def rows(dom, table_id):
    """The text of each row of the table's body, tags stripped."""
    body = re.search(rf'<table id="{table_id}">.*?<tbody>(.*?)</tbody>', dom, re.S)
    assert body, f"no table {table_id} in the page"
    return [re.sub(r"<[^>]+>", " ", row) for row in re.findall(r"<tr>(.*?)</tr>", body.group(1), re.S)]


def test_lab_quiet_prints_one_summary_line(lab):
    _, _, root = lab
    lines = [line for line in (root / "lab.log").read_text().splitlines() if line.startswith("lab up:")]
    assert len(lines) == 1, (root / "lab.log").read_text()[-3000:]
    assert re.match(r"lab up: (\d+)/\1 components running, 2 regions, 1 controller in ", lines[0]), lines[0]
    assert "Try:" not in (root / "lab.log").read_text()


def test_the_dashboard_renders_the_regions_and_the_events_table(lab, tmp_path):
    _, base_port, _ = lab
    # The page is rendered once the controller has placed the active region.
    deadline = time.monotonic() + ACTIVE_DEADLINE_S
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{base_port + 1}/v1/active-region", timeout=5) as response:
                if json.loads(response.read()).get("region"):
                    break
        except (OSError, urllib.error.URLError, ValueError):
            pass
        assert time.monotonic() < deadline, "the lab's controller placed no active region"
        time.sleep(0.3)
    url = f"http://127.0.0.1:{base_port + 1}/dashboard"
    dom = chromium(tmp_path / "profile-dom", "--virtual-time-budget=5000", "--dump-dom", url)
    regions = rows(dom, "regions")
    assert len(regions) == 2, regions
    for region in REGIONS:
        assert any(region in row for row in regions), (region, regions)
    assert any("(active)" in row for row in regions), regions
    events = rows(dom, "events")
    assert events, "the events table is empty"
    # The newest EVENTS_SHOWN records of the audit log: its first, "controller started", while
    # there are no more (a busy machine's lab start may flap a region and write dozens).
    with urllib.request.urlopen(f"http://127.0.0.1:{base_port + 1}/v1/events?limit=1000", timeout=5) as response:
        recorded = len(json.loads(response.read())["events"])
    if recorded <= DASHBOARD_EVENTS_SHOWN:
        assert any("controller started" in row for row in events), events[:5]
    else:
        assert len(events) == DASHBOARD_EVENTS_SHOWN, (recorded, events[:5])
    assert re.search(r'<div id="banner">Active region: (us-east-1|eu-west-1) ', dom), "the banner names the active region"
    assert re.search(r'<div id="error"></div>', dom), re.search(r'<div id="error">.*?</div>', dom, re.S).group(0)

    shot = tmp_path / "dashboard.png"
    chromium(tmp_path / "profile-shot", "--virtual-time-budget=5000", "--window-size=1280,1800",
             f"--screenshot={shot}", url)
    assert png_size(shot) == (1280, 1800)
    assert shot.stat().st_size > 20_000, "a blank page compresses to almost nothing"
    keep(shot, "dashboard.png")


def test_the_drill_report_renders_its_chart(lab, tmp_path):
    directory, _, _ = lab
    html = tmp_path / "report.html"
    drill = subprocess.run(
        [str(BINARY), "drill", "vantage-partition", "--lab", str(directory), "--warmup-s", "3", "--duration-s", "4",
         "--settle-s", "3", "--html", str(html), "--quiet"],
        capture_output=True, text=True, timeout=DRILL_TIMEOUT_S)
    lines = drill.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("drill vantage-partition: "), drill.stdout + drill.stderr[-2000:]
    assert html.exists(), drill.stderr[-2000:]

    dom = chromium(tmp_path / "profile-dom", "--dump-dom", html.as_uri())
    assert "Drill <code>vantage-partition</code>" in dom
    assert "<svg" in dom and "100%" in dom.replace(" %", "%"), "the chart with its 100 % label"
    shot = tmp_path / "report.png"
    chromium(tmp_path / "profile-shot", "--window-size=1280,1400", f"--screenshot={shot}", html.as_uri())
    assert png_size(shot) == (1280, 1400)
    assert shot.stat().st_size > 20_000
    keep(shot, "drill-report.png")
