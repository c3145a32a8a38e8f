"""The host side of the leader's orders: run domain commands on this host's Backend, fenced.

Every command carries the term of the leader that sent it. `execute` runs a command its
caller has admitted: in the agent that is `cloudd.daemon.host.duties.HostDuties`, which admits
a command only from the member holding this host's own unexpired lease for exactly that term,
and only what the cloud in force allows (`cloudd.daemon.host.admission`). So the terms seen
here are terms this host granted a lease in, never a number a sender made up. The host agent
keeps the highest of them in a file of its state dir (written atomically, and before the
command that raised it acts, so that a crash cannot forget a term it already obeyed); a
command with a lower term is refused with CommandOutcome.STALE_TERM and nothing is done. That
is the fencing token that keeps a deposed leader, still believing it leads, from touching VMs.
In the agent the election reads that file at start (with its own term file) and hands the
token over (`highest_term`); when the file held no term it was set aside, and the host's
duties run no command until the election has relearned the terms and `learn` has written the
proven token here.

Commands are idempotent: defining what exists, starting what runs, destroying or resetting
what is stopped, undefining what is gone all answer CommandOutcome.NOOP. Failures come back as
CommandOutcome.FAILED results (with `retry_after` for temporary ones), never as exceptions:
the network layer only has to send the Result back.

Resets. RESET resets a running domain whose node's agent the leader has found unreachable too
long (a hung guest: `cloudd.vmctl.plan.hung`); like START and SHUTDOWN it names only a
domain. When the guest's qemu does not answer, the backend destroys and starts the domain
instead (`Backend.reset`), which takes longer than a request may wait: so, as FETCH does, the
reset runs in the background and RESET waits at most `reset_wait` seconds, answering
CommandOutcome.PENDING while it runs; the same RESET again joins the reset under way (one
per domain). A finished reset answers only a RESET of the term that started it: a leader
deposed while it waited never asks again, and the next leader's RESET, maybe much later for a
guest hung anew, must reset it, not hear of the old one.

Live migration. MIGRATE moves a running domain to another pool host that shares its storage
(`Backend.migrate`: the libvirtds hand it over, peer to peer), with the target's name stamped
into its metadata, so that the moved domain is the target's from its first moment there and
no longer this host's. It runs in the background as a reset does, answering PENDING while the
guest's memory crosses, and is aborted past `migrate_limit` seconds (the guest runs on here).
What the command names (the target, its hypervisor's URI and address) is checked against the
manifest in force before it runs (`cloudd.daemon.host.admission`).

Domain events of cloudd's domains (and the backend's DISCONNECTED/RESYNC) are forwarded at once
to the `on_event` callback given to `run_events`; the transport to the leader is not here.

Ownership by cloud and host. A host agent serves one cloud (`cloud`): a domain whose metadata
names another cloud is not its own, whatever its name. DEFINE stamps this host's name into the
domain's cloudd metadata (`CloudMeta.host`). A domain whose metadata names another cloud or
another host is not this host's: LIST leaves it out, its events are not forwarded, and every
command on it (a DEFINE of the same name included) fails without acting. Two clouds on one
libvirtd therefore never touch each other's domains, even where their `{cloud}-{node}` names
collide (cloud `a-b` node `c`, cloud `a` node `b-c`): the second DEFINE is refused, and the
names stay as they are. On a real pool (one libvirtd per host) every domain a host sees is its
own host's; the host check matters where several host agents share one libvirtd (the test
lab). Domains without a host (defined before the attribute existed) count as this host's.

Seeds. With `seeds` (the agent's are `cloudd.vmctl.nodeseed.NodeSeeds`), a DEFINE first
makes the node's seed ISO its domain attaches, once the domain is known to be this host's to
define, and fails without defining when the seed cannot be made; an UNDEFINE removes the seed
once the domain is gone (also when it was gone already), never for another cloud's or another
host's domain of that name.

Images. INVENTORY reports the backend's images plus the image files found in `image_dirs`
(by default the conventional /var/lib/cloudd/images): the planner places a node only on a
host that has its image, or that can copy it from the node's source host. FETCH is that
copy: SFTP from the source address, host key checked against the operator's known_hosts
(`CopySettings`), into one of the image folders. A copy can outlast a request's timeout, so
FETCH starts it in the background and waits at most `fetch_wait` seconds: if it is still
running the answer is CommandOutcome.PENDING and the leader sends the same FETCH again, which
joins the copy under way (one copy per image path, however many nodes or leaders ask for it).

Overlays. OVERLAY names the domain whose disk the overlay is; the host records path -> domain
(`cloudd.vmctl.overlays`, in its state dir) before it creates the file, and INVENTORY reports
the recorded overlays still present. REMOVE_IMAGE removes one, for the leader's RemoveImage
(its node left the manifest, or the cloud is stopped), only when all of these hold: the path
is directly inside an image folder; this host's record names it as the overlay of exactly the
command's domain (so never a base image, another cloud's file or anything an operator put
there); that domain is not defined here; and no domain defined here, of any cloud or none,
uses the file as a disk. A refusal removes nothing. A domain undefined to be re-defined or
re-placed keeps its overlay: nothing but REMOVE_IMAGE ever removes one.
"""

from __future__ import annotations

import asyncio
import enum
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cloudd import log
from cloudd.durable import TermFile
from cloudd.errors import ClouddError, TemporaryError
from cloudd.vmctl.backend import (
    Backend,
    DomainEvent,
    DomainEventKind,
    DomainInfo,
    Inventory,
    NoSuchDomain,
)
from cloudd.vmctl.metadata import CloudMeta, MetadataError, from_domain_xml, stamp_host
from cloudd.vmctl.overlays import OVERLAYS_FILE, OverlayRecord, remove_file

if TYPE_CHECKING:
    from cloudd.vmctl.images import CopySettings

#: The file of the state dir that keeps the highest term seen (one decimal integer).
TERM_FILE = "highest-term"
#: Where a host keeps node images by convention (DESIGN.md, "Files on a machine").
DEFAULT_IMAGE_DIRS: tuple[Path, ...] = (Path("/var/lib/cloudd/images"),)
_IMAGE_SUFFIXES = (".qcow2", ".img", ".raw")


class Op(enum.Enum):
    DEFINE = "define"
    START = "start"
    SHUTDOWN = "shutdown"
    DESTROY = "destroy"
    RESET = "reset"
    UNDEFINE = "undefine"
    LIST = "list"
    INVENTORY = "inventory"
    OVERLAY = "overlay"
    FETCH = "fetch"
    REMOVE_IMAGE = "remove-image"
    MIGRATE = "migrate"


#: The commands a host checks against the manifest it has in force (they name host resources:
#: a domain's XML, an overlay's base, a copy's source, an image to remove); they carry the
#: leader's generation.
MANIFEST_CHECKED = frozenset({Op.DEFINE, Op.OVERLAY, Op.FETCH, Op.REMOVE_IMAGE, Op.MIGRATE})
#: Seconds a live migration may take before it is aborted (the guest runs on where it was):
#: under the 120 s the leader waits for a command it is told is pending
#: (`cloudd.daemon.leader.controller.PENDING_LIMIT`), so that the host gives up first.
MIGRATE_LIMIT = 90.0


@dataclass(frozen=True)
class HostCommand:
    """One order from the leader. `domain` names the target (empty for LIST/INVENTORY/FETCH);
    `xml` is the full domain XML for DEFINE; OVERLAY makes `image` a copy-on-write overlay of
    `base` (both on this host, `image` inside one of its image folders) as `domain`'s disk;
    FETCH copies `image` (the same path there as here, inside an image folder) from the host
    at address `source`; REMOVE_IMAGE removes `image`, an overlay this host made for `domain`;
    MIGRATE moves `domain` live to pool host `target`, whose hypervisor answers at
    `target_uri` and takes the guest's memory at `target_address` (`unsafe`: without the
    hypervisor's own check that the disks are on shared storage; `tls`: the stream encrypted).
    `generation` fingerprints the manifest the leader rendered and chose from
    (`cloudd.vmctl.domains.DomainRenderer.generation`): a host that holds another generation
    refuses a command it cannot check as "not in force here yet", a temporary refusal."""

    op: Op
    term: int
    domain: str = ""
    xml: str = ""
    image: str = ""
    base: str = ""
    source: str = ""
    generation: str = ""
    target: str = ""
    target_uri: str = ""
    target_address: str = ""
    unsafe: bool = False
    tls: bool = False


class CommandOutcome(enum.Enum):
    DONE = "done"
    NOOP = "noop"
    PENDING = "pending"
    """Still running (an image copy, a reset): send the same command again to go on waiting."""
    STALE_TERM = "stale-term"
    FAILED = "failed"


@dataclass(frozen=True)
class HostResult:
    command: HostCommand
    outcome: CommandOutcome
    #: the highest term this host has seen, after this command
    term_seen: int
    message: str = ""
    #: for temporary failures, seconds after which to try again
    retry_after: float | None = None
    domains: tuple[DomainInfo, ...] = ()
    inventory: Inventory | None = None


class SeedHooks(Protocol):
    """A node's seed ISO beside its domain (`cloudd.vmctl.nodeseed.NodeSeeds`): made before
    the domain is defined, removed once it is undefined or found gone."""

    async def prepare(self, domain: str, term: int) -> None: ...

    async def remove(self, domain: str) -> None: ...


class HostAgent:
    """Executes fenced, idempotent domain commands on one host's Backend."""

    def __init__(self, backend: Backend, *, state_dir: Path, host: str = "", cloud: str = "",
                 image_dirs: tuple[Path, ...] = DEFAULT_IMAGE_DIRS,
                 copy: CopySettings | None = None, fetch_wait: float = 5.0,
                 seeds: SeedHooks | None = None, reset_wait: float = 5.0,
                 migrate_limit: float = MIGRATE_LIMIT,
                 highest_term: int | None = None) -> None:
        # The image code (copies, overlays) is loaded by the host that runs commands: a
        # node's agent imports this module only for the wire's HostCommand.
        from cloudd.vmctl.images import CopySettings

        self.backend = backend
        #: the nodes' seed ISOs, made on DEFINE and removed on UNDEFINE (None: no seeds)
        self.seeds = seeds
        #: this host's pool name, stamped into what it defines; "" stamps nothing
        self.host = host
        #: the cloud this agent serves: other clouds' domains are not its own ("": any cloud,
        #: for tools and tests that drive one hypervisor by hand)
        self.cloud = cloud
        self.image_dirs = image_dirs
        self.copy = copy or CopySettings()
        #: seconds a FETCH waits for its copy before answering PENDING (under the transport's
        #: request timeout, so that the answer arrives)
        self.fetch_wait = fetch_wait
        self._copies: dict[Path, asyncio.Task[bool]] = {}
        #: seconds a RESET or MIGRATE waits for its act before answering PENDING (as
        #: `fetch_wait`)
        self.reset_wait = reset_wait
        #: seconds a migration may take before it is aborted
        self.migrate_limit = migrate_limit
        #: (op, domain, target) -> the term that started its reset or migration (to that
        #: target; "" for a reset), and the act
        self._lasting: dict[tuple[Op, str, str], tuple[int, asyncio.Task[bool]]] = {}
        #: the overlays this host made for its cloud (path -> domain), kept in `state_dir`
        self.overlays = OverlayRecord(state_dir / OVERLAYS_FILE)
        # one overlay made or removed at a time: a check and the act it allows stay together
        self._images_lock = asyncio.Lock()
        self.store = TermFile(state_dir / TERM_FILE)
        #: the fencing token: as the agent's election read it (`highest_term`), else from the
        #: file (CorruptStateFile when it holds no term)
        self.highest_term = self.store.load() if highest_term is None else highest_term
        self._term_lock = asyncio.Lock()
        self._log = log.get("vmctl.hostagent", host=host or os.uname().nodename)

    def mine(self, meta: CloudMeta | None) -> bool:
        """Whether a domain with this metadata is this host's to report and touch."""
        if meta is None:
            return True  # not a domain's event (DISCONNECTED, RESYNC)
        if self.cloud and meta.cloud != self.cloud:
            return False
        return not meta.host or not self.host or meta.host == self.host

    async def _admit(self, term: int) -> bool:
        # The lock orders term raises; the file is written before the command acts.
        async with self._term_lock:
            if term < self.highest_term:
                return False
            if term > self.highest_term:
                await asyncio.to_thread(self.store.save, term)
                self._log.info("new term seen", term=term, previous=self.highest_term)
                self.highest_term = term
            return True

    async def learn(self, term: int) -> None:
        """Take `term` as the fencing token at least, proven elsewhere (the election relearned
        the terms after this file was lost): written, as a proven term, before it counts
        (OSError when the disk refuses; nothing changes then)."""
        async with self._term_lock:
            term = max(term, self.highest_term)
            await asyncio.to_thread(self.store.save, term)
            self._log.info("fencing term relearned", term=term, previous=self.highest_term)
            self.highest_term = term

    async def execute(self, cmd: HostCommand) -> HostResult:
        """Run a command its caller admitted (see the module docstring), fenced by its term."""
        if cmd.term < 0:
            return self._result(cmd, CommandOutcome.FAILED, f"invalid term {cmd.term}")
        if not await self._admit(cmd.term):
            self._log.warning("command refused: stale term", term=cmd.term,
                              domain=cmd.domain, op=cmd.op.value,
                              highest=self.highest_term)
            return self._result(cmd, CommandOutcome.STALE_TERM,
                                f"term {cmd.term} is older than {self.highest_term}")
        try:
            return await self._run(cmd)
        except TemporaryError as e:
            self._log.warning("command failed, temporary", term=cmd.term, domain=cmd.domain,
                              op=cmd.op.value, error=str(e))
            return self._result(cmd, CommandOutcome.FAILED, str(e), retry_after=e.delay)
        except ClouddError as e:
            self._log.error("command failed", term=cmd.term, domain=cmd.domain,
                            op=cmd.op.value, error=str(e))
            return self._result(cmd, CommandOutcome.FAILED, str(e))

    async def _run(self, cmd: HostCommand) -> HostResult:
        b = self.backend
        if cmd.op is Op.LIST:
            domains = tuple(d for d in await b.list() if self.mine(d.meta))
            return self._result(cmd, CommandOutcome.DONE, domains=domains)
        if cmd.op is Op.INVENTORY:
            return self._result(cmd, CommandOutcome.DONE, inventory=await self._inventory())
        if cmd.op is Op.OVERLAY:
            return await self._overlay(cmd)
        if cmd.op is Op.FETCH:
            return await self._fetch(cmd)
        if cmd.op is Op.REMOVE_IMAGE:
            return await self._remove_image(cmd)
        if cmd.op is Op.RESET and cmd.domain:
            return await self._lasting_act(cmd, lambda: self.backend.reset(cmd.domain))
        if cmd.op is Op.MIGRATE and cmd.domain:
            return await self._migrate(cmd)
        if cmd.op is Op.DEFINE:
            if not cmd.xml:
                return self._result(cmd, CommandOutcome.FAILED, "define without domain XML")
            wrong = self._wrong_define(cmd)
            if wrong:
                self._log.warning("command_refused", term=cmd.term, domain=cmd.domain,
                                  reason=wrong)
                return self._result(cmd, CommandOutcome.FAILED, wrong)
            xml = stamp_host(cmd.xml, self.host) if self.host else cmd.xml
            await self._refuse_foreign(cmd.domain)
            if self.seeds is not None:  # the domain's cdrom is there before the domain
                await self.seeds.prepare(cmd.domain, cmd.term)
            changed = await b.define(xml)
        elif not cmd.domain:
            return self._result(cmd, CommandOutcome.FAILED, f"{cmd.op.value} without a domain name")
        else:
            await self._refuse_foreign(cmd.domain)
            action = {Op.START: b.start, Op.SHUTDOWN: b.shutdown, Op.DESTROY: b.destroy,
                      Op.UNDEFINE: b.undefine}[cmd.op]
            changed = await action(cmd.domain)
            if cmd.op is Op.UNDEFINE and self.seeds is not None:  # gone now, or before
                await self.seeds.remove(cmd.domain)
        outcome = CommandOutcome.DONE if changed else CommandOutcome.NOOP
        self._log.info(f"domain {cmd.op.value}: {outcome.value}", term=cmd.term,
                       domain=cmd.domain)
        return self._result(cmd, outcome)

    async def _overlay(self, cmd: HostCommand) -> HostResult:
        from cloudd.vmctl.images import ImageError, ensure_overlay

        image, base = Path(cmd.image), Path(cmd.base)
        if not (image.is_absolute() and base.is_absolute()):
            return self._result(cmd, CommandOutcome.FAILED, "overlay needs absolute image and base")
        if not cmd.domain:
            return self._result(cmd, CommandOutcome.FAILED,
                                "overlay without the domain whose disk it is")
        outside = await self._outside(image)
        if outside:
            return self._result(cmd, CommandOutcome.FAILED, f"overlay {outside}")
        async with self._images_lock:
            try:
                if not await asyncio.to_thread(image.exists):
                    # recorded first: a crash after the create leaves no overlay unknown
                    await asyncio.to_thread(self.overlays.add, str(image), cmd.domain)
                changed = await ensure_overlay(base, image)
                # present already on that base: the manifest says it is this node's disk
                await asyncio.to_thread(self.overlays.add, str(image), cmd.domain)
            except ImageError as e:
                return self._result(cmd, CommandOutcome.FAILED, str(e))
            except OSError as e:
                raise TemporaryError(f"overlay {image}: {e.strerror or e}") from None
        self._log.info(f"overlay: {'created' if changed else 'present'}", term=cmd.term,
                       image=str(image), base=str(base))
        return self._result(cmd, CommandOutcome.DONE if changed else CommandOutcome.NOOP)

    async def _remove_image(self, cmd: HostCommand) -> HostResult:
        image = Path(cmd.image)
        if not image.is_absolute() or not cmd.domain:
            return self._result(cmd, CommandOutcome.FAILED,
                                "remove-image needs an absolute image path and its domain")
        async with self._images_lock:
            why = await self._outside(image)
            if not why and self.overlays.owner(str(image)) is None \
                    and not await asyncio.to_thread(os.path.lexists, image):
                # removed already (an answer that did not reach the leader): nothing to do
                return self._result(cmd, CommandOutcome.NOOP, f"{image} is not here")
            why = why or await self._why_kept(image, cmd.domain)
            if why:
                self._log.warning("command_refused", term=cmd.term, domain=cmd.domain,
                                  op=cmd.op.value, reason=f"remove {why}")
                return self._result(cmd, CommandOutcome.FAILED, f"remove {why}")
            try:
                changed = await asyncio.to_thread(remove_file, image)
                await asyncio.to_thread(self.overlays.drop, str(image))
            except OSError as e:
                raise TemporaryError(f"remove {image}: {e.strerror or e}") from None
        self._log.info(f"overlay removed: {'done' if changed else 'gone already'}",
                       term=cmd.term, domain=cmd.domain, image=str(image))
        return self._result(cmd, CommandOutcome.DONE if changed else CommandOutcome.NOOP)

    async def _why_kept(self, image: Path, domain: str) -> str:
        """'' when `image` is `domain`'s overlay by this host's record and nothing defined
        here needs it, else the end of a sentence."""
        owner = self.overlays.owner(str(image))
        if owner != domain:
            return (f"{image}: this host made no overlay of that path for domain {domain}"
                    + (f" (it is {owner}'s)" if owner else ""))
        if any(d.name == domain for d in await self.backend.list()):
            return f"{image}: domain {domain} is still defined on this host"
        real = await asyncio.to_thread(os.path.realpath, image)
        used = await self.backend.disks()
        if real in await asyncio.to_thread(lambda: {os.path.realpath(u) for u in used}):
            return f"{image}: a domain defined on this host uses it as a disk"
        return ""

    async def _outside(self, image: Path) -> str:
        """'' when `image` is directly inside an image folder, else the end of a sentence.
        The folders are compared resolved (symlinks followed: file system calls, so in a
        thread); a NUL is no path's."""
        if "\0" not in str(image) and await asyncio.to_thread(self._directly_inside, image):
            return ""
        folders = ", ".join(str(d) for d in self.image_dirs)
        return f"{image} is outside this host's image folders ({folders})"

    def _directly_inside(self, image: Path) -> bool:
        parent = image.parent.resolve()
        return any(parent == d.resolve() for d in self.image_dirs)

    async def _fetch(self, cmd: HostCommand) -> HostResult:
        from cloudd.vmctl.images import ImageError, ensure_image

        image = Path(cmd.image)
        if not image.is_absolute():
            return self._result(cmd, CommandOutcome.FAILED, "fetch needs an absolute image path")
        if not cmd.source:
            return self._result(cmd, CommandOutcome.FAILED, "fetch without a source address")
        outside = await self._outside(image)
        if outside:
            return self._result(cmd, CommandOutcome.FAILED, f"fetch {outside}")
        task = self._copies.get(image)
        if task is None:
            task = asyncio.create_task(
                ensure_image(image, source=self.copy.source(cmd.source), limit=self.copy.limit),
                name=f"fetch {image}")
            # retrieved here so that a copy nobody asks about again does not warn at exit
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._copies[image] = task
            self._log.info("image copy started", term=cmd.term, image=str(image),
                           peer=cmd.source)
        # asyncio.wait, not wait_for: the copy goes on when this request stops waiting
        done, _ = await asyncio.wait({task}, timeout=self.fetch_wait)
        if not done:
            return self._result(cmd, CommandOutcome.PENDING, f"copying {image} from {cmd.source}")
        if self._copies.get(image) is task:
            del self._copies[image]
        try:
            changed = task.result()
        except (ImageError, OSError) as e:
            return self._result(cmd, CommandOutcome.FAILED, str(e))
        except asyncio.CancelledError:
            raise TemporaryError(f"copy of {image} was cancelled") from None
        self._log.info(f"image copy: {'done' if changed else 'present'}", term=cmd.term,
                       image=str(image), peer=cmd.source)
        return self._result(cmd, CommandOutcome.DONE if changed else CommandOutcome.NOOP)

    async def _migrate(self, cmd: HostCommand) -> HostResult:
        """MIGRATE: as a reset, in the background (a guest's memory takes a while to cross)."""
        if not (cmd.target and cmd.target_uri and cmd.target_address):
            return self._result(cmd, CommandOutcome.FAILED,
                                "migrate needs the target host, its URI and its address")
        if cmd.target == self.host:
            return self._result(cmd, CommandOutcome.FAILED,
                                f"migrate {cmd.domain}: {cmd.target} is this host")
        going = next((target for (op, domain, target), (_, task) in self._lasting.items()
                      if (op, domain) == (Op.MIGRATE, cmd.domain) and target != cmd.target
                      and not task.done()), None)
        if going is not None:
            return self._result(cmd, CommandOutcome.FAILED,
                                f"migrate {cmd.domain}: it is moving to {going} already")
        return await self._lasting_act(cmd, lambda: self.backend.migrate(
            cmd.domain, uri=cmd.target_uri, address=cmd.target_address, host=cmd.target,
            limit=self.migrate_limit, unsafe=cmd.unsafe, tls=cmd.tls))

    async def _lasting_act(self, cmd: HostCommand,
                           act: Callable[[], Coroutine[Any, Any, bool]]) -> HostResult:
        """RESET, MIGRATE: start the act (or join the one under way, or the one of this term
        that finished since its last ask) and wait `reset_wait` for it."""
        key = (cmd.op, cmd.domain, cmd.target)
        term, task = self._lasting.get(key, (cmd.term, None))
        if task is None or (task.done() and term != cmd.term):
            await self._refuse_foreign(cmd.domain)
            task = asyncio.create_task(act(), name=f"{cmd.op.value} {cmd.domain}")
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._lasting[key] = (cmd.term, task)
        done, _ = await asyncio.wait({task}, timeout=self.reset_wait)
        if not done:
            doing = {Op.RESET: "resetting", Op.MIGRATE: f"moving to {cmd.target}"}[cmd.op]
            return self._result(cmd, CommandOutcome.PENDING, f"{doing} {cmd.domain}")
        if self._lasting.get(key, (0, None))[1] is task:
            del self._lasting[key]
        try:
            changed = task.result()
        except asyncio.CancelledError:
            raise TemporaryError(f"{cmd.op.value} of {cmd.domain} was cancelled") from None
        outcome = CommandOutcome.DONE if changed else CommandOutcome.NOOP
        self._log.info(f"domain {cmd.op.value}: {outcome.value}", term=cmd.term,
                       domain=cmd.domain)
        return self._result(cmd, outcome)

    async def close(self) -> None:
        """Stop the image copies, resets and migrations under way (partial copies are
        removed; a migration cancelled is left to its hypervisor). Safe twice."""
        tasks = [*self._copies.values(), *(task for _, task in self._lasting.values())]
        self._copies, self._lasting = {}, {}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _wrong_define(self, cmd: HostCommand) -> str:
        """'' when the XML of a DEFINE is for `cmd.domain` and this agent's cloud."""
        try:
            meta = from_domain_xml(cmd.xml)
            name = ET.fromstring(cmd.xml).findtext("name") or ""
        except (MetadataError, ET.ParseError) as e:
            return f"define of {cmd.domain}: {e}"
        if name != cmd.domain:
            return f"define of {cmd.domain!r} carries the domain name {name!r}"
        if meta is None:
            return f"define of {cmd.domain}: the domain XML carries no cloudd metadata"
        if self.cloud and meta.cloud != self.cloud:
            return (f"define of {cmd.domain}: its metadata names cloud {meta.cloud}, "
                    f"not {self.cloud}")
        return ""

    async def _refuse_foreign(self, name: str) -> None:
        """Raise when `name` is a cloudd domain of another cloud, or another host defined it
        (a shared libvirtd)."""
        if not (self.host or self.cloud) or not name:
            return
        for d in await self.backend.list():
            if d.name != name or self.mine(d.meta):
                continue
            if self.cloud and d.meta.cloud != self.cloud:
                raise NoSuchDomain(f"domain {name!r} belongs to cloud {d.meta.cloud}, "
                                   f"not {self.cloud}; not touching it")
            raise NoSuchDomain(f"domain {name!r} belongs to host {d.meta.host}, "
                               f"not {self.host}; not touching it")

    async def _inventory(self) -> Inventory:
        stock = await self.backend.inventory()
        found = await asyncio.to_thread(_images_in, self.image_dirs)
        overlays = await asyncio.to_thread(self.overlays.present)
        return replace(stock, images=stock.images | found, overlays=overlays)

    def _result(self, cmd: HostCommand, outcome: CommandOutcome, message: str = "", *,
                retry_after: float | None = None, domains: tuple[DomainInfo, ...] = (),
                inventory: Inventory | None = None) -> HostResult:
        return HostResult(command=cmd, outcome=outcome, term_seen=self.highest_term,
                          message=message, retry_after=retry_after, domains=domains,
                          inventory=inventory)

    async def run_events(self, on_event: Callable[[DomainEvent], None]) -> None:
        """Forward backend events to `on_event` until cancelled (run it as a task)."""
        queue = self.backend.subscribe()
        try:
            while True:
                event = await queue.get()
                if not self.mine(event.meta):
                    continue  # another host's domain on a shared libvirtd
                if event.kind is DomainEventKind.RESYNC:
                    event = replace(event, domains=tuple(
                        d for d in event.domains if self.mine(d.meta)))
                self._log.info(f"domain event: {event.kind.value}", domain=event.domain,
                               detail=event.detail)
                try:
                    on_event(event)
                except Exception:
                    # A faulty consumer must not stop the forwarding of later events.
                    self._log.exception("event consumer failed", domain=event.domain)
        finally:
            self.backend.unsubscribe(queue)


def _images_in(dirs: tuple[Path, ...]) -> frozenset[str]:
    found: set[str] = set()
    for d in dirs:
        if d.is_dir():
            found.update(str(p) for p in d.iterdir()
                         if p.suffix in _IMAGE_SUFFIXES and p.is_file())
    return frozenset(found)
