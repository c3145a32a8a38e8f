"""How an agent inside a freshly booted node starts with nothing but its identity.

A node's VM carries its identity on the kernel command line (or a cloud-init seed): cloud,
node name, role, address, the pool hosts to contact (`name@address:port`), the term of the
leader that defined it, and where its certificate is. From that alone the agent builds its
settings, and asks the hosts for the cloud's manifest (`ManifestWanted`): the answer is written
into its own manifest folder, where the ordinary manifest watcher picks it up. From then on the
node is a member like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudd import log
from cloudd.config.agent import AgentSettings, Libvirt, Listen, Pki
from cloudd.daemon.network.catalogue import ManifestOffer, ManifestWanted
from cloudd.errors import ClouddError, PermanentError
from cloudd.vmctl.identity import IdentityError, NodeIdentity, from_cmdline

#: Where a node agent keeps its state when the identity says nothing else (inside the guest).
NODE_STATE = Path("/var/lib/cloudd")


@dataclass(frozen=True)
class Seed:
    """A member to ask for the manifest."""

    name: str
    address: str
    port: int


def parse_member(text: str) -> Seed:
    """`name@address:port` (the form the leader writes into identities)."""
    name, at, rest = text.partition("@")
    address, colon, port = rest.rpartition(":")
    if not at or not colon or not name or not address or not port.isdigit():
        raise IdentityError(f"identity member {text!r} is not name@address:port")
    return Seed(name, address.strip("[]"), int(port))


def read_identity(path: Path) -> NodeIdentity:
    try:
        text = path.read_text()
    except OSError as e:
        raise PermanentError(f"cannot read the identity from {path}: {e.strerror}") from e
    return from_cmdline(text)


def settings_for(ident: NodeIdentity, *, state_dir: Path = NODE_STATE,
                 profile: str = "production") -> tuple[AgentSettings, tuple[Seed, ...]]:
    """The agent settings a node's identity implies, and the members to ask first."""
    seeds = tuple(parse_member(m) for m in ident.members)
    if not seeds:
        raise IdentityError("the identity names no member to contact (cloudd.members)")
    if not ident.pki:
        raise IdentityError("the identity names no certificate folder (cloudd.pki)")
    pki = Path(ident.pki)
    address = ident.address.split("/")[0]
    settings = AgentSettings(
        name=ident.node, profile=profile,
        listen=Listen(address=address, port=seeds[0].port),
        pki=Pki(ca=pki / "ca.crt", cert=pki / f"{ident.node}.crt", key=pki / f"{ident.node}.key"),
        libvirt=Libvirt(uri=None),
        state_dir=state_dir, manifest_dir=state_dir / "manifests",
        # beside the state when that is not the default (several test agents on one machine)
        api_socket=(Path("/run/cloudd/cloudd.sock") if state_dir == NODE_STATE
                    else state_dir / "api.sock"))
    return settings, seeds


def write_manifest(folder: Path, cloud: str, text: str) -> Path:
    """Atomically place a manifest received from a member into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{cloud}.yaml"
    tmp = folder / f".{cloud}.yaml.tmp"
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


async def fetch_manifest(ident: NodeIdentity, seeds: tuple[Seed, ...], *,
                         ask: Callable[[str, Any], Awaitable[Any]], folder: Path,
                         have: asyncio.Event) -> None:
    """Ask the seeds in turn, with backoff, until a manifest is in force (`have` set)."""
    logger = log.get("nodeboot", cloud=ident.cloud, node=ident.node)
    delay = 0.5
    while not have.is_set():
        for seed in seeds:
            try:
                answer = await ask(seed.name, ManifestWanted(ident.cloud))
            except (ClouddError, OSError, TimeoutError) as e:
                logger.info("manifest_not_yet", peer=seed.name, reason=str(e) or type(e).__name__)
                continue
            if isinstance(answer, ManifestOffer) and answer.cloud == ident.cloud:
                path = write_manifest(folder, ident.cloud, answer.text)
                logger.info("manifest_received", peer=seed.name, path=str(path),
                            digest=answer.digest[:12])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(have.wait(), timeout=30)
                break
        if not have.is_set():
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

