"""How an agent inside a freshly booted node starts with nothing but its identity.

A node's VM carries its identity on the kernel command line (`cloudd --from-cmdline
/proc/cmdline`, the test guest) or in the identity file its NoCloud seed made cloud-init write
(`cloudd --from-identity /etc/cloudd/identity.json`, a real image): cloud, node name, role,
address, the pool hosts to contact (`name@address:port`), the term of the leader that defined
it, and where its certificate is (named on the command line; for an identity file, the `pki`
folder beside it). From that alone the agent builds its settings, and asks the hosts for the
cloud's manifest (`ManifestWanted`): the answer is checked as what it is, a text received
over the network (self-contained: nothing in it makes the node read a file), then written
into its own manifest folder, where the ordinary manifest watcher picks it up. From then on
the node is a member like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cloudd import log
from cloudd.backoff import Backoff, hashed_unit
from cloudd.config.agent import AgentSettings, Libvirt, Listen, PkiSettings
from cloudd.config.manifest import load_cloud_text
from cloudd.daemon.network.catalogue import ManifestOffer, ManifestWanted
from cloudd.durable import write_durable
from cloudd.errors import ClouddError, ConfigError, PermanentError
from cloudd.providers.catalog import catalog
from cloudd.vmctl.identity import IdentityError, NodeIdentity, from_cmdline, from_identity_json

#: Where a node agent keeps its state when the identity says nothing else (inside the guest).
NODE_STATE = Path("/var/lib/cloudd")
#: How a booting node paces its rounds of asking the seeds: from half a second, doubling, to
#: ten seconds at most (a pool host that is itself booting answers within seconds), with
#: jitter so that the nodes of a cloud started together do not ask in step.
ASK_BACKOFF = Backoff(base=0.5, cap=10.0, factor=2.0, jitter=0.25)
#: Seconds to wait, after writing a received manifest, for the manifest watcher to take it
#: (its poll interval is a few seconds) before asking again.
INSTALL_WAIT = 30.0
#: The mode of a received manifest: private, like every manifest cloudd installs from the
#: network (a node's view holds no secret's contents, but a pool host's text does).
MANIFEST_MODE = 0o600


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
    """The identity on a kernel command line (a copy of /proc/cmdline)."""
    return from_cmdline(_read(path))


def read_identity_file(path: Path) -> NodeIdentity:
    """The identity in a seed's identity file; its certificates are in `pki` beside it."""
    return from_identity_json(_read(path), pki=str(path.absolute().parent / "pki"))


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as e:
        raise PermanentError(f"cannot read the identity from {path}: {e.strerror}") from e


def settings_for(ident: NodeIdentity, *, state_dir: Path = NODE_STATE,
                 profile: Literal["production", "local"] = "production"
                 ) -> tuple[AgentSettings, tuple[Seed, ...]]:
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
        pki=PkiSettings(ca=pki / "ca.crt", cert=pki / f"{ident.node}.crt",
                        key=pki / f"{ident.node}.key"),
        libvirt=Libvirt(uri=None),
        state_dir=state_dir, manifest_dir=state_dir / "manifests",
        # beside the state when that is not the default (several test agents on one machine)
        api_socket=(Path("/run/cloudd/cloudd.sock") if state_dir == NODE_STATE
                    else state_dir / "api.sock"))
    return settings, seeds


def check_answer(ident: NodeIdentity, text: str) -> str | None:
    """Why a manifest received for `ident` is refused, or None: it must be self-contained
    and declare the node's own cloud."""
    try:
        cloud = load_cloud_text(text, catalog(), with_template=False)
    except ConfigError as e:
        return "; ".join(str(p) for p in e.problems)
    if cloud.name != ident.cloud:
        return f"it declares cloud {cloud.name}, not {ident.cloud}"
    return None


def write_manifest(folder: Path, cloud: str, text: str) -> Path:
    """Place a manifest received from a member into `folder`, atomically and durably."""
    folder.mkdir(parents=True, exist_ok=True)  # the usual mode, like the folder it stands for
    path = folder / f"{cloud}.yaml"
    write_durable(path, text, mode=MANIFEST_MODE)
    return path


async def fetch_manifest(ident: NodeIdentity, seeds: tuple[Seed, ...], *,
                         ask: Callable[[str, Any], Awaitable[Any]], folder: Path,
                         have: asyncio.Event, backoff: Backoff = ASK_BACKOFF,
                         sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
    """Ask the seeds in turn, with backoff, until a manifest is in force (`have` set).

    The jitter comes from a hash of the node's name and the round, so each node keeps its
    own schedule and a replay repeats it."""
    logger = log.get("nodeboot", cloud=ident.cloud, node=ident.node)
    rounds = 0
    while not have.is_set():
        for seed in seeds:
            try:
                answer = await ask(seed.name, ManifestWanted(ident.cloud))
            except (ClouddError, OSError, TimeoutError) as e:
                logger.info("manifest_not_yet", peer=seed.name, reason=str(e) or type(e).__name__)
                continue
            if isinstance(answer, ManifestOffer) and answer.cloud == ident.cloud:
                why = await asyncio.to_thread(check_answer, ident, answer.text)
                if why is not None:
                    logger.warning("message_refused", peer=seed.name, reason=why)
                    continue
                path = await asyncio.to_thread(write_manifest, folder, ident.cloud, answer.text)
                logger.info("manifest_received", peer=seed.name, path=str(path),
                            digest=answer.digest[:12])
                # asyncio.timeout, not wait_for: on 3.11 wait_for can lose a cancellation
                # that arrives together with the wake-up, and the task would not stop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(INSTALL_WAIT):
                        await have.wait()
                break
        if not have.is_set():
            rounds += 1
            subject = f"{ident.cloud}/{ident.node}"
            await sleep(backoff.delay(rounds, hashed_unit(subject, rounds)))

