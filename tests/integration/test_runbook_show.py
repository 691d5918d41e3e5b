"""`switchyard runbook show` on the shipped example configurations: the Markdown names every
region, check and runbook step of the file with the quorum and the failback conditions, in the
order the controller runs them; `--html` is a page whose text carries the same steps (parsed
with Python's HTML parser); an invalid file is refused with the problems `config check` names."""

import html.parser
import os
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("SWITCHYARD_BIN", REPO / "target" / "debug" / "switchyard"))
EXAMPLES = ["switchyard.toml", "magento-aws.toml", "woocommerce-digitalocean.toml"]
# The WooCommerce example reads its secrets from the environment (values made up); the document
# never shows them.
SECRETS = {"DIGITALOCEAN_TOKEN": "dop_v1_example", "CLOUDFLARE_API_TOKEN": "cf-example",
           "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T000/B000/XXXX",
           "PAGERDUTY_ROUTING_KEY": "example-routing-key", "SMTP_PASSWORD": "example-smtp"}

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]


def show(*args):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built (cargo build -p switchyard)")
    return subprocess.run([str(BINARY), "runbook", "show", *args], capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, RUST_BACKTRACE="0", **SECRETS))


@pytest.mark.parametrize("example", EXAMPLES)
def test_the_markdown_names_everything_the_file_configures(example):
    path = REPO / "docs" / "examples" / example
    config = tomllib.loads(path.read_text())
    result = show("--config", str(path))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith(f"# Failover and failback runbook: {path}\n")
    regions = sorted(config["regions"], key=lambda r: r["priority"])
    for region in regions:
        assert f"`{region['name']}`" in text
    for check in config.get("checks", []):
        assert f"`{check['name']}`" in text
    vantages = config.get("quorum", {}).get("vantages", ["controller"])
    assert f"of {len(vantages)} see it down" in text
    home, other = regions[0]["name"], regions[1]["name"]
    failover = text.split(f"### {home} → {other} (failover)\n")[1].split("\n#")[0]
    # Every step that applies to a move to `other`, numbered in the file's order.
    expected = [step["name"] for step in config.get("runbook", [])
                if "when_to" not in step or other in step["when_to"]]
    for number, name in enumerate(expected, start=1):
        assert f"{number}. **{name}** — " in failover, (name, failover)
    assert f"### {other} → {home} (failback)" in text
    assert "## Failback" in text and "`stability_window_ms`" in text
    for secret in SECRETS.values():
        assert secret not in text


def test_html_is_a_page_with_the_same_steps():
    path = REPO / "docs" / "examples" / "switchyard.toml"
    result = show("--config", str(path), "--html")
    assert result.returncode == 0, result.stderr

    class Collect(html.parser.HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.items, self.open = [], [], None

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            if tag == "li":
                self.open = ""

        def handle_endtag(self, tag):
            if tag == "li":
                self.items.append(self.open)
                self.open = None

        def handle_data(self, data):
            if self.open is not None:
                self.open += data

    page = Collect()
    page.feed(result.stdout)
    assert page.tags[:2] == ["html", "head"] and "table" in page.tags and "ol" in page.tags
    steps = [step["name"] for step in tomllib.loads(path.read_text())["runbook"]]
    assert any(item.startswith(f"{steps[0]} — ") for item in page.items), page.items


def test_an_invalid_file_is_refused_with_its_problems(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[regions]]\nname = "us-east-1"\npriority = "first"\n')
    result = show("--config", str(bad))
    assert result.returncode != 0
    assert "invalid configuration" in result.stderr and "config check" in result.stderr, result.stderr
    assert "bad.toml:3" in result.stderr, result.stderr
