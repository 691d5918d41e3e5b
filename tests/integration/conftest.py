"""Shared settings of the black-box suite: markers, and the binary under test."""

import os

# Stores under test share the machine's disk with everything else: the production watermark
# (5 % of a large disk) would make them read-only on a full developer box. Tests of the
# watermark pass their own.
os.environ.setdefault("SWITCHYARD_DISK_FREE_BYTES_MIN", "64MiB")


def pytest_configure(config):
    config.addinivalue_line("markers", "process: starts real switchyard processes")
    config.addinivalue_line("markers", "switchyard_only: meaningful only against switchyard, not a peer")
