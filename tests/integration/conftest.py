"""Shared settings of the black-box suite: markers, the binary under test, and the disk it uses."""

import os
import shutil

import pytest

# Stores under test share the machine's disk with everything else: the production watermark
# (5 % of a large disk) would make them read-only on a full developer box. Tests of the
# watermark pass their own.
os.environ.setdefault("SWITCHYARD_DISK_FREE_BYTES_MIN", "64MiB")

# A run that finds less than this free says so first: labs write some hundreds of MiB each
# (etcd preallocates 64 MiB per member, each store 64 MiB of reserve), and a disk that fills
# mid-run fails every later test at set-up, far from the cause.
DISK_FREE_BYTES_WARN = 4 << 30


def pytest_configure(config):
    config.addinivalue_line("markers", "process: starts real switchyard processes")
    config.addinivalue_line("markers", "switchyard_only: meaningful only against switchyard, not a peer")


def free_bytes(path):
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def pytest_sessionstart(session):
    """Says how much disk the run has (even under -q, which hides the report header)."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        for line in disk_lines(session.config):
            reporter.write_line(line)
        reporter.write_line(f"switchyard under test: {os.environ.get('SWITCHYARD_BIN', '(default)')}")


def disk_lines(config):
    factory = getattr(config, "_tmp_path_factory", None)
    base = factory.getbasetemp() if factory is not None else None
    lines = []
    for name, path in (("temporary folders", base), ("checkout", config.rootpath)):
        if path is None:
            continue
        free = free_bytes(path)
        if free is None:
            continue
        warning = " (LOW: tests may fail for want of disk)" if free < DISK_FREE_BYTES_WARN else ""
        lines.append(f"disk free for {name} ({path}): {free / (1 << 30):.1f} GiB{warning}")
    return lines


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if exitstatus == 0:
        return
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is None:
        return
    free = free_bytes(factory.getbasetemp())
    if free is not None:
        terminalreporter.write_line(f"disk free for temporary folders at the end: {free / (1 << 30):.2f} GiB")


@pytest.fixture(scope="module", autouse=True)
def free_the_modules_folders(request, tmp_path_factory):
    """Removes the folders a module's fixtures made with `tmp_path_factory` once the module is
    done, when none of its tests failed (a failure keeps them for a look). With
    `tmp_path_retention_policy = failed` (pytest.ini) this keeps a full run's disk use to
    about one lab's worth instead of the sum of all of them."""
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed != failed_before:
        return
    for path in set(base.iterdir()) - before:
        shutil.rmtree(path, ignore_errors=True)
