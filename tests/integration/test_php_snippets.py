"""The PHP snippets of the README (docs/php/) run with Debian's `php-cli`: Magento's
app/etc/env.php and WordPress's wp-config.php read the env file `pointer watch --write-env`
writes and pick the active region's database, Redis and media bucket; a missing file falls back
to the home region with a logged warning. The README shows the files verbatim."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PHP = REPO / "docs" / "php"


@pytest.fixture(autouse=True)
def needs_php():
    if shutil.which("php") is None:
        pytest.skip("php missing: apt-get install php-cli (scripts/install-test-deps.sh does)")


def env_file(path, region, generation):
    # The format of controller::pointer::write_env_file.
    path.write_text(f"AWS_REGION={region}\nSWITCHYARD_ACTIVE_REGION={region}\nSWITCHYARD_GENERATION={generation}\n")


def php(code, region_file):
    env = dict(os.environ, SWITCHYARD_REGION_FILE=str(region_file))
    result = subprocess.run(["php", "-d", "display_errors=stderr", "-r", code], capture_output=True, text=True,
                            env=env, timeout=30, cwd=PHP)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def test_magento_env_php_follows_the_pointer(tmp_path):
    region_file = tmp_path / "region.env"
    for region, generation, db, bucket in [("us-east-1", 3, "db.use1.shop.internal", "shop-media-use1"),
                                           ("eu-west-1", 4, "db.euw1.shop.internal", "shop-media-euw1")]:
        env_file(region_file, region, generation)
        config, _ = php("echo json_encode(require 'magento-env.php');", region_file)
        assert config["db"]["connection"]["default"]["host"] == db
        assert config["remote_storage"]["config"] == {"bucket": bucket, "region": region}
        assert config["session"]["redis"]["host"].startswith("redis." + db.split(".")[1])


def test_wp_config_follows_the_pointer(tmp_path):
    region_file = tmp_path / "region.env"
    env_file(region_file, "eu-west-1", 9)
    code = ("require 'wp-config-region.php'; echo json_encode(['db' => DB_HOST, 'redis' => WP_REDIS_HOST, "
            "'region' => S3_UPLOADS_REGION, 'generation' => SWITCHYARD_GENERATION, 'cron' => DISABLE_WP_CRON]);")
    values, _ = php(code, region_file)
    assert values == {"db": "db.euw1.shop.internal", "redis": "redis.euw1.shop.internal", "region": "eu-west-1",
                      "generation": 9, "cron": True}


def test_missing_env_file_falls_back_to_home_region_and_says_so(tmp_path):
    values, stderr = php("require 'wp-config-region.php'; echo json_encode([DB_HOST, SWITCHYARD_GENERATION]);",
                         tmp_path / "absent.env")
    assert values == ["db.use1.shop.internal", 0]
    assert "switchyard: cannot read" in stderr and "using region us-east-1" in stderr, stderr


def test_readme_shows_the_tested_files():
    readme = (REPO / "README.md").read_text()
    for name in ("switchyard-region.php", "magento-env.php", "wp-config-region.php"):
        assert (PHP / name).read_text().strip() in readme, f"README does not show docs/php/{name} as tested"
