"""Database steps through `switchyard config check`: the worked WooCommerce example on
DigitalOcean Managed MySQL validates with its token in the environment, and bad settings are
named with their line and column. The step itself runs against a fake that follows
DigitalOcean's documented API in crates/providers/tests/it/digitalocean_db.rs (DigitalOcean has
no local server). The self-hosted Magento example (MariaDB, Redis, the store) validates too."""

import os
import subprocess

import pytest

from harness import BINARY, NUMBERED_HEAD_LINES, REPO


def run_cli(*args, env=None):
    return subprocess.run([str(BINARY), *args], capture_output=True, text=True, timeout=60, env=env)


def test_the_woocommerce_managed_mysql_example_validates_with_its_token_in_the_environment():
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built (cargo build -p switchyard)")
    example = REPO / "docs" / "examples" / "woocommerce-do-managed-mysql.toml"
    good = run_cli("config", "check", str(example), env=dict(os.environ, DIGITALOCEAN_TOKEN="dop_v1_example"))
    assert good.returncode == 0, good.stderr
    assert "ok (2 regions" in good.stdout and "3 runbook steps" in good.stdout, good.stdout
    bare = {k: v for k, v in os.environ.items() if k != "DIGITALOCEAN_TOKEN"}
    missing = run_cli("config", "check", str(example), env=bare)
    assert missing.returncode == 1
    assert "the environment variable DIGITALOCEAN_TOKEN is not set" in missing.stderr, missing.stderr


def test_config_check_names_bad_promote_settings_with_their_lines(tmp_path):
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built (cargo build -p switchyard)")
    (tmp_path / "do.token").write_text("dop_v1_x\n")
    config = tmp_path / "dodb.toml"
    config.write_text("\n".join([
        *NUMBERED_HEAD_LINES,                                              # 1-16
        "[[runbook]]",                                                     # 17
        'name = "db"',                                                     # 18
        'kind = "digitalocean_db_promote"',                                # 19
        "[runbook.digitalocean_db_promote]",                               # 20
        'token = { file = "do.token" }',                                   # 21
        'cluster = "not-a-uuid"',                                          # 22
        'replicas = { ams3 = { name = "shop db", id = "9cc10173-e9ea-4176-9dbc-a4cee4c4ff30" } }',  # 23
        "wait_ms = 0",                                                     # 24
    ]) + "\n")
    bad = run_cli("config", "check", str(config))
    assert bad.returncode == 1, bad.stdout
    assert f"{config}:22:11: error: digitalocean_db_promote step 'db': cluster 'not-a-uuid' is not a cluster UUID" \
        in bad.stderr, bad.stderr
    assert f"{config}:23:" in bad.stderr and "replica name 'shop db'" in bad.stderr, bad.stderr
    assert f"{config}:24:11: error: digitalocean_db_promote step 'db': wait_ms = 0" in bad.stderr, bad.stderr

    text = config.read_text().replace('"not-a-uuid"', '"9cc10173-e9ea-4176-9dbc-a4cee4c4ff30"')
    text = text.replace('name = "shop db"', 'name = "shop-db-ams3"').replace("wait_ms = 0", "wait_ms = 600000")
    config.write_text(text)
    warned = run_cli("config", "check", str(config))
    assert warned.returncode == 0, warned.stderr
    assert ("warning: step 'db': timeout_ms = 5000 cuts the promotion off before wait_ms = 600000 has passed"
            in warned.stderr), warned.stderr


def test_the_magento_mariadb_redis_example_validates_with_its_secrets_in_the_environment():
    if not BINARY.exists():
        pytest.skip(f"{BINARY} not built (cargo build -p switchyard)")
    example = REPO / "docs" / "examples" / "magento-mariadb-redis.toml"
    secrets = {"MYSQL_PASSWORD": "m", "REPL_PASSWORD": "r", "REDIS_PASSWORD": "s"}
    good = run_cli("config", "check", str(example), env=dict(os.environ, **secrets))
    assert good.returncode == 0, good.stderr
    assert "ok (2 regions" in good.stdout and "4 runbook steps" in good.stdout, good.stdout
    bare = {k: v for k, v in os.environ.items() if k not in secrets}
    missing = run_cli("config", "check", str(example), env=bare)
    assert missing.returncode == 1
    for variable in secrets:
        assert f"the environment variable {variable} is not set" in missing.stderr, missing.stderr
