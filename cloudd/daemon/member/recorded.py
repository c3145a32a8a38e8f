"""What a member does with its cloud's replicated record: which generation is in force, the
maintenance holds, the leader's writes, and the leader's manifest file kept to the record.

A pool host's `CloudRecord` owns its `RecordKeeper` (the file and the replication); a node
keeps no record, and knows its generation's number from the leader's last offer. On the
leader, once the record is recovered in its term and after every write a majority has
persisted, the record's latest generation becomes this agent's manifest file when it is not
the one in force (`manifest_restored_from_record` when a new leader finds its file behind);
the folder's watcher reads it back and the member takes it as any new generation. Until then
the leader acts on nothing (`leading_term`): the record's generation says which pool hosts
make the quorum, and a leader still counting with an older pool must not act.

Which generation is in force is found by digest: a generation's digest is the sha256 of a
pool host's text (`text_for(cloud, HOST)`), the same on every agent.

The secrets the leader makes (`make_secrets`) are level-triggered: on every round of its
tending, the acting leader compares what the cloud in force needs generated with what the
committed record holds, and writes the missing ones (drawn from the system's CSPRNG) to a
majority, one write at a time; a write that fails is tried again on a later round. Only
their names are ever logged.

The pool changes one host at a time: a new generation that adds or removes more than one pool
host is refused (`command_refused`; why in `cloudd.daemon.member.poolchange`). A pool host
that takes a leader's write whose latest generation leaves it out writes that generation
into its manifest folder (`member_removed`): read back, its agent leaves the cloud, instead
of campaigning for ever in a pool whose other hosts refuse it.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping
from pathlib import Path
from typing import Any

from cloudd.config.model import Cloud
from cloudd.config.portable import Recipient, text_for
from cloudd.daemon.base.clock import Clock
from cloudd.daemon.leader.drain import Drains
from cloudd.daemon.leader.maintenance import Maintenance
from cloudd.daemon.member import poolchange, record
from cloudd.daemon.member.keeper import RecordKeeper
from cloudd.daemon.network.catalogue import Generation, Record
from cloudd.errors import ClouddError, PermanentError

Install = Callable[[str], Awaitable[Path]]
"""Writes a generation's text into this agent's manifest folder (where it is read back)."""
Change = Callable[[Record, int], Record]
Spawn = Callable[[str, Callable[[], Coroutine[Any, Any, None]]], None]


class CloudRecord:
    """One member's side of its cloud's record."""

    def __init__(self, *, me: str, cloud: Callable[[], Cloud], keeper: RecordKeeper | None,
                 clock: Clock, install: Install | None, spawn: Spawn,
                 poke: Callable[[], None], logger: Any,
                 draw: Callable[[int], bytes] = secrets.token_bytes) -> None:
        self.me, self._cloud, self.keeper, self.clock = me, cloud, keeper, clock
        self._install, self._spawn, self._poke, self.log = install, spawn, poke, logger
        #: n -> n random bytes (the system's CSPRNG; a test gives its own)
        self._draw = draw
        self._making = False
        self._recovering: int | None = None
        self._installing = asyncio.Lock()
        #: (Cloud.digest, sha256 of its pool hosts' text): which generation is in force
        self._portable = ("", "")
        #: the digest of the generation this agent last wrote into its manifest folder
        self._written = ""
        #: the number of the last leader's offer installed (what a node knows of its
        #: generation; a host may take an offer before its record)
        self.offered = 0
        #: the newest generation a leader's write brought here that was looked at for this
        #: agent's name (`taken`)
        self._looked = 0

    # -- reading ------------------------------------------------------------------------------
    def leading_term(self) -> int | None:
        """The term this agent may act on the cloud in: the record recovered in it, and its
        latest generation in force here (a leader whose file is behind acts on nothing until
        it has read the record's generation back: its pool is the quorum)."""
        term = self.keeper.acting() if self.keeper is not None else None
        if term is None:
            return None
        assert self.keeper is not None
        gen = record.latest(self.keeper.committed)
        return term if gen is None or gen.digest == self._portable_digest() else None

    @property
    def maintenance(self) -> Maintenance:
        """The operator's holds in force: the record's (a node keeps none)."""
        return Maintenance.of(self.keeper.in_force.holds) if self.keeper else Maintenance()

    @property
    def active(self) -> frozenset[str]:
        """The elastic roles' candidates in use: the record's (a node keeps none)."""
        return frozenset(self.keeper.in_force.active) if self.keeper else frozenset()

    @property
    def drains(self) -> Drains:
        """The operator's drained hosts in force: the record's (a node keeps none)."""
        return Drains(self.keeper.in_force.drains) if self.keeper else Drains()

    @property
    def generation(self) -> int:
        """The record's number of the generation in force here (0: not known here)."""
        if self.keeper is None:
            return self.offered
        digest = self._portable_digest()
        for g in reversed(self.keeper.in_force.generations):
            if g.digest == digest:
                return g.number
        return 0

    def newest(self) -> int:
        """The newest generation this agent knows of: no leader's offer below it is taken."""
        held = record.latest(self.keeper.held.record) if self.keeper is not None else None
        return max(self.generation, self.offered, held.number if held is not None else 0)

    def text_in_force(self) -> str:
        """The manifest in force as a pool host receives it."""
        number = self.generation
        if self.keeper is not None and number:
            return record.generation(self.keeper.in_force, number).text
        return text_for(self._cloud(), Recipient.HOST)

    def in_force(self) -> Record:
        return self.host_keeper().in_force

    def generated(self) -> Mapping[str, bytes]:
        """The secrets the leaders made, as far as this agent holds them in force (a node
        holds none: its secrets come in its assignment)."""
        return record.generated_of(self.keeper.in_force) if self.keeper is not None else {}

    def host_keeper(self) -> RecordKeeper:
        """This pool host's keeper (a node keeps no record: one sentence says so)."""
        if self.keeper is None:
            raise PermanentError(f"{self.me} is a node of {self._cloud().name}: it keeps no "
                                 "record")
        return self.keeper

    def _portable_digest(self) -> str:
        cloud = self._cloud()
        if self._portable[0] != cloud.digest:
            self._portable = (cloud.digest, record.digest_of(text_for(cloud, Recipient.HOST)))
        return self._portable[1]

    # -- the leader's writes ------------------------------------------------------------------
    async def set_maintenance(self, subject: str | None, *, on: bool) -> None:
        nodes = [n.name for n in self._cloud().nodes]
        await self.host_keeper().write(lambda r, term: record.with_hold(
            r, term=term, subject=subject, on=on, nodes=nodes))

    async def set_active(self, active: Collection[str]) -> None:
        """Acting: the elastic roles' candidates in use are `active` (on a majority)."""
        nodes = [n.name for n in self._cloud().nodes]
        await self.host_keeper().write(lambda r, term: record.with_active(
            r, term=term, active=active, nodes=nodes))

    async def set_drain(self, host: str, *, on: bool, move_stateful: bool = False,
                        by: str = "") -> None:
        hosts = [h.name for h in self._cloud().pool]
        await self.host_keeper().write(lambda r, term: record.with_drain(
            r, term=term, host=host, on=on, hosts=hosts, move_stateful=move_stateful,
            at=self.clock.wall(), by=by))
        self.log.info("drain", host=host, reason=f"{'drained' if on else 'undrained'}"
                                                 f"{' (move stateful)' if move_stateful else ''}")
        self._poke()

    async def new_generation(self, text: str, cloud: Cloud, *, by: str,
                             what: str) -> tuple[Generation, Path | None]:
        """`text` (a pool host's text of `cloud`, validated) as the cloud's next generation:
        in the record on a majority, then in this agent's manifest folder."""
        keeper = self.host_keeper()
        last = record.latest(keeper.in_force)
        if last is not None and last.digest == record.digest_of(text):
            # the same text again (the same file handed over by several hosts, an apply
            # repeated): the generation in force already, not a new one
            return last, await self.follow(restored=False)
        # the pool of the record's latest generation (the one that is, or is about to be,
        # in force), read off the loop: a text may be large
        before = (await asyncio.to_thread(poolchange.pool_of, last.text)
                  if last is not None else None) or [h.name for h in self._cloud().pool]
        why = poolchange.refusal(before, [h.name for h in cloud.pool], cloud=cloud.name)
        if why is not None:
            self.log.warning("command_refused", op=what, reason=why)
            raise PermanentError(why)
        nodes = [n.name for n in cloud.nodes]
        written = await keeper.write(lambda r, term: record.with_generation(
            r, term=term, text=text, at=self.clock.wall(), by=by, what=what,
            ensure=cloud.ensure.value, nodes=nodes))
        gen = record.latest(written)
        assert gen is not None
        return gen, await self.follow(restored=False)

    def make_secrets(self) -> None:
        """Acting: write the secrets the cloud needs generated and the record lacks (in a
        task of its own, one at a time)."""
        if self.keeper is None or self._making or self.leading_term() is None:
            return
        if record.missing(self._cloud().generated, self.keeper.committed):
            self._making = True
            self._spawn("secrets-made", self._make_secrets)

    async def _make_secrets(self) -> None:
        assert self.keeper is not None
        try:
            todo = record.missing(self._cloud().generated, self.keeper.committed)
            made = {g.name: record.drawn(g, self._draw(g.size)) for g in todo}
            if not made:
                return
            written = await self.keeper.write(
                lambda r, term: record.with_generated(r, term=term, made=made))
            kept = record.generated_of(written)
            # a name held already (a write that timed out, then landed) kept its contents
            names = sorted(n for n, value in made.items() if kept.get(n) == value)
            if names:
                self.log.info("secrets_generated", names=names, term=written.version.term,
                              version=str(written.version))
        except ClouddError as e:
            self.log.warning("secrets_not_generated", reason=str(e))
        finally:
            self._making = False

    # -- a pool host's side of the leader's writes ------------------------------------------
    def taken(self, r: Record) -> None:
        """This pool host persisted the leader's write `r`: if its latest generation is newer
        than the one in force here, look for this agent in its pool (`_removed`)."""
        gen = record.latest(r)
        if gen is None or self._install is None or gen.number <= max(self.generation,
                                                                     self._looked):
            return
        self._looked = gen.number
        self._spawn(f"record-pool-{gen.number}", functools.partial(self._removed, gen))

    async def _removed(self, gen: Generation) -> None:
        """A generation that leaves this pool host out becomes its manifest file: read back,
        the agent leaves the cloud (`Clouds.adopt`)."""
        assert self._install is not None
        if await asyncio.to_thread(poolchange.names, gen.text, self.me):
            return  # the leader offers it, as every generation, once a majority has it
        self.log.warning("member_removed", generation=gen.number,
                         reason=f"generation {gen.number} of {self._cloud().name} no longer "
                                f"lists {self.me} in its pool: it leaves the cloud")
        try:
            await self._install(gen.text)
        except (ClouddError, OSError) as e:
            self.log.error("manifest_not_installed", generation=gen.number,
                           reason=f"the generation that removes this host could not be "
                                  f"written here: {e}")

    # -- the leader's recovery, and its manifest file kept to the record ----------------------
    def recover(self, term: int) -> None:
        """Acting in `term`: gather the record before acting on anything (once per term)."""
        if self.keeper is None or term in (self.keeper.recovered_term, self._recovering):
            return
        self._recovering = term
        self._spawn(f"record-recovery-{term}", lambda: self._recovery(term))

    async def _recovery(self, term: int) -> None:
        assert self.keeper is not None
        try:
            await self.keeper.recover(term, seed=self._first_generation)
        finally:
            if self._recovering == term:
                self._recovering = None

    def _first_generation(self, r: Record) -> Record:
        """A record with no generation yet (a cloud that ran before the record existed, or a
        new one) starts with this leader's manifest."""
        if r.generations:
            return r
        cloud = self._cloud()
        return record.with_generation(
            r, term=r.version.term, text=text_for(cloud, Recipient.HOST), at=self.clock.wall(),
            by=self.me, what=f"adopted from {self.me}'s manifest file",
            ensure=cloud.ensure.value, nodes=[n.name for n in cloud.nodes])

    def committed(self, r: Record, recovered: bool) -> None:
        """A majority has the leader's record `r` (`recovered`: in a new term): act on it."""
        self._spawn("record-followed", lambda: self._followed(restored=recovered))
        self._poke()

    async def _followed(self, *, restored: bool) -> None:
        try:
            await self.follow(restored=restored)
        except (ClouddError, OSError) as e:
            self.log.error("manifest_not_installed", reason=f"the record's latest generation "
                                                            f"could not be written here: {e}")

    async def follow(self, *, restored: bool) -> Path | None:
        """Make the record's latest generation this leader's manifest file, unless it is in
        force here already (or was written already)."""
        if self.keeper is None or self._install is None:
            return None
        async with self._installing:
            gen = record.latest(self.keeper.committed)
            if gen is None or gen.digest == self._portable_digest() or (
                    gen.digest == self._written and not restored):
                return None
            path = await self._install(gen.text)
            self._written = gen.digest
        if restored:
            self.log.warning("manifest_restored_from_record", generation=gen.number,
                             path=str(path), reason="the manifest here was not the record's "
                                                    "latest generation")
        return path
