"""Shared test fixtures, the markers' skip rules, and where a real-process test may live."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Markers of tests that run real processes: namespaces, libvirt, services, VMs.
REAL_MARKERS = ("libvirt", "netns", "services", "e2e")
TESTS = Path(__file__).resolve().parent
#: The only folders such tests may live in, so that `make unit` leaves them out by place.
REAL_PLACES = (TESTS / "real", TESTS / "e2e")


def pytest_configure(config: pytest.Config) -> None:
    # A suite started in the background by a non-interactive shell (`make test &`, nohup)
    # inherits SIGINT ignored, and every CLI a test spawns would too: the tests that stop
    # `cloudd-cli ... --follow/--watch` with Ctrl-C would wait in vain. Children of a
    # process that catches SIGINT start with the default, as from a terminal.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _is_root() -> bool:
    return os.geteuid() == 0


def _is_real(item: pytest.Item) -> bool:
    return any(item.get_closest_marker(m) for m in REAL_MARKERS)


@pytest.hookimpl(tryfirst=True)  # before -m deselects anything: a misplaced test never hides
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    misplaced = [item.nodeid for item in items if _is_real(item)
                 and not any(item.path.resolve().is_relative_to(p) for p in REAL_PLACES)]
    if misplaced:
        raise pytest.UsageError(
            f"tests marked {', '.join(REAL_MARKERS)} belong in tests/real/ (mirroring the "
            "package) or tests/e2e/, so that `make unit` leaves them out by place; move:\n  "
            + "\n  ".join(misplaced))
    # Real-component tests need root (namespaces, libvirt's system URI). In CI and `make test`
    # they run as root; a non-root developer sees them skipped with the reason, never passed.
    if _is_root():
        return
    skip = pytest.mark.skip(reason="needs root")
    for item in items:
        if _is_real(item):
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


#: This machine's files no test may change: test nodes keep theirs in folders of their own
#: (`node.system_root`, private mounts). (The batch labs add a user for their jobs and remove
#: it: the account files are not compared.)
_MACHINE_FILES = (Path("/etc/hosts"),)


@pytest.fixture(scope="session", autouse=True)
def _machine_files_untouched() -> Iterator[None]:
    before = {p: p.read_bytes() for p in _MACHINE_FILES if p.exists()}
    yield
    changed = [str(p) for p, data in before.items() if p.read_bytes() != data]
    assert not changed, f"the tests changed this machine's {', '.join(changed)}"
