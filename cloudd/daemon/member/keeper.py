"""A pool host's copy of its cloud's record, and the leader's writes of it to the others:
the thin asyncio shell around `cloudd.daemon.member.record`.

Every pool host keeps one `record.json` in the cloud's state folder (0600, written with
`write_durable`: fsynced, renamed, folder fsynced) holding the record it took last and the
term it promised. A file that does not read is set aside (`record.json.corrupt-<stamp>`) with a
logged reason and the host starts from an empty record: the other hosts hold the rest.

The host side answers the leader (`on_push`, `on_wanted`), persisting before it answers,
and tells its member of each write it took (`on_taken`).
The leader side writes (`write`: persist here, push to every other pool host, wait for a
majority), recovers when it starts to lead (`recover`), and keeps pushing the latest record
to hosts that have not acknowledged it (`catch_up`, on every round of the member's tending).
`committed` is what a majority holds, as far as this leader knows; `in_force` is what the
member acts on and shows: the committed record on the leader that recovered it in the term
it acts in, this host's own copy elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from cloudd import log
from cloudd.daemon.member import record
from cloudd.daemon.member.record import Held
from cloudd.daemon.network import jsontext
from cloudd.daemon.network.catalogue import (
    Record,
    RecordAck,
    RecordHeld,
    RecordPush,
    RecordWanted,
    Version,
)
from cloudd.daemon.network.checks import BAD, Problem, Shape
from cloudd.durable import set_aside, write_durable
from cloudd.errors import ClouddError, PermanentError, TemporaryError

FILE = "record.json"

#: Seconds the leader waits for a majority to persist a write before the operator is told it
#: was not acknowledged. A healthy pool answers in milliseconds; this leaves a slow disk and
#: a reconnect time to pass, and the answer time to reach an operator whose command came
#: through another agent (a relay, like `cloudd-cli`, waits 10 s).
WRITE_WAIT = 6.0

#: Seconds between two rounds of asking (recovery) or pushing (a recovery's write) to the
#: hosts that have not answered yet.
RETRY = 1.0

#: The file is read as the codec reads a message (`checks.Shape`), and written as it writes one.
_HELD = Shape.of(Held)

Spawn = Callable[[str, Callable[[], Coroutine[Any, Any, None]]], None]


def load(path: Path, cloud: str) -> Held:
    """The held record, or an empty one (a damaged file moved aside, with a logged reason)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return record.empty(cloud)
    problems: list[Problem] = []
    try:
        held = _HELD.check(jsontext.loads(data), problems)
    except jsontext.JsonError as exc:
        held, problems = BAD, [((), str(exc))]
    if held is BAD:
        why: str | None = f"it does not read: {problems[0][1]}"
    else:
        why = record.malformed(held.record) or (
            None if held.record.cloud == cloud else f"it is the record of {held.record.cloud}")
    if why is None:
        assert isinstance(held, Held)
        return held
    set_aside(path, reason=f"the record of cloud {cloud}: {why}")
    return record.empty(cloud)


def dump(held: Held) -> bytes:
    """The file's bytes for `held` (those pydantic's TypeAdapter wrote, which `load` reads)."""
    return jsontext.dumps(_HELD.dump(held))


class RecordKeeper:
    """One pool host's record of one cloud; the leader's writes when this host leads."""

    def __init__(self, *, me: str, cloud: str, folder: Path,
                 request: Callable[[str, Any], Awaitable[Any]],
                 hosts: Callable[[], frozenset[str]], quorum: Callable[[], int],
                 acting_term: Callable[[], int | None], spawn: Spawn,
                 on_commit: Callable[[Record, bool], None],
                 on_taken: Callable[[Record], None] = lambda r: None) -> None:
        self.me, self.cloud, self.path = me, cloud, folder / FILE
        self._request, self._hosts, self._quorum = request, hosts, quorum
        self._acting_term, self._spawn, self._on_commit = acting_term, spawn, on_commit
        #: told of every leader's write this host persisted
        self._on_taken = on_taken
        self.log = log.get("record", cloud=cloud, node=me)
        self.held = load(self.path, cloud)
        #: what a majority has persisted, as far as this agent (leading) knows
        self.committed = self.held.record
        #: the term this agent recovered the record in (it may act in that term only)
        self.recovered_term: int | None = None
        self._acked: dict[str, Version] = {}
        self._pushing: set[str] = set()
        self._advanced = asyncio.Event()
        self._lock = asyncio.Lock()
        #: seconds a write waits for a majority (`WRITE_WAIT`)
        self.wait = WRITE_WAIT

    @property
    def in_force(self) -> Record:
        return self.committed if self.acting() is not None else self.held.record

    def _save(self, held: Held) -> None:
        write_durable(self.path, dump(held))
        self.held = held

    # -- the host side ------------------------------------------------------------------------
    async def on_push(self, peer: str, push: RecordPush) -> RecordAck:
        """A write from the leader this host follows in `push.term` (the dispatch table)."""
        step = record.take(self.held, push)
        if step.refusal is not None:
            self.log.warning("message_refused", peer=peer, term=push.term, reason=step.refusal)
            raise PermanentError(step.refusal)
        if step.persist:
            await asyncio.to_thread(self._save, step.held)
            self.log.info("record_taken", peer=peer, term=push.term,
                          version=str(step.held.record.version))
            self._on_taken(step.held.record)
        return RecordAck(self.cloud, self.held.record.version)

    async def on_wanted(self, peer: str, msg: RecordWanted) -> RecordHeld:
        """The leader of a new term gathers the record."""
        step = (record.promise(self.held, msg.term) if msg.cloud == self.cloud else
                record.HostStep(self.held, refusal=f"the record of cloud {msg.cloud}, and this "
                                                   f"host keeps the record of {self.cloud}"))
        if step.refusal is not None:
            self.log.warning("message_refused", peer=peer, term=msg.term, reason=step.refusal)
            raise PermanentError(step.refusal)
        if step.persist:
            await asyncio.to_thread(self._save, step.held)
        return RecordHeld(self.cloud, self.held.promised, self.held.record)

    # -- the leader side ----------------------------------------------------------------------
    def acting(self) -> int | None:
        """The term to act in: the election's, once the record is recovered in it."""
        term = self._acting_term()
        return term if term is not None and term == self.recovered_term else None

    async def write(self, change: Callable[[Record, int], Record]) -> Record:
        """Persist `change(record, term)` here and on a majority of the pool hosts; raises
        with one sentence when this agent may not write, or no majority answered in time."""
        term = self.acting()
        if term is None:
            raise TemporaryError(f"{self.me} is not the leader with the cloud's record in "
                                 "force (it may be gathering it from the pool hosts): try "
                                 "again in a moment")
        async with self._lock:
            new = change(self.held.record, term)  # a refusal raises here: nothing changed
            try:
                await self._persist(new)
            except OSError as exc:  # a full or failing disk: this host keeps what it had
                why = exc.strerror or type(exc).__name__
                raise TemporaryError(
                    f"{self.me} cannot persist record version {new.version} of {self.cloud} "
                    f"in {self.path}: {why}; nothing was written, try again once it has "
                    "room") from None
        wait = self.wait
        try:
            async with asyncio.timeout(wait):
                while self.committed.version < new.version:
                    await self._advanced.wait()
        except TimeoutError:
            have = sum(1 for v in self._acked.values() if v >= new.version)
            raise TemporaryError(
                f"record version {new.version} of {self.cloud} was persisted by {have} of "
                f"{len(self._hosts())} pool hosts within {wait:g} s, and {self._quorum()} "
                "are needed: not acknowledged, but it may still take effect") from None
        return new

    async def _persist(self, new: Record) -> None:
        await asyncio.to_thread(self._save, Held(new, max(self.held.promised,
                                                          new.version.term)))
        self._acked[self.me] = new.version
        self._advance()
        self.catch_up(self._hosts())

    def catch_up(self, alive: frozenset[str]) -> None:
        """Push the latest record to every live pool host that has not acknowledged it."""
        if self.held.record.version.term != self._acting_term():
            return
        latest = self.held.record.version
        for host in sorted(alive & self._hosts() - {self.me} - self._pushing):
            if self._acked.get(host, Version()) < latest:
                self._pushing.add(host)
                self._spawn(f"record-push-{host}", functools.partial(self._push, host))

    async def _push(self, host: str) -> None:
        try:
            while True:
                sent = self.held.record
                if sent.version.term != self._acting_term():
                    return
                try:
                    ack = await self._request(host, RecordPush(sent.version.term, sent))
                except ClouddError as e:
                    self.log.info("record_not_pushed", peer=host, version=str(sent.version),
                                  reason=str(e))
                    return
                if not isinstance(ack, RecordAck) or ack.cloud != self.cloud:
                    self.log.warning("record_not_pushed", peer=host, reason=(
                        f"{host} answered {type(ack).__name__}"))
                    return
                self._acked[host] = max(ack.version, self._acked.get(host, Version()))
                self._advance()
                if self.held.record.version <= ack.version:
                    return
        finally:
            self._pushing.discard(host)

    def _advance(self) -> None:
        latest, hosts = self.held.record, self._hosts()
        acked = {h: v for h, v in self._acked.items() if h in hosts}
        if latest.version <= self.committed.version or not record.committed(
                acked, latest.version, quorum=self._quorum()):
            return
        self.committed = latest
        self._advanced.set()
        self._advanced = asyncio.Event()
        if self.recovered_term is not None:
            self._on_commit(latest, False)

    def stand_down(self) -> None:
        """This agent no longer leads in the term it recovered: it acts on nothing."""
        self.recovered_term = None
        self._acked.clear()
        self.committed = self.held.record

    async def recover(self, term: int, *, seed: Callable[[Record], Record]) -> None:
        """Gather the record from a majority, adopt the highest, write it again in `term` (with
        `seed` applied: the first generation of a record that has none) to a majority; then
        this agent acts in `term`. Returns early when the election moves past `term`."""
        self.stand_down()
        step = record.promise(self.held, term)
        if step.refusal is not None:
            self.log.warning("record_not_recovered", term=term, reason=step.refusal)
            return
        if step.persist:
            await asyncio.to_thread(self._save, step.held)
        answers: dict[str, Record] = {self.me: self.held.record}
        while (best := record.recovered(answers, quorum=self._quorum())) is None:
            if self._acting_term() != term:
                return
            await self._gather(term, answers)
            if record.recovered(answers, quorum=self._quorum()) is None:
                await asyncio.sleep(RETRY)
        if self._acting_term() != term:
            return
        adopted = seed(record.rewritten(best, term=term))
        async with self._lock:
            await self._persist(adopted)
        while self.committed.version < adopted.version:
            if self._acting_term() != term:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RETRY):
                    await self._advanced.wait()
            self.catch_up(self._hosts())
        if self._acting_term() != term:
            return  # a later term's write committed ours too: that recovery acts, not this
        self.recovered_term = term
        gen = record.latest(self.committed)
        self.log.info("record_recovered", term=term, version=str(self.committed.version),
                      reason=f"adopted version {best.version} from {len(answers)} of "
                             f"{len(self._hosts())} pool hosts",
                      generation=gen.number if gen else None)
        self._on_commit(self.committed, True)

    async def _gather(self, term: int, answers: dict[str, Record]) -> None:
        missing = sorted(self._hosts() - set(answers))

        async def ask(host: str) -> None:
            try:
                got = await self._request(host, RecordWanted(self.cloud, term))
            except ClouddError as e:
                self.log.info("record_not_gathered", peer=host, term=term, reason=str(e))
                return
            if isinstance(got, RecordHeld) and got.cloud == self.cloud and got.term >= term \
                    and record.malformed(got.record) is None:
                answers[host] = got.record

        await asyncio.gather(*(ask(h) for h in missing))
