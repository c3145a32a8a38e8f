"""The cloud's replicated record: what the leader decides, kept by every pool host.

Theory of operation. What a leader decides must outlive it: the manifest generations (each
numbered, with its text), the operator's maintenance holds and drained hosts (`with_drain`),
the candidate nodes of the cloud's elastic roles that are in use (`with_active`: a new leader
neither adds nor removes compute nodes the last one decided), and the secrets the leader
makes (`with_generated`: drawn once, then every later leader hands out the same ones). It all
lives in one `Record` (`cloudd.daemon.network.catalogue`), ordered by its `Version` (term,
seq). Every pool host keeps, in a file of its own, the
highest version it took (`Held.record`) and the highest term it promised (`Held.promised`).

- A write. The acting leader of term T makes version (T, seq + 1) (`with_generation`,
  `with_hold`) and pushes the whole record to every pool host. A host takes it (`take`) only
  from the leader of the term it follows (the dispatch table checks that), only when T is not
  below its promise and the version is above its own; it persists it, then acknowledges. The
  write is done, and the operator told so, once a majority of the pool hosts, the leader
  included, has acknowledged it (`committed`).
- A new leader. Before it acts on the cloud, the leader of term T asks every pool host for its
  record (`promise`: the host answers, and refuses writes of lower terms from then on), adopts
  the highest version once a majority answered (`recovered`) and writes it again under its
  own term (`rewritten`), to a majority. Any majority that answers holds at least one host
  that persisted each acknowledged write: no acknowledged write is lost. A write that reached
  only a minority may survive or not, which is what the operator was told.

Pure: records in, records and one-sentence refusals out. The shell that persists, sends and
waits is `cloudd.daemon.member.keeper`.
"""

from __future__ import annotations

import base64
import dataclasses
import difflib
import hashlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cloudd.config.catalog import GeneratedSecret
from cloudd.config.sources import MAX_SECRET
from cloudd.daemon.network.catalogue import Drain, Generation, Record, RecordPush, Version
from cloudd.errors import PermanentError

#: Generations the history keeps, the latest always among them; and at most this many bytes
#: of their texts, so that a whole record stays well inside one frame (1 MiB) even with a
#: manifest of the largest size (256 KiB).
HISTORY = 50
HISTORY_BYTES = 384 * 1024

#: How the whole cloud is held in `Record.holds`.
WHOLE_CLOUD = ""

#: Most elastic nodes in use a record names (`config.model.MAX_ELASTIC` per role, a few
#: roles at most).
ACTIVE = 4096

#: Most generated secrets a record holds (a type declares a few; each at most `MAX_SECRET`).
GENERATED = 8


def digest_of(text: str) -> str:
    """A generation's digest: the same text has the same one on every agent."""
    return hashlib.sha256(text.encode("utf-8", errors="surrogateescape")).hexdigest()


@dataclass(frozen=True)
class Held:
    """What one pool host keeps: the record it took last, and the highest term whose leader
    it has answered for the record (it takes no write of a lower term since)."""

    record: Record
    promised: int = 0


@dataclass(frozen=True)
class HostStep:
    """What a host does with a push or a question: keep `held` (persisting it first when
    `persist`), or refuse with one sentence and change nothing."""

    held: Held
    persist: bool = False
    refusal: str | None = None


def empty(cloud: str) -> Held:
    return Held(Record(cloud))


# -- what a pool host does -------------------------------------------------------------------

def take(held: Held, push: RecordPush) -> HostStep:
    """A leader's write, as a pool host takes it."""
    why = push_refusal(held, push)
    if why is not None:
        return HostStep(held, refusal=why)
    if push.record.version == held.record.version:
        return HostStep(held)  # a push sent again: persisted already
    return HostStep(dataclasses.replace(held, record=push.record), persist=True)


def push_refusal(held: Held, push: RecordPush) -> str | None:
    r, mine = push.record, held.record
    if r.cloud != mine.cloud:
        return f"a record of cloud {r.cloud}, and this host keeps the record of {mine.cloud}"
    if r.version.term != push.term:
        return f"record version {r.version} is not of term {push.term}"
    if push.term < held.promised:
        return (f"a write of term {push.term}, and this host has promised term "
                f"{held.promised} to take none below it")
    if r.version < mine.version:
        return f"record version {r.version} is older than version {mine.version} held here"
    return malformed(r)


def malformed(r: Record) -> str | None:
    """What is wrong with a record that no leader of cloudd would write (None: nothing)."""
    numbers = [g.number for g in r.generations]
    if r.version.term < 0 or r.version.seq < 0:
        return f"record version {r.version} is negative"
    if any(n < 1 for n in numbers) or numbers != sorted(set(numbers)):
        return "the record's generations are not numbered 1, 2, 3... in order"
    if len(numbers) > HISTORY:
        return f"the record holds {len(numbers)} generations, more than {HISTORY}"
    for g in r.generations:
        if g.digest != digest_of(g.text):
            return f"generation {g.number}'s digest does not match its text"
    if list(r.holds) != sorted(set(r.holds)):
        return "the record's maintenance holds are not sorted and distinct"
    if list(r.active) != sorted(set(r.active)) or len(r.active) > ACTIVE:
        return f"the record's nodes in use are not sorted, distinct and at most {ACTIVE}"
    drained = [d.host for d in r.drains]
    if drained != sorted(set(drained)) or any(not h for h in drained):
        return "the record's drained hosts are not named, sorted and distinct"
    names = [name for name, _ in r.generated]
    if names != sorted(set(names)) or len(names) > GENERATED:
        return (f"the record's generated secrets are not sorted, distinct and at most "
                f"{GENERATED}")
    if any(not 0 < len(value) <= 2 * MAX_SECRET for _, value in r.generated):
        return "a generated secret of the record is empty or too large"
    return None


def promise(held: Held, term: int) -> HostStep:
    """The leader of `term` asks for the record: the host answers it, and takes no write of
    a lower term from then on."""
    if term < held.promised:
        return HostStep(held, refusal=f"the record for term {term}, and this host has promised "
                                  f"term {held.promised} already")
    if term == held.promised:
        return HostStep(held)
    return HostStep(dataclasses.replace(held, promised=term), persist=True)


# -- what the leader does --------------------------------------------------------------------

def recovered(answers: Mapping[str, Record], *, quorum: int) -> Record | None:
    """The record a new leader adopts: the highest version among the answers, once a
    majority (`quorum`, the leader's own answer included) has answered."""
    if len(answers) < quorum:
        return None
    return max(answers.values(), key=lambda r: r.version)


def next_version(r: Record, term: int) -> Version:
    return Version(term, r.version.seq + 1)


def rewritten(r: Record, *, term: int) -> Record:
    """The adopted record, as the new leader writes it again under its own term."""
    return dataclasses.replace(r, version=next_version(r, term))


def committed(acked: Mapping[str, Version], version: Version, *, quorum: int) -> bool:
    """Whether a majority of the pool hosts has persisted `version` (or a later one)."""
    return sum(1 for v in acked.values() if v >= version) >= quorum


def with_generation(r: Record, *, term: int, text: str, at: float, by: str, what: str,
                    ensure: str, nodes: Collection[str]) -> Record:
    """A new generation of `text`, numbered after the latest; holds on nodes the new
    generation no longer has (`nodes`), and such nodes in use, are dropped."""
    last = latest(r)
    gen = Generation(number=(last.number if last else 0) + 1, text=text,
                     digest=digest_of(text), at=at, by=by, what=what, ensure=ensure)
    holds = tuple(h for h in r.holds if h == WHOLE_CLOUD or h in nodes)
    active = tuple(n for n in r.active if n in nodes)
    return dataclasses.replace(r, version=next_version(r, term), holds=holds, active=active,
                               generations=trimmed((*r.generations, gen)))


def trimmed(gens: tuple[Generation, ...]) -> tuple[Generation, ...]:
    """The latest generations within `HISTORY` and `HISTORY_BYTES` (the latest always)."""
    size = 0
    kept: list[Generation] = []
    for g in reversed(gens):
        size += len(g.text.encode("utf-8", errors="surrogateescape"))
        if kept and (len(kept) >= HISTORY or size > HISTORY_BYTES):
            break
        kept.append(g)
    return tuple(reversed(kept))


def with_hold(r: Record, *, term: int, subject: str | None, on: bool,
              nodes: Collection[str]) -> Record:
    """Hold (or release) `subject`, a node of `nodes`, or None for the whole cloud."""
    if subject is not None and subject not in nodes:
        raise PermanentError(f"unknown node {subject!r} in cloud {r.cloud}")
    name = WHOLE_CLOUD if subject is None else subject
    holds = set(r.holds) | {name} if on else set(r.holds) - {name}
    return dataclasses.replace(r, version=next_version(r, term), holds=tuple(sorted(holds)))


def with_active(r: Record, *, term: int, active: Collection[str],
                nodes: Collection[str]) -> Record:
    """The elastic roles' candidates in use are `active`, each a node of `nodes`."""
    unknown = sorted(set(active) - set(nodes))
    if unknown:
        raise PermanentError(f"unknown node {unknown[0]!r} in cloud {r.cloud}")
    wanted = tuple(sorted(set(active)))
    if wanted == r.active:
        return r
    return dataclasses.replace(r, version=next_version(r, term), active=wanted)
def with_drain(r: Record, *, term: int, host: str, on: bool, hosts: Collection[str],
               move_stateful: bool = False, at: float = 0.0, by: str = "") -> Record:
    """Drain `host`, one of the pool's `hosts` (or undrain it: `on` False); one sentence
    refuses an unknown host, a drain that changes nothing, an undrain of a host not drained,
    and the drain of the last host not drained (no host would be left to place a node on)."""
    drains = {d.host: d for d in r.drains}
    # a host the pool no longer lists may still be undrained: its entry leaves the record
    if host not in hosts and (on or host not in drains):
        raise PermanentError(f"unknown host {host!r}: the pool of cloud {r.cloud} is "
                             f"{', '.join(sorted(hosts))}")
    was = drains.get(host)
    if not on:
        if was is None:
            raise PermanentError(f"host {host} is not drained")
        del drains[host]
    else:
        if was is not None and was.move_stateful == move_stateful:
            raise PermanentError(f"host {host} is drained already"
                                 f"{' (with --move-stateful)' if move_stateful else ''}")
        if was is None and not set(hosts) - set(drains) - {host}:
            raise PermanentError(f"host {host} is the last pool host of cloud {r.cloud} not "
                                 "drained: no host would be left to place a node on")
        drains[host] = Drain(host, move_stateful=move_stateful,
                             at=was.at if was is not None else at,
                             by=was.by if was is not None else by)
    return dataclasses.replace(r, version=next_version(r, term),
                               drains=tuple(drains[h] for h in sorted(drains)))


def with_generated(r: Record, *, term: int, made: Mapping[str, bytes]) -> Record:
    """`made` (name -> freshly drawn contents) added for the names the record does not hold
    yet: a secret is made once, and a later draw never replaces it."""
    held = generated_of(r)
    new = {name: value for name, value in made.items() if name not in held}
    if not new:
        return r
    pairs = {**{n: v for n, v in r.generated},
             **{n: base64.b64encode(v).decode("ascii") for n, v in new.items()}}
    return dataclasses.replace(r, version=next_version(r, term),
                               generated=tuple(sorted(pairs.items())))


def missing(wanted: Iterable[GeneratedSecret], r: Record) -> tuple[GeneratedSecret, ...]:
    """The secrets a cloud needs generated that the record does not hold yet."""
    held = {name for name, _ in r.generated}
    return tuple(g for g in wanted if g.name not in held)


def drawn(secret: GeneratedSecret, random_bytes: bytes) -> bytes:
    """A generated secret's contents from its random bytes, in the form the type asked."""
    return secret.contents(random_bytes)


# -- reading it ------------------------------------------------------------------------------

def generated_of(r: Record) -> dict[str, bytes]:
    """name -> contents of the secrets the leaders made (never logged, never shown)."""
    return {name: base64.b64decode(value) for name, value in r.generated}


def latest(r: Record) -> Generation | None:
    return r.generations[-1] if r.generations else None


def generation(r: Record, number: int) -> Generation:
    """Generation `number`, or one sentence saying what the history holds."""
    for g in r.generations:
        if g.number == number:
            return g
    if not r.generations:
        raise PermanentError(f"cloud {r.cloud} has no generation in its record yet")
    first, last = r.generations[0].number, r.generations[-1].number
    raise PermanentError(f"cloud {r.cloud} has no generation {number} (its history holds "
                         f"generations {first} to {last})")


def history(r: Record) -> list[dict[str, Any]]:
    """The generations as `cloudd-cli history` shows them: no texts."""
    return [{"number": g.number, "at": g.at, "by": g.by, "what": g.what, "ensure": g.ensure,
             "digest": g.digest} for g in r.generations]


def diff(r: Record, a: int, b: int) -> str:
    """A unified diff from generation `a`'s text to `b`'s ("" when they are the same)."""
    old, new = generation(r, a), generation(r, b)
    return "".join(difflib.unified_diff(
        old.text.splitlines(keepends=True), new.text.splitlines(keepends=True),
        fromfile=f"{r.cloud} generation {a}", tofile=f"{r.cloud} generation {b}"))
