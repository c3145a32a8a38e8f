"""A throwaway network for real tests: one Linux bridge and network namespaces on veth pairs.

Agents under test need their own addresses and a wire that a test can cut. A `NetLab` makes a
bridge (its name starts with the lab's unique prefix) with the host side's address, and
namespaces attached to it, each through a veth pair whose inside end is called `eth0`. Guests
join the same wire through `<interface type='bridge'><source bridge='{lab.bridge}'/>`.

Everything is recorded the moment it exists, and `close()` removes all of it, in reverse,
carrying on past individual failures (so a half-built lab is cleaned up too); it is safe to
call twice. Use it as a context manager. It runs `ip` as blocking subprocesses: it is test
and bench tooling, never on the agent's event loop.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from cloudd.errors import PermanentError

#: Linux interface names hold at most 15 bytes; the lab appends up to 6 to its prefix.
MAX_PREFIX = 9


class NetLabError(PermanentError):
    """The lab could not be built or torn down; the message names the command and its error."""


@dataclass(frozen=True)
class Netns:
    """One namespace on the lab's bridge."""

    name: str
    address: ipaddress.IPv4Interface
    host_veth: str

    @property
    def ip(self) -> str:
        return str(self.address.ip)


def ip(*args: str, netns: str | None = None) -> str:
    """Run `ip ARGS` (inside `netns` if given) and return its output; NetLabError on failure."""
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NetLabError(f"`{' '.join(argv)}` failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


class NetLab:
    """A bridge `<prefix>br` on `subnet`, the host at its first address, namespaces after it."""

    def __init__(self, prefix: str, *, subnet: str = "10.231.0.0/24") -> None:
        if not prefix.isascii() or not prefix.isalnum() or not 1 <= len(prefix) <= MAX_PREFIX:
            raise NetLabError(
                f"netlab prefix {prefix!r} must be 1-{MAX_PREFIX} ASCII letters or digits")
        try:
            net = ipaddress.IPv4Network(subnet)
        except ValueError as exc:
            raise NetLabError(f"netlab subnet {subnet!r} is not an IPv4 network: {exc}") from None
        if net.num_addresses < 4:
            raise NetLabError(f"netlab subnet {subnet} is too small (need at least a /30)")
        self.prefix = prefix
        self.subnet = net
        self.bridge = f"{prefix}br"
        hosts = net.hosts()
        self.host_address = ipaddress.IPv4Interface(f"{next(hosts)}/{net.prefixlen}")
        self._free = hosts
        self._used = {self.host_address.ip}
        self._namespaces: list[Netns] = []
        self._undo: list[tuple[str, ...]] = []  # `ip` commands that remove what exists, in order
        self._closed = False

    @property
    def host_ip(self) -> str:
        return str(self.host_address.ip)

    @property
    def namespaces(self) -> tuple[Netns, ...]:
        return tuple(self._namespaces)

    def allocate(self) -> ipaddress.IPv4Interface:
        """The next free address of the subnet (for a namespace or a guest)."""
        for addr in self._free:
            if addr not in self._used:
                self._used.add(addr)
                return ipaddress.IPv4Interface(f"{addr}/{self.subnet.prefixlen}")
        raise NetLabError(f"netlab subnet {self.subnet} has no free address left")

    def open(self) -> NetLab:
        """Create the bridge, up, with the host's address; refuse a subnet already routed here."""
        for route in json.loads(ip("-j", "-4", "route", "show") or "[]"):
            dst = route.get("dst", "")
            if dst and dst != "default" and ipaddress.IPv4Network(dst, strict=False).overlaps(
                    self.subnet):
                raise NetLabError(
                    f"netlab subnet {self.subnet} overlaps route {dst} on {route.get('dev')}")
        ip("link", "add", "name", self.bridge, "type", "bridge", "forward_delay", "0")
        self._undo.append(("link", "del", self.bridge))
        ip("addr", "add", str(self.host_address), "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        return self

    def add_netns(self, label: str, *, address: str | None = None) -> Netns:
        """A namespace `<prefix>-<label>` whose `eth0` is on the bridge, with `address`."""
        if not label.isascii() or not label.isalnum() or len(label) > 12:
            raise NetLabError(f"netns label {label!r} must be 1-12 ASCII letters or digits")
        if self._closed:
            raise NetLabError("netlab is closed")
        iface = (ipaddress.IPv4Interface(address if "/" in address else
                                         f"{address}/{self.subnet.prefixlen}")
                 if address else self.allocate())
        if iface.ip not in self.subnet:
            raise NetLabError(f"netns address {iface} is outside the lab's subnet {self.subnet}")
        if address and iface.ip in self._used:
            raise NetLabError(f"netns address {iface.ip} is already taken in this lab")
        self._used.add(iface.ip)
        name = f"{self.prefix}-{label}"
        index = len(self._namespaces)
        host_end, inner = f"{self.prefix}h{index}", f"{self.prefix}n{index}"
        ip("netns", "add", name)
        self._undo.append(("netns", "del", name))
        ip("link", "add", host_end, "type", "veth", "peer", "name", inner)
        self._undo.append(("link", "del", host_end))
        ip("link", "set", inner, "netns", name)
        ip("link", "set", inner, "name", "eth0", netns=name)
        ip("addr", "add", str(iface), "dev", "eth0", netns=name)
        ip("link", "set", "eth0", "up", netns=name)
        ip("link", "set", "lo", "up", netns=name)
        ip("link", "set", host_end, "master", self.bridge)
        ip("link", "set", host_end, "up")
        ns = Netns(name=name, address=iface, host_veth=host_end)
        self._namespaces.append(ns)
        return ns

    def run(self, ns: Netns | str, argv: Sequence[str], *, timeout: float = 60,
            ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside namespace `ns` and return its result (never raises on exit code)."""
        name = ns if isinstance(ns, str) else ns.name
        return subprocess.run(["ip", "netns", "exec", name, *argv], capture_output=True,
                              text=True, timeout=timeout, check=False)

    def cut(self, ns: Netns) -> None:
        """Take `ns` off the wire (its host-side veth down)."""
        ip("link", "set", ns.host_veth, "down")

    def restore(self, ns: Netns) -> None:
        """Put `ns` back on the wire."""
        ip("link", "set", ns.host_veth, "up")

    def close(self) -> None:
        """Remove everything the lab made, newest first; report what could not be removed."""
        self._closed = True
        errors = []
        while self._undo:
            args = self._undo.pop()
            try:
                ip(*args)
            except NetLabError as exc:
                # A veth goes away with its namespace; anything else left behind is reported.
                if "Cannot find device" not in str(exc):
                    errors.append(str(exc))
        self._namespaces.clear()
        if errors:
            raise NetLabError("netlab cleanup incomplete: " + "; ".join(errors))

    def __enter__(self) -> NetLab:
        try:
            return self.open()
        except BaseException:
            self.close()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
