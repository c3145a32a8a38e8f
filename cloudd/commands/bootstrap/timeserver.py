"""Bootstrap's time step: a pool host serves time to its cloud's nodes with chrony.

Why: a node's clock must agree with its hosts' and its peers' (TLS validity, munge's
credentials, the schedulers), but a node VM reaches no NTP server of the outside world, and a
guest under TCG drifts by seconds an hour. So each node's seed makes its cloud's pool hosts its
only time servers (`cloudd.vmctl.identity.chrony_conf`), and each pool host serves them:
chrony from Debian, with a drop-in that allows the nodes' network and keeps serving at
`local stratum 10` when the host itself has lost its own upstream servers.

The networks served are `--time-clients` (default: the /24, or for IPv6 the /64, of the
host's address, where the manifests' examples put their nodes); `--no-time-server` leaves the
host's time setup alone (an operator who serves time otherwise). Under `--root` (tests into a
scratch tree) only the drop-in is written: the machine's packages and services are not the
target's.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Callable, Sequence
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from cloudd.commands.bootstrap.target import BootstrapError, Layout, Options, Target

if TYPE_CHECKING:  # the SSH connection's type only: `prepare` (and `cloudd-cli image`) speak no SSH
    from cloudd.commands.bootstrap.remote import Remote

Report = Callable[[str, bool, str], None]
#: The stratum a pool host serves at while it has no upstream server of its own.
LOCAL_STRATUM = 10
_INSTALLED = "dpkg-query -W -f='${Status}' chrony 2>/dev/null | grep -q 'ok installed'"


def clients(target: Target, options: Options) -> tuple[str, ...]:
    """The networks to serve, normalized; BootstrapError naming a bad one."""
    if options.time_clients is None:
        address = ipaddress.ip_address(target.address)
        prefix = 24 if address.version == 4 else 64
        return (str(ipaddress.ip_network(f"{address}/{prefix}", strict=False)),)
    out = []
    for value in options.time_clients:
        try:
            out.append(str(ipaddress.ip_network(value, strict=False)))
        except ValueError:
            raise BootstrapError(f"bad --time-clients {value!r}: not a network "
                                 "(e.g. 192.0.2.0/24)") from None
    return tuple(out)


def drop_in(networks: Sequence[str]) -> str:
    """The host's chrony drop-in (conf.d, read after Debian's own configuration)."""
    return ("# Written by cloudd-cli bootstrap: this pool host serves time to its cloud's nodes,\n"
            "# whose seeds make the pool hosts their only time servers.\n"
            + "".join(f"allow {n}\n" for n in networks)
            + "# Keep serving when this host has lost its own servers: the nodes then agree\n"
            "# with their hosts, which is what TLS, munge and the schedulers need.\n"
            f"local stratum {LOCAL_STRATUM}\n")


async def serve_time(remote: Remote, layout: Layout, networks: Sequence[str], *,
                     done: Report) -> None:
    """Install chrony if missing, write the drop-in, restart chrony when either changed."""
    if not networks:
        done("time", False, "no time served (--no-time-server): the nodes need another "
             "NTP server on their network")
        return
    installed = False
    if not layout.root and not await remote.ok(_INSTALLED):
        apt = "DEBIAN_FRONTEND=noninteractive apt-get install -y -q chrony"
        if not await remote.ok(apt):  # a fresh host may have no package lists yet
            await remote.run(f"apt-get update -q && {apt}", what="installing chrony")
        installed = True
    folder = shlex.quote(str(PurePosixPath(layout.chrony_drop_in).parent))
    await remote.run(f"install -d -m 0755 {folder}", what="making folders")
    changed = await remote.put(layout.chrony_drop_in, drop_in(networks).encode(), mode=0o644)
    detail = (f"chrony serves {', '.join(networks)} (local stratum {LOCAL_STRATUM}), "
              f"{layout.chrony_drop_in}")
    if layout.root:
        done("time", changed, f"{detail}; under --root: chrony neither installed nor restarted")
        return
    if changed or installed:
        detail += await _restart(remote)
    done("time", changed or installed, detail + (", chrony installed with apt" if installed
                                                 else ""))


async def _restart(remote: Remote) -> str:
    """Restart chrony so that it reads the drop-in; what was done, for the step's line."""
    if await remote.ok("test -d /run/systemd/system"):
        await remote.run("systemctl enable -q chrony && systemctl restart chrony",
                         what="restarting chrony")
        return ", chrony restarted"
    # No systemd: Debian's init script, which a policy-rc.d may forbid.
    if await remote.ok("invoke-rc.d chrony restart"):
        return ", chrony restarted (init script)"
    return ", chrony NOT restarted (no systemd, and invoke-rc.d refused): restart it to serve"
