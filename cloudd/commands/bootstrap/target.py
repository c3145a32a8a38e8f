"""What bootstrap installs where: the target host, the options, the paths there, the steps.

Plain data shared by the local preparation (`prepare`), the wheels (`wheels`) and the steps
over SSH (`steps`). Every path written on the target is under `Target.root` (default `/`), so
tests can install into a scratch tree through a real sshd.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from cloudd import pki
from cloudd.config.agent import DEFAULT_PORT
from cloudd.errors import PermanentError

if TYPE_CHECKING:
    from cloudd.commands.bootstrap.wheels import Source


class BootstrapError(PermanentError):
    """Bootstrap refused or failed; the message is one line that says where and why."""


@dataclass(frozen=True)
class Target:
    """Where to install: the member's name, how to reach it, and the path prefix there."""

    name: str
    address: str
    known_hosts: Path
    port: int = 22
    user: str = "root"
    identity: Path | None = None
    root: str = ""
    """Prefix of every path written on the target ("" for /); tests use a scratch folder."""


@dataclass(frozen=True)
class Options:
    """What to install, from where on this machine."""

    source: Source
    """The cloudd to install: a checkout, or the distribution installed here (`wheels`)."""
    wheelhouse: Path
    """Cache of built wheels on this machine; reused across runs and targets."""
    pki_dir: Path = pki.DEFAULT_DIR
    """The cluster CA (ca.crt, ca.key); the member's NAME.crt/NAME.key are kept there too."""
    listen_port: int = DEFAULT_PORT
    settings_template: Path | None = None
    """agent.yaml with $name, $address, $port, $root placeholders; the built-in one if None."""
    time_clients: tuple[str, ...] | None = None
    """Networks the host serves time to (its nodes'); None: the /24 (IPv6: /64) of its
    address; (): none (the host's time setup is left alone). See `timeserver`."""


@dataclass(frozen=True)
class Step:
    """One step as done: its name, whether it changed the target, and what it found or did."""

    name: str
    changed: bool
    detail: str


@dataclass(frozen=True)
class Layout:
    """The paths on the target, under its root prefix."""

    root: str

    def p(self, path: str) -> str:
        return str(PurePosixPath(self.root + path)) if self.root else path

    @property
    def venv(self) -> str: return self.p("/opt/cloudd/venv")
    @property
    def wheels(self) -> str: return self.p("/opt/cloudd/wheels")
    @property
    def marker(self) -> str: return self.p("/opt/cloudd/venv/cloudd-wheels.sha256")
    @property
    def config(self) -> str: return self.p("/etc/cloudd/agent.yaml")
    @property
    def pki(self) -> str: return self.p("/etc/cloudd/pki")
    @property
    def unit(self) -> str: return self.p("/etc/systemd/system/cloudd.service")
    @property
    def chrony_drop_in(self) -> str: return self.p("/etc/chrony/conf.d/cloudd.conf")
    @property
    def pidfile(self) -> str: return self.p("/run/cloudd/cloudd.pid")
    @property
    def logfile(self) -> str: return self.p("/var/log/cloudd/agent.log")
    @property
    def dirs(self) -> tuple[tuple[str, str], ...]:
        # The agent's own folders are private: its settings, manifests (fence commands,
        # secret paths) and state are root's alone. The state folder is 0711, as the agent
        # makes it at every start (`cloudd.daemon.main.STATE_DIR_MODE`) and the unit says:
        # qemu and the roles' users pass through it to what they are given by path.
        return ((self.p("/etc/cloudd"), "0700"), (self.p("/var/lib/cloudd"), "0711"),
                (self.p("/run/cloudd"), "0700"), (self.p("/var/log/cloudd"), "0750"),
                (self.wheels, "0755"))
