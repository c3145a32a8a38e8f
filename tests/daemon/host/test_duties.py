"""A pool host's duties over an in-memory backend: which libvirt connection, who may command
it (the holder of its lease for exactly that term), and every domain event of this cloud
forwarded to whoever leads, at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cloudd.config.agent import AgentSettings, Libvirt
from cloudd.config.model import Cloud
from cloudd.daemon.host.duties import DEFAULT_URI, RETRY_AFTER, HostDuties, libvirt_uri, nobody
from cloudd.daemon.network.catalogue import DomainEventNote
from cloudd.errors import TemporaryError
from cloudd.vmctl.backend import BackendUnavailable, DomainEvent, DomainEventKind, FakeBackend
from cloudd.vmctl.hostagent import TERM_FILE, CommandOutcome, HostAgent, HostCommand, Op
from cloudd.vmctl.metadata import CloudMeta, from_domain_xml, metadata_xml

from .conftest import HostRig, make_host, running

SERVER = "shop-server-1"
DOMAIN = f"shop-{SERVER}"


@pytest.mark.parametrize(("me", "own", "uri"), [
    ("pm2", "qemu+ssh://x/system", "test:///pm2"),   # the manifest's, for this host
    ("pm1", "qemu+ssh://x/system", "qemu+ssh://x/system"),   # else the agent's own
    ("pm1", None, DEFAULT_URI),                      # else the system's
])
def test_which_libvirt(cloud: Cloud, me: str, own: str | None, uri: str) -> None:
    agent = AgentSettings(name=me, libvirt=Libvirt(uri=own))
    assert libvirt_uri(cloud, me=me, settings=agent) == uri


def event(cloud: str) -> DomainEvent:
    meta = CloudMeta(cloud=cloud, node="shop-server-1", role="server", term=3)
    return DomainEvent(DomainEventKind.STOPPED, f"{cloud}-x", meta, "crashed", 0.0)


@pytest.mark.parametrize(("leader", "to_leader", "to_local"), [
    ("pm2", True, False),   # another host leads: a note to it
    ("pm1", False, True),   # this host leads: its own controller, in process
    ("", False, False),     # an election runs: nobody (the next leader re-observes)
])
def test_events_go_to_whoever_leads(tmp_path: Path, cloud: Cloud, leader: str,
                                    to_leader: bool, to_local: bool) -> None:
    h = make_host(tmp_path, cloud)
    h.leader[0] = leader
    h.duties.forward(event("shop"))
    h.duties.forward(event("other"))  # another cloud's domain on the same host: not ours
    assert h.sent == ([("pm2", DomainEventNote("pm1", event("shop")))] if to_leader else [])
    assert h.local == ([("pm1", event("shop"))] if to_local else [])


async def test_commands_wait_for_libvirt(tmp_path: Path, cloud: Cloud) -> None:
    h = make_host(tmp_path, cloud)
    with pytest.raises(TemporaryError, match="the host agent of pm1 is not open yet"):
        await h.duties.execute("pm2", HostCommand(Op.LIST, 3))


async def test_the_lease_holder_defines_and_starts_and_events_follow(rig: HostRig) -> None:
    assert rig.opened == [DEFAULT_URI]
    xml = rig.duties.renderer.render(rig.cloud[0], SERVER, 3)
    for op, args in ((Op.DEFINE, (DOMAIN, xml)), (Op.START, (DOMAIN,))):
        result = await rig.duties.execute("pm2", HostCommand(op, 3, *args))
        assert result.outcome is CommandOutcome.DONE, result.message
    assert isinstance(rig.backend, FakeBackend)
    meta = from_domain_xml(rig.backend.domains[DOMAIN].xml)
    assert meta is not None and (meta.cloud, meta.host) == ("shop", "pm1")
    rig.backend.crash(DOMAIN)
    for _ in range(100):
        if len(rig.sent) == 3:
            break
        await asyncio.sleep(0)
    kinds = [note.event.kind for _, note in rig.sent]
    assert kinds == [DomainEventKind.DEFINED, DomainEventKind.STARTED, DomainEventKind.STOPPED]
    assert {peer for peer, _ in rig.sent} == {"pm2"}


@pytest.mark.parametrize(("sender", "term", "outcome", "why"), [
    # a node's certificate, a term far in the future: no lease, refused, nothing learnt
    ("shop-server-1", 2**60, CommandOutcome.FAILED,
     "shop-server-1 holds no unexpired lease of pm1 for term 1152921504606846976"),
    # the lease holder, but for another term than the one it holds
    ("pm2", 4, CommandOutcome.FAILED, "pm2 holds no unexpired lease of pm1 for term 4"),
    ("pm2", 2, CommandOutcome.FAILED, "pm2 holds no unexpired lease of pm1 for term 2"),
    # another host, for the holder's very term
    ("pm3", 3, CommandOutcome.FAILED, "pm3 holds no unexpired lease of pm1 for term 3"),
])
async def test_only_the_lease_holder_of_exactly_that_term_commands(
        rig: HostRig, sender: str, term: int, outcome: CommandOutcome, why: str) -> None:
    result = await rig.duties.execute(sender, HostCommand(Op.LIST, term))
    assert (result.outcome, result.message, result.retry_after) == (outcome, why, RETRY_AFTER)
    assert result.domains == () and result.term_seen == 0
    agent = rig.duties.agent
    assert agent is not None and agent.highest_term == 0
    assert not (rig.duties.state_dir / TERM_FILE).exists()


async def test_a_refused_term_is_never_persisted_even_across_a_restart(
        tmp_path: Path, rig: HostRig) -> None:
    assert (await rig.duties.execute("pm2", HostCommand(Op.LIST, 3))).outcome is CommandOutcome.DONE
    assert (rig.duties.state_dir / TERM_FILE).read_text() == "3\n"
    refused = await rig.duties.execute("shop-database-1", HostCommand(Op.LIST, 2**60))
    assert refused.outcome is CommandOutcome.FAILED and refused.term_seen == 3
    assert (rig.duties.state_dir / TERM_FILE).read_text() == "3\n"
    again = HostAgent(FakeBackend(clock=lambda: 0.0), state_dir=rig.duties.state_dir)
    assert again.highest_term == 3
    # and the real leader of the next term is obeyed
    rig.leases["pm2"] = 4
    assert (await rig.duties.execute("pm2", HostCommand(Op.LIST, 4))).outcome is CommandOutcome.DONE


async def test_a_reset_is_admitted_as_a_start_is(rig: HostRig) -> None:
    """Only the lease holder of exactly that term resets, and only a domain of this cloud."""
    xml = rig.duties.renderer.render(rig.cloud[0], SERVER, 3)
    for op, args in ((Op.DEFINE, (DOMAIN, xml)), (Op.START, (DOMAIN,))):
        assert (await rig.duties.execute("pm2", HostCommand(op, 3, *args))).outcome \
            is CommandOutcome.DONE
    assert isinstance(rig.backend, FakeBackend)
    rig.backend.calls.clear()
    for sender, term in (("shop-server-1", 3), ("pm3", 3), ("pm2", 4)):
        refused = await rig.duties.execute(sender, HostCommand(Op.RESET, term, DOMAIN))
        assert refused.outcome is CommandOutcome.FAILED
        assert refused.message == f"{sender} holds no unexpired lease of pm1 for term {term}"
    assert rig.backend.calls == []
    done = await rig.duties.execute("pm2", HostCommand(Op.RESET, 3, DOMAIN))
    assert done.outcome is CommandOutcome.DONE and rig.backend.calls == [("reset", DOMAIN)]
    meta = CloudMeta(cloud="other", node="n1", role="server", term=1)
    await rig.backend.define(f"<domain><name>shop-n1</name>{metadata_xml(meta)}</domain>")
    await rig.backend.start("shop-n1")
    foreign = await rig.duties.execute("pm2", HostCommand(Op.RESET, 3, "shop-n1"))
    assert foreign.outcome is CommandOutcome.FAILED
    assert foreign.message == "domain 'shop-n1' belongs to cloud other, not shop; not touching it"
    assert ("reset", "shop-n1") not in rig.backend.calls


async def test_a_deposed_leader_without_a_lease_hears_it_is_stale(rig: HostRig) -> None:
    rig.leases["pm2"] = 5
    assert (await rig.duties.execute("pm2", HostCommand(Op.LIST, 5))).outcome is CommandOutcome.DONE
    # pm3 led in term 4 and lost its lease; a late command of it
    result = await rig.duties.execute("pm3", HostCommand(Op.DESTROY, 4, DOMAIN))
    assert (result.outcome, result.message, result.retry_after) == (
        CommandOutcome.STALE_TERM, "term 4 is older than 5", None)


async def test_by_default_nobody_holds_a_lease(tmp_path: Path, cloud: Cloud) -> None:
    assert nobody("pm1", 1) is False
    backend = FakeBackend(clock=lambda: 0.0)

    async def opening(uri: str) -> FakeBackend:
        return backend

    duties = HostDuties(me="pm1", cloud=lambda: cloud, settings=AgentSettings(name="pm1"),
                        state_dir=tmp_path, open_backend=opening, leader=lambda: "",
                        send=lambda p, m: None, local=lambda h, e: None)
    async with running(duties):
        # not even this host itself
        result = await duties.execute("pm1", HostCommand(Op.LIST, 1))
        assert result.outcome is CommandOutcome.FAILED
        assert result.message == "pm1 holds no unexpired lease of pm1 for term 1"


async def test_a_host_waits_for_libvirtd_to_answer_instead_of_exiting(tmp_path: Path,
                                                                       cloud: Cloud) -> None:
    """libvirtd restarting as the agent starts (the chaos soak with VMs makes both): the host
    opens its connection again until it answers; only then is its host agent up."""
    tries: list[str] = []
    backend = FakeBackend(clock=lambda: 0.0)

    async def opening(uri: str) -> FakeBackend:
        tries.append(uri)
        if len(tries) < 3:
            raise BackendUnavailable(f"libvirt connect: cannot reach {uri}", delay=0.01)
        return backend

    h = make_host(tmp_path, cloud, open_backend=opening)
    async with running(h.duties) as agent:
        assert agent.backend is backend
    assert len(tries) == 3
