"""Media sync in mode rsync over SSH, against a real OpenSSH server (Debian's
`openssh-server`) started here as the test user on a loopback port, with its own host key, an
authorized_keys file holding a key made for the test, and a known_hosts file pinning the host
key. The step's `ssh_port`, `ssh_identity_file` and `ssh_known_hosts_file` make the ssh
command rsync runs (`-p`, `-i`, `UserKnownHostsFile`, `StrictHostKeyChecking=yes`); a wrong
host key is refused; `config check` validates the three settings."""

import getpass
import os
import shutil
import socket
import subprocess

import pytest

from test_media_sync import media, rsync_config, run_cli, shop_media, wait_for, free_port

pytestmark = [pytest.mark.process, pytest.mark.switchyard_only]

SSHD = "/usr/sbin/sshd"
START_DEADLINE_S = 30


def keygen(path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "switchyard-test", "-f", str(path)],
                   check=True, capture_output=True, timeout=30)
    return path.with_name(path.name + ".pub").read_text().strip()


@pytest.fixture
def sshd(tmp_path):
    """A real sshd on 127.0.0.1 that lets the test user in with a test key. Yields
    (port, client key, known_hosts file)."""
    if not os.path.exists(SSHD):
        pytest.skip("sshd missing: apt-get install openssh-server (scripts/install-test-deps.sh does)")
    for tool in ["ssh", "ssh-keygen", "rsync"]:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} missing: scripts/install-test-deps.sh installs it")
    folder = tmp_path / "sshd"
    folder.mkdir()
    host_public = keygen(folder / "host_ed25519")
    client_public = keygen(folder / "client_ed25519")
    (folder / "authorized_keys").write_text(client_public + "\n")
    port = free_port()
    known_hosts = folder / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_public}\n")
    config = folder / "sshd_config"
    config.write_text(f"""
ListenAddress 127.0.0.1
HostKey {folder / 'host_ed25519'}
AuthorizedKeysFile {folder / 'authorized_keys'}
PidFile {folder / 'sshd.pid'}
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
""")
    if os.getuid() == 0:
        # sshd started as root wants its privilege separation folder (Debian's init makes it).
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    log = folder / "sshd.log"
    daemon = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config), "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=open(log, "ab"))

    def accepting():
        if daemon.poll() is not None:
            pytest.fail(f"sshd exited: {log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    wait_for("sshd", accepting, START_DEADLINE_S)
    yield port, folder / "client_ed25519", known_hosts
    daemon.terminate()
    daemon.wait(timeout=10)


def ssh_settings(port, key, known_hosts):
    return f'ssh_port = {port}\nssh_identity_file = "{key}"\nssh_known_hosts_file = "{known_hosts}"\n'


def test_rsync_over_a_real_ssh_server_copies_measures_and_pulls_back(tmp_path, sshd):
    port, key, known_hosts = sshd
    us, eu = tmp_path / "us", tmp_path / "eu-over-ssh"
    us.mkdir()
    eu.mkdir()
    files = shop_media(us)
    (eu / "only-on-the-standby.jpg").write_bytes(b"kept")
    remote = f"{getpass.getuser()}@127.0.0.1:{eu}/"
    config = rsync_config(tmp_path, us, remote, extra=ssh_settings(port, key, known_hosts))
    checked = run_cli("config", "check", str(config))
    assert checked.returncode == 0, checked.stderr

    result, [lag] = media("lag", config)
    assert result.returncode == 0 and lag["ok"], result.stderr + result.stdout
    assert lag["lag"]["objects"] == len(files), lag
    assert lag["lag"]["bytes"] == sum(len(d) for d in files.values()), lag
    assert not (eu / "catalog").exists(), "a lag measurement must copy nothing"

    result, [synced] = media("sync", config)
    assert result.returncode == 0 and synced["ok"], result.stderr + result.stdout
    assert synced["copied_objects"] == len(files) and synced["remaining"]["objects"] == 0, synced
    for relative, data in files.items():
        assert (eu / relative).read_bytes() == data, relative
    assert (eu / "only-on-the-standby.jpg").read_bytes() == b"kept", "delete is off by default"

    # Pulled back over SSH: us lacks only the standby's own file.
    result, [back] = media("lag", config, "--from", "eu")
    assert result.returncode == 0, result.stderr + result.stdout
    assert back["lag"]["objects"] == 1 and back["lag"]["sample"] == ["only-on-the-standby.jpg"], back
    result, [pulled] = media("sync", config, "--from", "eu")
    assert result.returncode == 0 and pulled["copied_objects"] == 1, pulled
    assert (us / "only-on-the-standby.jpg").read_bytes() == b"kept"


def test_a_host_key_other_than_the_pinned_one_is_refused(tmp_path, sshd):
    port, key, _ = sshd
    us = tmp_path / "us"
    us.mkdir()
    shop_media(us)
    other_host = keygen(tmp_path / "other_host")
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"[127.0.0.1]:{port} {other_host}\n")
    config = rsync_config(tmp_path, us, f"{getpass.getuser()}@127.0.0.1:{tmp_path / 'eu'}/",
                          extra=ssh_settings(port, key, wrong))
    result, [line] = media("sync", config)
    assert result.returncode == 1 and not line["ok"], line
    # ssh's own words reach the message (rsync itself exits 12 or 255 when its ssh dies).
    assert "rsync exit" in line["error"] and "Host key verification failed" in line["error"], line
    assert not (tmp_path / "eu").exists()


def test_config_check_validates_the_ssh_settings(tmp_path):
    key = tmp_path / "media.key"
    key.write_text("not checked here")
    config = rsync_config(tmp_path, "/srv/media", "deploy@web-eu:/srv/media/",
                          extra=f'ssh_port = 0\nssh_identity_file = "{key}"\nssh_known_hosts_file = "missing_hosts"\n')
    text = config.read_text().splitlines()
    line = {needle: text.index(next(t for t in text if t.startswith(needle))) + 1
            for needle in ["ssh_port", "ssh_known_hosts_file"]}
    result = run_cli("config", "check", str(config))
    assert result.returncode == 1
    assert f"{config}:{line['ssh_port']}:" in result.stderr and "ssh_port = 0 is outside 1..=65535" in result.stderr, \
        result.stderr
    assert f"{config}:{line['ssh_known_hosts_file']}:" in result.stderr, result.stderr
    assert f"ssh_known_hosts_file {tmp_path / 'missing_hosts'} does not exist" in result.stderr, result.stderr

    daemon_only = rsync_config(tmp_path, "/srv/media", "rsync://10.0.0.9/media/", extra="ssh_port = 2222\n",
                               name="daemon.toml")
    result = run_cli("config", "check", str(daemon_only))
    assert result.returncode == 1 and "no location is reached over SSH" in result.stderr, result.stderr
