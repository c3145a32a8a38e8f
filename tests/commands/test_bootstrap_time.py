"""Bootstrap's time step: which networks a pool host serves, its chrony drop-in, and what is
installed and restarted where (a fake target answers the commands; the real one is
tests/real/commands/test_bootstrap_sshd.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import cast

import pytest

from cloudd.commands.bootstrap.prepare import check_local
from cloudd.commands.bootstrap.remote import Remote
from cloudd.commands.bootstrap.target import BootstrapError, Layout, Options, Target
from cloudd.commands.bootstrap.timeserver import clients, drop_in, serve_time
from cloudd.commands.bootstrap.wheels import Checkout
from cloudd.pki import init_ca

CHECKOUT = Path(__file__).resolve().parents[2]
TARGET = Target(name="pm1", address="192.0.2.70", known_hosts=Path("/dev/null"))
OPTIONS = Options(source=Checkout(CHECKOUT), wheelhouse=Path("/nonexistent"))


@pytest.mark.parametrize(("address", "given", "served"), [
    ("192.0.2.70", None, ("192.0.2.0/24",)),
    ("2001:db8::70", None, ("2001:db8::/64",)),
    ("192.0.2.70", ("10.1.2.3/16", "192.0.2.0/25"), ("10.1.0.0/16", "192.0.2.0/25")),
    ("192.0.2.70", (), ()),
])
def test_the_networks_served(address: str, given: tuple[str, ...] | None,
                             served: tuple[str, ...]) -> None:
    target = replace(TARGET, address=address)
    assert clients(target, replace(OPTIONS, time_clients=given)) == served


def test_a_bad_network_is_refused_before_connecting(tmp_path: Path) -> None:
    init_ca(tmp_path, now=dt.datetime.now(dt.UTC))
    (tmp_path / "known").write_text("")
    target = replace(TARGET, known_hosts=tmp_path / "known")
    options = replace(OPTIONS, pki_dir=tmp_path, time_clients=("10.0.0.0/33",))
    with pytest.raises(BootstrapError, match=r"bad --time-clients '10.0.0.0/33': not a network"):
        check_local(target, options)


def test_the_drop_in_allows_the_nodes_and_serves_unsynchronised() -> None:
    lines = [line for line in drop_in(["192.0.2.0/24", "10.9.0.0/16"]).splitlines()
             if not line.startswith("#")]
    assert lines == ["allow 192.0.2.0/24", "allow 10.9.0.0/16", "local stratum 10"]


@dataclass
class FakeTarget:
    """Answers `ok` by the command's first words; `put` reports a change unless `same`."""

    installed: bool = True
    systemd: bool = True
    same: bool = False
    commands: list[str] = field(default_factory=list)
    written: dict[str, bytes] = field(default_factory=dict)
    host: str = "pm1"

    async def ok(self, command: str) -> bool:
        self.commands.append(command)
        if command.startswith("dpkg-query"):
            return self.installed
        if command.startswith("test -d /run/systemd/system"):
            return self.systemd
        return True

    async def run(self, command: str, *, what: str, check: bool = True) -> str:
        self.commands.append(command)
        return ""

    async def put(self, path: str, data: bytes, *, mode: int) -> bool:
        self.written[path] = data
        return not self.same


def step(fake: FakeTarget, *, root: str = "", networks: tuple[str, ...] = ("192.0.2.0/24",)
         ) -> tuple[str, bool, str]:
    lines: list[tuple[str, bool, str]] = []
    asyncio.run(serve_time(cast(Remote, fake), Layout(root), networks,
                           done=lambda *line: lines.append(line)))
    assert len(lines) == 1
    return lines[0]


def ran(fake: FakeTarget, word: str) -> bool:
    return any(word in c for c in fake.commands)


def test_a_fresh_host_gets_chrony_the_drop_in_and_a_restart() -> None:
    fake = FakeTarget(installed=False)
    name, changed, detail = step(fake)
    assert (name, changed) == ("time", True)
    assert ran(fake, "apt-get install -y -q chrony") and ran(fake, "systemctl restart chrony")
    assert list(fake.written) == ["/etc/chrony/conf.d/cloudd.conf"]
    assert "allow 192.0.2.0/24" in fake.written["/etc/chrony/conf.d/cloudd.conf"].decode()
    assert "chrony installed with apt" in detail


def test_a_second_run_changes_and_restarts_nothing() -> None:
    fake = FakeTarget(same=True)
    assert step(fake)[1] is False
    assert not ran(fake, "apt-get") and not ran(fake, "restart")


def test_without_systemd_the_init_script_restarts_it() -> None:
    fake = FakeTarget(systemd=False)
    assert "chrony restarted (init script)" in step(fake)[2]
    assert ran(fake, "invoke-rc.d chrony restart") and not ran(fake, "systemctl")


def test_under_a_root_prefix_only_the_drop_in_is_written() -> None:
    fake = FakeTarget(installed=False)
    _, changed, detail = step(fake, root="/srv/t")
    assert changed and list(fake.written) == ["/srv/t/etc/chrony/conf.d/cloudd.conf"]
    assert not ran(fake, "apt-get") and not ran(fake, "restart") and not ran(fake, "dpkg")
    assert "neither installed nor restarted" in detail


def test_no_time_server_touches_nothing() -> None:
    fake = FakeTarget(installed=False)
    assert step(fake, networks=())[1] is False
    assert fake.commands == [] and fake.written == {}
