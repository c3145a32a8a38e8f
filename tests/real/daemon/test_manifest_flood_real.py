"""Manifests too large, too clever, or too many, from an operator certificate, against three
real agents in network namespaces (a client in the root namespace dials their port through
the lab's bridge, by hand from the wire format as `test_abuse_real.py` does).

A manifest over `MAX_MANIFEST_BYTES` is refused with one precise sentence, by the leader and
by a follower; YAML aliases are refused over the wire and through the local API; then a flood
of manifests of exactly the maximal size, each checked whole and refused for an address it
repeats at its very end, pipelined on one connection at the leader: every one is answered
(refused after its check, or turned away busy), and nothing changes anywhere: the same
leader in the same term, nobody believed dead, no term on disk moved, no manifest installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cloudd_lab.agentlab import AgentLab
from shared import opwire

from cloudd.client.api import ApiClient, ApiError
from cloudd.config.yamlsrc import MAX_MANIFEST_BYTES
from cloudd.daemon.network.catalogue import (
    OperatorAnswer,
    OperatorOp,
    OperatorRequest,
    register_all,
)
from cloudd.daemon.network.codec import FrameDecoder, default_codec
from cloudd.daemon.network.transport import RemoteFailure
from cloudd.pki import MemberKind, PkiFiles, issue

pytestmark = pytest.mark.netns

PORT = 7760
#: Generous bound on every wait for the real processes (the machine is shared).
BOUND = 60.0
OPERATOR = "flooder"
#: Maximal manifests in the flood, and how many are sent ahead of their answers (twice the
#: transport's bound on requests in flight: an agent may answer busy at either bound).
FLOOD = 150
OUTSTANDING = 64
ALIASES = "apiVersion: cloudd/v1\nkind: &k Cloud\nname: *k\n"


@pytest.fixture
def lab() -> Iterator[AgentLab]:
    with AgentLab("h11l", hosts=3, subnet="10.243.12.0/24") as lab:
        issue(lab.root / "pki", OPERATOR, now=dt.datetime.now(dt.UTC),
              kind=MemberKind.OPERATOR)
        lab.start_all()
        yield lab


def maximal_manifest(lab: AgentLab) -> str:
    return opwire.maximal_manifest(lab.cloud_name, [(n, a) for n, _, a in lab.members
                                                    if n.startswith("pm")])


def refusal(size: int) -> str:
    return (f"<received manifest>: (document): the manifest is {size} bytes; a manifest "
            f"received from outside this agent's folder may hold at most {MAX_MANIFEST_BYTES} "
            f"bytes ({MAX_MANIFEST_BYTES // 1024} KiB)")


# -- an operator's client, by hand ----------------------------------------------------------

def connect(lab: AgentLab, target: str) -> ssl.SSLSocket:
    """A connection to `target`'s agent that passed TLS and the Hello, as the operator."""
    return opwire.operator_socket((lab.agents[target].ns.ip, PORT), ca=lab.root / "pki" / "ca.crt",
                                  files=PkiFiles.for_member(lab.root / "pki", OPERATOR),
                                  name=OPERATOR, timeout=BOUND)


def apply_request(lab: AgentLab, text: str, rid: int) -> bytes:
    return default_codec.encode(
        OperatorRequest(OperatorOp.APPLY, lab.cloud_name, json.dumps({"text": text})),
        rid=rid, request=True)


def apply(lab: AgentLab, target: str, text: str) -> object:
    """One apply of `text` to `target`; its answer."""
    sock = connect(lab, target)
    try:
        sock.sendall(apply_request(lab, text, 7))
        decoder = FrameDecoder(default_codec)
        while True:
            chunk = sock.recv(65536)
            assert chunk, f"{target} closed the connection instead of answering"
            for frame in decoder.feed_frames(chunk):
                if frame.reply and frame.rid == 7:
                    return frame.msg
    finally:
        sock.close()


def kind_of(msg: object) -> str:
    if isinstance(msg, RemoteFailure) and msg.temporary:
        return "transport busy"
    if isinstance(msg, OperatorAnswer) and not msg.ok:
        if msg.error.startswith("busy: "):
            return "checker busy"
        if msg.error.endswith("is already used by node lab-server-1"):
            return "checked, refused"
    raise AssertionError(f"unexpected answer to a maximal manifest: {msg!r}"[:400])


def flood(lab: AgentLab, target: str, text: str) -> dict[str, int]:
    """FLOOD applies of `text` on one connection, OUTSTANDING ahead of their answers, sent
    as fast as the agent reads them; the answers by kind."""
    sock = connect(lab, target)
    try:
        return opwire.pipeline(sock, lambda rid: apply_request(lab, text, rid),
                               more=lambda sent: sent < FLOOD, outstanding=OUTSTANDING,
                               kind_of=kind_of, deadline=time.monotonic() + 5 * BOUND)
    finally:
        sock.close()


# -- what must not change -------------------------------------------------------------------

def views(lab: AgentLab) -> dict[str, tuple[Any, ...]]:
    """Each agent's leader, term, elections seen, and who it believes dead."""
    out = {}
    for name in lab.agents:
        s = lab.status(name)
        assert s is not None, f"{name} does not answer"
        dead = sorted(m for m, v in s.get("members", {}).items()
                      if v == "dead" and m in lab.agents)
        out[name] = (s.get("leader"), s.get("term"), s.get("elections"), tuple(dead))
    return out


def on_disk(lab: AgentLab) -> dict[str, bytes]:
    """Every agent's manifests and persisted terms."""
    out = {}
    for name in lab.agents:
        folder = lab.root / name
        for path in sorted([*(folder / "manifests").rglob("*"), *(folder / "state").rglob("*")]):
            if path.is_file() and (path.parent.name == "manifests"
                                   or path.name in ("term", "highest-term")):
                out[str(path.relative_to(lab.root))] = path.read_bytes()
    return out


def workers(lab: AgentLab, name: str) -> list[tuple[int, int]]:
    """(pid, nice) of the processes `name`'s agent checks manifests in."""
    proc = lab.agents[name].proc
    assert proc is not None
    out = []
    for task in Path(f"/proc/{proc.pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(FileNotFoundError):
                if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                    stat = Path(f"/proc/{child}/stat").read_text()
                    out.append((int(child), int(stat[stat.rindex(")") + 2:].split()[16])))
    return out


def local_apply(socket_path: Path, text: str) -> str:
    async def call() -> str:
        try:
            await ApiClient(socket_path, timeout=BOUND).call("apply", text=text)
        except ApiError as e:
            return str(e)
        raise AssertionError("the local API took the manifest")
    return asyncio.run(call())


def test_oversize_and_flooded_manifests_are_refused_and_the_leader_keeps_its_term(
        lab: AgentLab) -> None:
    register_all(default_codec)
    leader, term = lab.wait_for("one leader", lambda: lab.one_leader(), timeout=BOUND)
    follower = next(n for n in lab.agents if n != leader)
    lab.wait_for("every agent believes every agent alive", lambda: all(
        not v[3] for v in views(lab).values()), timeout=BOUND)
    # The followers' files are the leader's generation (a self-contained text it sent), not
    # the lab's first file: what is on disk must not change from here on.
    lab.wait_for("every follower has the leader's generation", lambda: all(
        b"self_contained: true" in (lab.root / n / "manifests" / "lab.yaml").read_bytes()
        for n in lab.agents if n != leader), timeout=BOUND)
    before_views, before_disk = views(lab), on_disk(lab)
    t0 = time.time()

    biggest = maximal_manifest(lab)
    too_big = biggest + "#\n"
    for target in (leader, follower):
        answer = apply(lab, target, too_big)
        assert answer == OperatorAnswer(False, "", refusal(MAX_MANIFEST_BYTES + 2)), answer
        aliased = apply(lab, target, ALIASES)
        assert isinstance(aliased, OperatorAnswer) and aliased.error == (
            "<received manifest>:2:7: (document): YAML anchors and aliases (&name, *name) "
            "are not allowed"), aliased
    assert local_apply(lab.agents[leader].socket, ALIASES).endswith(
        "YAML anchors and aliases (&name, *name) are not allowed")

    answered = flood(lab, leader, biggest)
    print(f"\n{FLOOD} maximal manifests at {leader}: {answered}")
    assert answered.get("checked, refused", 0) >= 1, answered
    assert answered.get("checker busy", 0) >= 1, answered
    # checked in a process of its own (niced), not on the thread that renews the leases
    [(_, nice)] = workers(lab, leader)
    assert nice == 10

    assert lab.one_leader() == (leader, term)
    assert views(lab) == before_views
    # A host writes its highest term when the real leader's first command reaches it: that
    # is the leader's term, and a term already written never moves.
    after_disk = on_disk(lab)
    assert {p: t for p, t in after_disk.items() if "/manifests/" in p} == {
        p: t for p, t in before_disk.items() if "/manifests/" in p}
    for path, text in after_disk.items():
        if "/manifests/" not in path:
            assert int(text) <= term and before_disk.get(path, text) == text, path
    events = [e for e in lab.log_events() if e["at"] >= t0]
    changed = [(e["agent"], e["event"]) for e in events if e.get("event") in (
        "manifest_installed", "operator_command", "election_leader", "cloud_joined")]
    assert changed == []
    lapses = [e["reason"] for e in events if e["agent"] == leader
              and e.get("event") == "election_acting"]
    print(f"the leader's acting changes during all of it: {lapses or 'none'}")
