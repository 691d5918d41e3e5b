"""Shared settings of the black-box suite: markers, and the binary under test."""


def pytest_configure(config):
    config.addinivalue_line("markers", "process: starts real switchyard processes")
    config.addinivalue_line("markers", "switchyard_only: meaningful only against switchyard, not a peer")
