"""Shared test fixtures and the markers' skip rules."""

from __future__ import annotations

import os
import shutil

import pytest


def _is_root() -> bool:
    return os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Real-component tests need root (namespaces, libvirt's system URI). In CI and `make test`
    # they run as root; a non-root developer sees them skipped with the reason, never passed.
    if _is_root():
        return
    skip = pytest.mark.skip(reason="needs root")
    for item in items:
        if any(item.get_closest_marker(m) for m in ("libvirt", "netns", "services", "e2e")):
            item.add_marker(skip)


@pytest.fixture
def have(request: pytest.FixtureRequest):
    """`have("nginx")` fails the test (not skips) when a program the suite installs is missing."""

    def check(program: str) -> str:
        path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
        if path is None:
            pytest.fail(f"{program} is not installed: run `make setup`")
        return path

    return check
