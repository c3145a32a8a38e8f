"""NetLab against the real kernel: bridge, namespaces, traffic between them, full cleanup."""

from __future__ import annotations

import random
import subprocess
import uuid

import pytest
from cloudd_lab.netlab import NetLab, NetLabError, ip

#: busybox-static is installed by setup; iputils' ping is not.
PING = ("busybox", "ping")


def _prefix() -> str:
    return "h7" + uuid.uuid4().hex[:5]


def _subnet() -> str:
    # A random /24 of the private test range, so that concurrent runs do not overlap.
    return f"10.231.{random.randrange(100, 250)}.0/24"


def _links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout


def _netns() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                          check=True).stdout


def _assert_gone(prefix: str) -> None:
    assert prefix not in _links()
    assert prefix not in _netns()


@pytest.mark.netns
def test_namespaces_talk_to_each_other_and_to_the_host_then_vanish() -> None:
    prefix = _prefix()
    with NetLab(prefix, subnet=_subnet()) as lab:
        a = lab.add_netns("a")
        b = lab.add_netns("b")
        assert f"{prefix}br" in _links()
        assert a.name in _netns() and b.name in _netns()
        assert lab.host_ip != a.ip != b.ip
        for src, dst in ((a, b.ip), (b, a.ip), (a, lab.host_ip)):
            done = lab.run(src, [*PING, "-c", "1", "-W", "5", dst])
            assert done.returncode == 0, done.stdout + done.stderr
        host = subprocess.run([*PING, "-c", "1", "-W", "5", a.ip], capture_output=True,
                              text=True, check=False)
        assert host.returncode == 0, host.stdout
        inside = ip("-o", "addr", "show", "dev", "eth0", netns=a.name)
        assert str(a.address) in inside
    _assert_gone(prefix)


@pytest.mark.netns
def test_cut_takes_a_namespace_off_the_wire_and_restore_brings_it_back() -> None:
    prefix = _prefix()
    with NetLab(prefix, subnet=_subnet()) as lab:
        a, b = lab.add_netns("a"), lab.add_netns("b")
        lab.cut(b)
        lost = lab.run(a, [*PING, "-c", "1", "-W", "1", b.ip])
        assert lost.returncode != 0
        assert "100% packet loss" in lost.stdout, lost.stdout + lost.stderr
        lab.restore(b)
        assert lab.run(a, [*PING, "-c", "1", "-W", "5", b.ip]).returncode == 0
    _assert_gone(prefix)


@pytest.mark.netns
def test_explicit_addresses_are_checked_and_never_handed_out_twice() -> None:
    prefix = _prefix()
    subnet = _subnet()
    base = subnet.rsplit(".", 1)[0]
    with NetLab(prefix, subnet=subnet) as lab:
        a = lab.add_netns("a", address=f"{base}.2")
        assert a.ip == f"{base}.2"
        assert str(lab.allocate().ip) == f"{base}.3"
        with pytest.raises(NetLabError, match="already taken"):
            lab.add_netns("b", address=f"{base}.3")
        with pytest.raises(NetLabError, match="outside the lab's subnet"):
            lab.add_netns("c", address="10.9.9.9")
        assert [n.name for n in lab.namespaces] == [a.name]
    _assert_gone(prefix)


@pytest.mark.netns
def test_failure_halfway_is_cleaned_up_and_close_is_idempotent() -> None:
    prefix = _prefix()
    lab = NetLab(prefix, subnet=_subnet()).open()
    lab.add_netns("a")
    # Someone else's namespace of the same name makes `ip netns add` fail halfway through.
    taken = f"{prefix}-b"
    subprocess.run(["ip", "netns", "add", taken], check=True)
    try:
        with pytest.raises(NetLabError, match=f"netns add {taken}"):
            lab.add_netns("b")
        lab.close()
        lab.close()
        assert f"{prefix}br" not in _links()
        assert f"{prefix}-a" not in _netns()
        assert taken in _netns()  # not the lab's: left alone
    finally:
        subprocess.run(["ip", "netns", "del", taken], check=False)
    _assert_gone(prefix)


@pytest.mark.netns
def test_a_subnet_already_routed_is_refused_and_leaves_nothing() -> None:
    prefix = _prefix()
    subnet = _subnet()
    with NetLab(prefix, subnet=subnet):
        other = _prefix()
        with pytest.raises(NetLabError, match="overlaps route"), NetLab(other, subnet=subnet):
            pass
        _assert_gone(other)
    _assert_gone(prefix)
