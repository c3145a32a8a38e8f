"""A node's NoCloud seed, made where its domain is defined: its identity from the manifest,
a fresh key, and a certificate from the node issuer.

A node in a VM of a real image learns who it is from the seed ISO attached to its domain
(`${seed}` in the template, see `cloudd.vmctl.domains`): its identity as the hosts render it
(cloud, node, role, address/prefix, gateway, the pool hosts as `name@address:port`, the term
of the DEFINE), a key made for it alone, its certificate (kind node, that cloud, its address
as a SAN IP) signed by the node issuer, followed by the issuer's certificate, and the
cluster's CA file. Nothing of it travels over the network or sits on a shared filesystem:

- a pool host makes it itself when it defines the domain (`NodeSeeds.prepare`, one of
  HostAgent's seed hooks), with the node issuer it holds beside its CA file, into its first
  image folder, mode 0600; and removes it when it undefines the domain (`NodeSeeds.remove`),
  which is what stopping the cloud or dropping the node from the manifest comes down to;
- an operator makes one with `cloudd-cli seed` (`make_seed`), for a node whose domain they
  define by hand from the built image.

A host makes seeds only for a template that attaches one; a DEFINE it cannot make the seed
for (no node issuer here, no genisoimage) fails with the reason, and the domain is not
defined.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path

from cloudd import log
from cloudd.config.model import Cloud, Node
from cloudd.errors import PermanentError, TemporaryError
from cloudd.pki import MEMBER_DAYS, NodeIssuer
from cloudd.vmctl.domains import SEED_SUFFIX, node_identity, node_of_domain, uses_seed
from cloudd.vmctl.identity import GuestSetup, Pki, build_seed
from cloudd.vmctl.template import node_mac


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def make_seed(cloud: Cloud, node: Node, *, term: int, port: int, issuer: NodeIssuer,
              ca_pem: str, out: Path, now: dt.datetime, mac: str = "",
              days: int = MEMBER_DAYS) -> Path:
    """Write node `node`'s seed ISO to `out` (0600); `mac` defaults to the one its domain
    gets from the template (`${mac}`)."""
    ident = node_identity(cloud, node, term=term, port=port)
    creds = issuer.issue(node.name, cloud=cloud.name, addresses=[str(node.address)], now=now,
                         days=days)
    pki = Pki(ca=ca_pem, cert=creds.chain.decode(), key=creds.key.decode())
    # The pool hosts serve the nodes' time; the manifest says who may log in.
    setup = GuestSetup(time_servers=tuple(h.address for h in cloud.pool),
                       root_keys=cloud.node_access.ssh_authorized_keys)
    return build_seed(ident, mac=mac or node_mac(cloud.name, node.name), pki=pki, out=out,
                      setup=setup)


class NodeSeeds:
    """A pool host's seed hooks (`cloudd.vmctl.hostagent.SeedHooks`) for one cloud."""

    def __init__(self, *, cloud: Callable[[], Cloud], seed_dir: Path, pki_dir: Path,
                 ca_file: Path, port: int, now: Callable[[], dt.datetime] = utcnow) -> None:
        self._cloud, self.seed_dir, self.pki_dir = cloud, seed_dir, pki_dir
        self.ca_file, self.port, self._now = ca_file, port, now
        self._log = log.get("vmctl.nodeseed", cloud=cloud().name)

    def path(self, domain: str) -> Path:
        """The seed of `domain` on this host (`seed_path` of its node, by the domain alone:
        a node already dropped from the manifest still has its seed removed)."""
        return self.seed_dir / f"{domain}{SEED_SUFFIX}"

    async def prepare(self, domain: str, term: int) -> None:
        """Before `domain` is defined in `term`: make its node's seed, when the template
        attaches one."""
        cloud = self._cloud()
        if cloud.template_text is None or not uses_seed(cloud.template_text):
            return
        node = node_of_domain(cloud, domain)
        if node is None:
            raise PermanentError(f"domain {domain!r} is no node's of cloud {cloud.name}: "
                                 "no seed for it")
        out = self.path(domain)
        try:
            await asyncio.to_thread(self._build, cloud, node, term, out)
        except OSError as e:
            raise TemporaryError(f"seed of {domain}: {e.strerror or e} "
                                 f"({e.filename or out})") from None
        self._log.info("seed_built", domain=domain, node=node.name, term=term, path=str(out))

    def _build(self, cloud: Cloud, node: Node, term: int, out: Path) -> None:
        issuer = NodeIssuer.load(self.pki_dir)
        make_seed(cloud, node, term=term, port=self.port, issuer=issuer,
                  ca_pem=self.ca_file.read_text(), out=out, now=self._now())

    async def remove(self, domain: str) -> None:
        """After `domain` is undefined (or found gone): remove its seed, if any."""
        path = self.path(domain)
        try:
            await asyncio.to_thread(path.unlink)
        except FileNotFoundError:
            return
        except OSError as e:
            raise TemporaryError(f"seed of {domain}: cannot remove {path}: "
                                 f"{e.strerror or e}") from None
        self._log.info("seed_removed", domain=domain, path=str(path))
