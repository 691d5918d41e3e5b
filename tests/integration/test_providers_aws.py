"""The AWS steps from the config file's side: `switchyard config check` on the Magento-on-AWS
example and on bad settings (with line numbers), and `switchyard pointer watch --ssm-parameter`
following a parameter in moto's SSM (real AWS API shapes, SigV4-signed by the binary's SDK).
The steps themselves run against moto in crates/providers/tests/it/aws.rs."""

import json
import os
import subprocess
import time

import boto3
import pytest

from harness import BINARY, CHECKED_HEAD, REPO, App, controller_toml, running_moto, two_regions_toml, wait_until

START_DEADLINE_S = 60
CHANGE_DEADLINE_S = 20
PARAMETER = "/magento/prod/AWS_REGION"

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_EC2_METADATA_DISABLED": "true",
}

HEAD = CHECKED_HEAD + """
[[runbook]]
name = "dns"
kind = "route53"
timeout_ms = 150000
"""


def run_cli(*args):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built (cargo build -p switchyard)")
    env = dict(os.environ, SWITCHYARD_LOG="warn", **AWS_ENV)
    return subprocess.run([str(BINARY), *args], env=env, capture_output=True, text=True, timeout=30)


@pytest.fixture
def moto():
    with running_moto(deadline_s=START_DEADLINE_S) as url:
        yield url


def test_the_magento_aws_example_passes_config_check():
    result = run_cli("config", "check", str(REPO / "docs" / "examples" / "magento-aws.toml"))
    assert result.returncode == 0, result.stderr
    assert "ok (2 regions, 4 checks, 8 runbook steps" in result.stdout, result.stdout


@pytest.mark.parametrize(
    "table, line, message",
    [
        # An unknown key: serde names it and the known ones.
        ('[runbook.route53]\nzone_name = "example.com"\nname = "shop.example.com"\ntype = "A"\n', 21,
         "unknown field `zone_name`"),
        # The zone missing, given twice, or not holding the record.
        ('[runbook.route53]\nname = "shop.example.com"\ntype = "A"\nvalues = { us = "192.0.2.1", eu = "192.0.2.2" }\n',
         21, "route53 step 'dns': no hosted zone"),
        ('[runbook.route53]\nzone_id = "Z1"\nzone = "example.com"\nname = "shop.example.com"\ntype = "A"\n'
         'values = { us = "192.0.2.1", eu = "192.0.2.2" }\n', 21, "both zone_id and zone are given"),
        ('[runbook.route53]\nzone = "example.org"\nname = "shop.example.com"\ntype = "A"\n'
         'values = { us = "192.0.2.1", eu = "192.0.2.2" }\n', 22, "name 'shop.example.com' is not in zone 'example.org.'"),
        # A secret inline.
        ('[runbook.route53]\nzone_id = "Z1"\nname = "shop.example.com"\ntype = "A"\n'
         'values = { us = "192.0.2.1", eu = "192.0.2.2" }\nsecret_access_key = "wJalrXUtnFEMI"\n',
         25, "route53 step 'dns': secret_access_key is a secret and must not be in the config file"),
        # A value that is not an address, and a region without a value.
        ('[runbook.route53]\nzone_id = "Z1"\nname = "shop.example.com"\ntype = "A"\nvalues = { us = "shop-us" }\n',
         24, "value 'shop-us' of region 'us' is not an IPv4 address"),
        ('[runbook.route53]\nzone_id = "Z1"\nname = "shop.example.com"\ntype = "A"\nvalues = { us = "192.0.2.1" }\n',
         24, "has no value for region(s) eu"),
        ('[runbook.route53]\nzone_id = "Z1"\nname = "shop.example.com"\ntype = "TXT"\nvalues = { us = "a", eu = "b" }\n',
         23, "type 'TXT' is not one the step writes"),
    ],
    ids=["unknown-key", "missing-zone", "two-zones", "record-outside-zone", "secret-inline", "bad-value", "region-without-value", "bad-type"],
)
def test_config_check_points_at_bad_aws_settings(tmp_path, table, line, message):
    config = tmp_path / "aws.toml"
    config.write_text(HEAD + table)
    result = run_cli("config", "check", str(config))
    assert result.returncode == 1, result.stdout
    assert f"{config}:{line}:" in result.stderr and message in result.stderr, result.stderr
    assert "fix:" in result.stderr or "unknown field" in message


def test_a_route53_step_without_its_table_and_an_ssm_step_in_no_region_are_refused(tmp_path):
    config = tmp_path / "aws.toml"
    config.write_text(HEAD + '\n[[runbook]]\nname = "ssm"\nkind = "ssm_parameter"\n\n'
                      '[runbook.ssm_parameter]\nname = "/shop/AWS_REGION"\n')
    result = run_cli("config", "check", str(config))
    assert result.returncode == 1
    assert f"{config}:18:8: error: step 'dns' (kind = \"route53\") has no [runbook.route53] table" in result.stderr, \
        result.stderr
    assert "ssm_parameter step 'ssm' has no region" in result.stderr, result.stderr


def put(client, value, generation, region):
    client.put_parameter(Name=PARAMETER, Value=value, Type="String", Overwrite=True,
                         Description=f"switchyard generation={generation} region={region} (failover)")


def wait_for_text(path, wanted):
    deadline = time.monotonic() + CHANGE_DEADLINE_S
    text = ""
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if all(w in text for w in wanted):
            return text
        time.sleep(0.1)
    raise AssertionError(f"{path} never held {wanted}; it holds {text!r}")


def test_pointer_watch_follows_the_ssm_parameter(moto, tmp_path):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built (cargo build -p switchyard)")
    client = boto3.client("ssm", endpoint_url=moto, region_name="eu-west-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    put(client, "us-east-1", 3, "us")
    env_file = tmp_path / "region.env"
    reloads = tmp_path / "reloads"
    env = dict(os.environ, SWITCHYARD_LOG="info", **AWS_ENV)
    watcher = subprocess.Popen(
        [str(BINARY), "pointer", "watch", "--ssm-parameter", PARAMETER, "--ssm-region", "eu-west-1",
         "--ssm-endpoint-url", moto, "--poll-ms", "500", "--write-env", str(env_file),
         "--exec", f'echo "$SWITCHYARD_GENERATION $AWS_REGION $SWITCHYARD_ACTIVE_REGION" >> {reloads}'],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_text(env_file, ["AWS_REGION=us-east-1\n", "SWITCHYARD_ACTIVE_REGION=us\n", "SWITCHYARD_GENERATION=3\n"])
        put(client, "eu-west-1", 4, "eu")
        wait_for_text(env_file, ["AWS_REGION=eu-west-1\n", "SWITCHYARD_ACTIVE_REGION=eu\n", "SWITCHYARD_GENERATION=4\n"])
        wait_for_text(reloads, ["3 us-east-1 us\n", "4 eu-west-1 eu\n"])
    finally:
        watcher.terminate()
        _, stderr = watcher.communicate(timeout=10)
    assert watcher.returncode == 0, stderr


def controller_config(us_port, eu_port, audit, moto, zone_id):
    return controller_toml(audit) + two_regions_toml(us_port, eu_port) + f"""
[[runbook]]
name = "route53-shop"
kind = "route53"
timeout_ms = 20000

[runbook.route53]
zone_id = "{zone_id}"
name = "shop.example.com"
type = "A"
values = {{ "us-east-1" = "203.0.113.10", "eu-west-1" = "198.51.100.7" }}
insync_timeout_ms = 10000
endpoint_url = "{moto}"

[[runbook]]
name = "ssm-region"
kind = "ssm_parameter"
timeout_ms = 20000

[runbook.ssm_parameter]
name = "{PARAMETER}"
region = "eu-west-1"
endpoint_url = "{moto}"
"""


def test_the_controller_runs_the_aws_steps_on_failover_and_audits_them(moto, tmp_path):
    """The real controller: its runbook moves a Route 53 record and an SSM parameter in moto
    when the primary's app dies, and the audit log has each step's verified result."""
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built (cargo build -p switchyard)")
    apps = [App(), App()]
    keys = dict(endpoint_url=moto, aws_access_key_id="testing", aws_secret_access_key="testing")
    route53 = boto3.client("route53", region_name="us-east-1", **keys)
    ssm = boto3.client("ssm", region_name="eu-west-1", **keys)
    zone_id = route53.create_hosted_zone(Name="shop.example.com.", CallerReference="e2e")["HostedZone"]["Id"]
    zone_id = zone_id.split("/")[-1]
    audit = tmp_path / "audit.jsonl"
    config = tmp_path / "switchyard.toml"
    config.write_text(controller_config(apps[0].port, apps[1].port, audit, moto, zone_id))
    ready = tmp_path / "ready"
    log = tmp_path / "controller.log"
    env = dict(os.environ, SWITCHYARD_LOG="info", **AWS_ENV)
    controller = subprocess.Popen([str(BINARY), "controller", "--config", str(config), "--listen", "127.0.0.1:0",
                                   "--ready-file", str(ready)], env=env, stdout=subprocess.DEVNULL,
                                  stderr=open(log, "ab"))

    def record():
        sets = route53.list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]
        return [r["Value"] for s in sets if s["Name"] == "shop.example.com." and s["Type"] == "A"
                for r in s["ResourceRecords"]]

    def parameter():
        try:
            return ssm.get_parameter(Name=PARAMETER)["Parameter"]["Value"]
        except ssm.exceptions.ParameterNotFound:
            return None

    def wait(what, condition):
        wait_until(what, condition, CHANGE_DEADLINE_S, [log])

    try:
        wait("the initial placement in Route 53 and SSM",
             lambda: record() == ["203.0.113.10"] and parameter() == "us-east-1")
        apps[0].stop()
        wait("the failover in Route 53 and SSM", lambda: record() == ["198.51.100.7"] and parameter() == "eu-west-1")

        def steps():
            lines = audit.read_text().splitlines() if audit.exists() else []
            return [json.loads(line) for line in lines if '"kind":"step"' in line]

        # A step's audit record follows its read-back: wait for the last one of the runbook.
        wait("the SSM step's audit record",
             lambda: any(s["step"] == "ssm-region" and "eu-west-1" in s["detail"] for s in steps()))
        moved = [s for s in steps() if s["step"] == "route53-shop" and "198.51.100.7" in s["detail"]]
        assert moved and moved[-1]["outcome"] == "ok" and "INSYNC" in moved[-1]["detail"], steps()
        assert moved[-1]["generation"] >= 2, moved
        put = [s for s in steps() if s["step"] == "ssm-region" and "eu-west-1" in s["detail"]]
        assert put[-1]["outcome"] == "ok" and put[-1]["generation"] == moved[-1]["generation"], put
    finally:
        controller.kill()
        controller.wait(timeout=10)
        apps[1].stop()
