"""A fence command for pool hosts that share one libvirtd (the test lab).

A leader re-places a dead host's nodes only once the host's fence command has proven that its
domains are gone. On a real pool that command powers the machine off (IPMI, a PDU). In the lab
the "hosts" are agents in network namespaces sharing one libvirtd, so powering a host off
means: destroy and undefine every domain whose cloudd metadata names that host (and, with
`--cloud`, that cloud), then look again. It exits 0 only when none is left, and 1 otherwise,
with the reason as its last line on stderr (the leader logs that line):

    python -m cloudd_lab.labfence --uri qemu:///system --host pm1 --cloud lr \
        [--record FILE]

`--record` appends one line per run (`<unix time> fenced <host> <domain>...`) so that a test
can put the fence in order with what the leader did next. Domains without cloudd metadata, or
naming no host, are never touched.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from cloudd.backoff import Backoff
from cloudd.errors import ClouddError
from cloudd.vmctl.backend import Backend, DomainInfo, PowerState


def owned(domains: Sequence[DomainInfo], *, host: str, cloud: str | None) -> list[DomainInfo]:
    """The domains a fence of `host` must remove (those whose metadata names it)."""
    return [d for d in domains
            if d.meta.host == host and (cloud is None or d.meta.cloud == cloud)]


async def fence(backend: Backend, *, host: str, cloud: str | None = None) -> list[str]:
    """Destroy and undefine `host`'s domains; the names of those still there afterwards."""
    for d in owned(await backend.list(), host=host, cloud=cloud):
        if d.state is not PowerState.STOPPED:
            await backend.destroy(d.name)
        await backend.undefine(d.name)
    return [d.name for d in owned(await backend.list(), host=host, cloud=cloud)]


async def _run(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    from cloudd.vmctl.libvirt_backend import LibvirtBackend  # the one libvirt importer

    backend = await LibvirtBackend.open(args.uri, reconnect=Backoff(base=0.5, cap=0.5))
    try:
        before = [d.name for d in owned(await backend.list(), host=args.host,
                                        cloud=args.cloud)]
        return before, await fence(backend, host=args.host, cloud=args.cloud)
    finally:
        await backend.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cloudd_lab.labfence",
        description="Fence a lab host: remove the domains its metadata names, on a shared "
                    "libvirtd; exit 0 only when none is left.")
    parser.add_argument("--uri", default="qemu:///system", help="libvirt URI")
    parser.add_argument("--host", required=True, help="the pool host to fence")
    parser.add_argument("--cloud", default=None, help="only this cloud's domains")
    parser.add_argument("--record", type=Path, default=None,
                        help="append '<time> fenced <host> <domains>' to this file")
    args = parser.parse_args(argv)
    if not args.host:
        parser.error("--host must not be empty")
    try:
        before, left = asyncio.run(_run(args))
    except ClouddError as e:
        print(f"fence {args.host}: {e}", file=sys.stderr)
        return 1
    if args.record is not None:
        with open(args.record, "a") as f:
            f.write(f"{time.time():.6f} fenced {args.host} {' '.join(before)}\n".rstrip()
                    + "\n")
    if left:
        print(f"fence {args.host}: domains still defined: {', '.join(left)}", file=sys.stderr)
        return 1
    print(f"fence {args.host}: removed {len(before)} domain(s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
