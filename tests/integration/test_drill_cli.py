"""`switchyard drill` bad input, through the real binary: each mistake gets a non-zero exit and a
message naming the bad value and the fix, before anything is touched."""

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("SWITCHYARD_BIN", REPO / "target" / "debug" / "switchyard"))
DEADLINE_S = 30

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]


def drill(*args):
    env = dict(os.environ, RUST_BACKTRACE="0")
    result = subprocess.run(
        [str(BINARY), "drill", *args], capture_output=True, text=True, timeout=DEADLINE_S, env=env
    )
    return result.returncode, result.stdout + result.stderr


def test_unknown_scenario_lists_the_scenarios(tmp_path):
    code, output = drill("region-outtage", "--lab", str(tmp_path))
    assert code == 2, output  # a usage error, as every other bad argument
    assert "invalid value 'region-outtage'" in output, output
    assert "region-outage, region-partition, vantage-partition" in output, output


def test_missing_lab_directory_says_how_to_start_one(tmp_path):
    missing = tmp_path / "nowhere"
    code, output = drill("region-outage", "--lab", str(missing))
    assert code != 0
    assert f"lab directory {missing} does not exist" in output
    assert "switchyard lab --dir" in output


def test_directory_without_targets_is_not_a_running_lab(tmp_path):
    code, output = drill("failback", "--lab", str(tmp_path))
    assert code != 0
    assert "has no drill-targets.toml" in output


def test_a_stopped_lab_is_said_to_be_stopped(tmp_path):
    # What a lab leaves behind once stopped: its state (a supervisor gone) and its targets.
    (tmp_path / "lab.json").write_text('{"supervisor_pid": 4194303, "planned": 1, "components": []}')
    (tmp_path / "drill-targets.toml").write_text('shop_name = "shop.example."\n')
    code, output = drill("region-outage", "--lab", str(tmp_path))
    assert code != 0
    assert f"the lab in {tmp_path} is not running" in output, output


def test_bad_targets_file_names_the_line(tmp_path):
    targets = tmp_path / "deployment.toml"
    targets.write_text('shop_name = "shop.example."\nshop_port = "eighty"\n')
    code, output = drill("vantage-partition", "--targets", str(targets))
    assert code != 0
    assert "line 2" in output and str(targets) in output


def test_one_region_is_not_enough(tmp_path):
    targets = tmp_path / "deployment.toml"
    targets.write_text(
        'shop_name = "shop.example."\nshop_port = 80\ndns_server = "127.0.0.1:53"\n'
        '[[regions]]\nname = "us-east-1"\nstore_url = "http://127.0.0.1:8000"\n'
    )
    code, output = drill("region-outage", "--targets", str(targets))
    assert code != 0
    assert "at least two [[regions]]" in output


def test_phase_lengths_are_bounded(tmp_path):
    code, output = drill("region-outage", "--lab", str(tmp_path), "--duration-s", "0")
    assert code != 0
    assert "--duration-s 0: give 1 to 3600 seconds" in output


def test_lab_and_targets_exclude_each_other(tmp_path):
    code, output = drill("region-outage", "--lab", str(tmp_path), "--targets", str(tmp_path / "x.toml"))
    assert code != 0
    assert "cannot be used with" in output


def test_unreachable_deployment_fails_before_any_fault(tmp_path):
    targets = tmp_path / "deployment.toml"
    targets.write_text(
        'shop_name = "shop.example."\nshop_port = 80\ndns_server = "127.0.0.1:9"\n'
        '[[regions]]\nname = "us-east-1"\nstore_url = "http://127.0.0.1:9"\n'
        '[[regions]]\nname = "eu-west-1"\nstore_url = "http://127.0.0.1:9"\n'
    )
    code, output = drill("region-outage", "--targets", str(targets), "--no-progress")
    assert code != 0
    assert "prepare the drill" in output and "us-east-1" in output


def test_config_is_the_targets_flag(tmp_path):
    targets = tmp_path / "deployment.toml"
    targets.write_text('shop_name = "shop.example."\nshop_port = "eighty"\n')
    code, output = drill("region-hang", "--config", str(targets))
    assert code != 0
    assert "line 2" in output and str(targets) in output
    code, output = drill("region-hang", "--lab", str(tmp_path), "--config", str(targets))
    assert code != 0
    assert "cannot be used with" in output


def test_help_lists_region_hang_and_the_config_alias():
    code, output = drill("--help")
    assert code == 0
    assert "region-hang" in output
    assert "--config" in output
