"""sd_notify over a real AF_UNIX datagram socket, as systemd provides it."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudd.daemon.base.sdnotify import Notifier, watchdog_interval


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    yield path, sock
    sock.close()


def receive(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_watchdog_stopping_reach_the_socket(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("agent pm1 running")
    assert receive(sock) == ["READY=1", "STATUS=agent pm1 running", f"MAINPID={os.getpid()}"]
    assert n.watchdog()
    assert receive(sock) == ["WATCHDOG=1"]
    assert n.stopping()
    assert receive(sock) == ["STOPPING=1", "STATUS=stopping"]
    n.close()
    n.close()  # safe twice
    assert not n.notify("READY=1")


def test_abstract_socket_name() -> None:
    name = f"cloudd-h1-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(10)
    try:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.status("hello")
        assert receive(sock) == ["STATUS=hello"]
        n.close()
    finally:
        sock.close()


def test_without_socket_every_call_is_a_no_op() -> None:
    n = Notifier({})
    assert not n.enabled
    assert not n.ready()
    assert not n.watchdog()
    n.close()


def test_a_vanished_socket_does_not_raise(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.enabled
    assert not n.ready()
    n.close()


@pytest.mark.parametrize(("env", "expected"), [
    ({}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "junk"}, None),
    ({"WATCHDOG_USEC": "10000000"}, 5.0),
    ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "42"}, 5.0),
    ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "43"}, None),
])
def test_watchdog_interval_is_half_the_period_for_this_pid(env: dict[str, str],
                                                           expected: float | None) -> None:
    assert watchdog_interval(env, pid=42) == expected
