"""HostAgent over the in-memory FakeBackend: fencing, idempotence, results, event forwarding."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cloudd.durable import TermFile
from cloudd.errors import PermanentError
from cloudd.vmctl.backend import DomainEvent, DomainEventKind, FakeBackend
from cloudd.vmctl.hostagent import TERM_FILE, CommandOutcome, HostAgent, HostCommand, Op
from cloudd.vmctl.metadata import CloudMeta, from_domain_xml, metadata_xml


def domain_xml(node: str, term: int) -> str:
    meta = CloudMeta(cloud="c", node=node, role="compute", term=term)
    return (f"<domain><name>c-{node}</name><memory unit='MiB'>256</memory>"
            f"{metadata_xml(meta)}</domain>")


@pytest.fixture
def fake() -> FakeBackend:
    return FakeBackend(clock=lambda: 0.0, images=frozenset({"/img/a.qcow2"}))


async def test_full_cycle_and_idempotence(fake: FakeBackend, tmp_path: Path) -> None:
    agent = HostAgent(fake, state_dir=tmp_path, image_dirs=())
    run = agent.execute
    assert (await run(HostCommand(Op.DEFINE, 1, "c-n1", domain_xml("n1", 1)))).outcome \
        is CommandOutcome.DONE
    assert (await run(HostCommand(Op.DEFINE, 1, "c-n1", domain_xml("n1", 1)))).outcome \
        is CommandOutcome.NOOP
    assert (await run(HostCommand(Op.DESTROY, 1, "c-n1"))).outcome is CommandOutcome.NOOP
    assert (await run(HostCommand(Op.START, 1, "c-n1"))).outcome is CommandOutcome.DONE
    assert (await run(HostCommand(Op.START, 1, "c-n1"))).outcome is CommandOutcome.NOOP
    listed = await run(HostCommand(Op.LIST, 1))
    assert [d.name for d in listed.domains] == ["c-n1"]
    inv = await run(HostCommand(Op.INVENTORY, 1))
    assert inv.inventory is not None and inv.inventory.images == frozenset({"/img/a.qcow2"})
    # the fake counts the memory of running domains, from their XML
    assert inv.inventory.total_memory_kib - inv.inventory.free_memory_kib == 256 * 1024
    assert (await run(HostCommand(Op.DESTROY, 1, "c-n1"))).outcome is CommandOutcome.DONE
    assert (await run(HostCommand(Op.UNDEFINE, 1, "c-n1"))).outcome is CommandOutcome.DONE
    assert (await run(HostCommand(Op.UNDEFINE, 1, "c-n1"))).outcome is CommandOutcome.NOOP


async def test_stale_term_is_refused_and_nothing_is_done(fake: FakeBackend,
                                                         tmp_path: Path) -> None:
    agent = HostAgent(fake, state_dir=tmp_path)
    await agent.execute(HostCommand(Op.DEFINE, 5, "c-n1", domain_xml("n1", 5)))
    await agent.execute(HostCommand(Op.START, 5, "c-n1"))
    fake.calls.clear()
    result = await agent.execute(HostCommand(Op.DESTROY, 4, "c-n1"))
    assert result.outcome is CommandOutcome.STALE_TERM
    assert result.term_seen == 5
    assert "term 4 is older than 5" in result.message
    assert fake.calls == []
    # a newer term is obeyed and raises the fence
    assert (await agent.execute(HostCommand(Op.DESTROY, 6, "c-n1"))).outcome is CommandOutcome.DONE
    assert (await agent.execute(HostCommand(Op.START, 5, "c-n1"))).outcome \
        is CommandOutcome.STALE_TERM


async def test_highest_term_survives_a_restart(fake: FakeBackend, tmp_path: Path) -> None:
    agent = HostAgent(fake, state_dir=tmp_path)
    await agent.execute(HostCommand(Op.LIST, 9))
    assert (tmp_path / "highest-term").read_text() == "9\n"
    again = HostAgent(fake, state_dir=tmp_path)
    assert again.highest_term == 9
    assert (await again.execute(HostCommand(Op.LIST, 8))).outcome is CommandOutcome.STALE_TERM


def test_corrupt_term_file_is_a_precise_error(tmp_path: Path) -> None:
    (tmp_path / "highest-term").write_text("twelve\n")
    with pytest.raises(PermanentError, match="highest-term: not a term number: 'twelve'"):
        TermFile(tmp_path / TERM_FILE).load()


async def test_failures_are_results_not_exceptions(fake: FakeBackend, tmp_path: Path) -> None:
    fake.add_foreign("handmade", running=True)
    agent = HostAgent(fake, state_dir=tmp_path)
    for op in (Op.DESTROY, Op.SHUTDOWN, Op.UNDEFINE):
        result = await agent.execute(HostCommand(op, 1, "handmade"))
        assert result.outcome is CommandOutcome.FAILED
        assert "no cloudd metadata" in result.message
    assert fake.domains["handmade"].state.value == "running"
    missing = await agent.execute(HostCommand(Op.START, 1, "c-nope"))
    assert missing.outcome is CommandOutcome.FAILED and "no domain 'c-nope'" in missing.message
    assert (await agent.execute(HostCommand(Op.START, 1))).message == \
        "start without a domain name"
    assert (await agent.execute(HostCommand(Op.LIST, -1))).message == "invalid term -1"


async def test_events_are_forwarded(fake: FakeBackend, tmp_path: Path) -> None:
    agent = HostAgent(fake, state_dir=tmp_path)
    got: list[DomainEvent] = []
    seen = asyncio.Event()

    def on_event(event: DomainEvent) -> None:
        if event.kind is DomainEventKind.STOPPED:
            seen.set()
        got.append(event)
        raise RuntimeError("a faulty consumer")

    task = asyncio.create_task(agent.run_events(on_event))
    await asyncio.sleep(0)
    await agent.execute(HostCommand(Op.DEFINE, 1, "c-n1", domain_xml("n1", 1)))
    await agent.execute(HostCommand(Op.START, 1, "c-n1"))
    fake.crash("c-n1")
    async with asyncio.timeout(5):
        await seen.wait()
    task.cancel()
    assert [e.kind for e in got] == [DomainEventKind.DEFINED, DomainEventKind.STARTED,
                                     DomainEventKind.STOPPED]
    assert got[-1].detail == "crashed"


async def test_hosts_sharing_one_hypervisor_see_only_their_own(fake: FakeBackend,
                                                               tmp_path: Path) -> None:
    pm1 = HostAgent(fake, state_dir=tmp_path / "pm1", host="pm1", image_dirs=())
    pm2 = HostAgent(fake, state_dir=tmp_path / "pm2", host="pm2", image_dirs=())
    got: list[DomainEvent] = []
    task = asyncio.create_task(pm2.run_events(got.append))
    await asyncio.sleep(0)
    assert (await pm1.execute(HostCommand(Op.DEFINE, 1, "c-n1", domain_xml("n1", 1)))).outcome \
        is CommandOutcome.DONE
    # DEFINE stamped the defining host into the metadata
    meta = from_domain_xml(fake.domains["c-n1"].xml)
    assert meta is not None and meta.host == "pm1"
    await pm1.execute(HostCommand(Op.START, 1, "c-n1"))
    assert [d.name for d in (await pm1.execute(HostCommand(Op.LIST, 1))).domains] == ["c-n1"]
    assert (await pm2.execute(HostCommand(Op.LIST, 1))).domains == ()
    fake.calls.clear()
    for op in (Op.DESTROY, Op.SHUTDOWN, Op.START, Op.UNDEFINE):
        result = await pm2.execute(HostCommand(op, 1, "c-n1"))
        assert result.outcome is CommandOutcome.FAILED
        assert result.message == "domain 'c-n1' belongs to host pm1, not pm2; not touching it"
    refused = await pm2.execute(HostCommand(Op.DEFINE, 1, "c-n1", domain_xml("n1", 1)))
    assert refused.outcome is CommandOutcome.FAILED and "belongs to host pm1" in refused.message
    assert fake.calls == []
    assert fake.domains["c-n1"].state.value == "running"
    # pm2's own domain: its events are forwarded, pm1's are not
    await pm2.execute(HostCommand(Op.DEFINE, 1, "c-n2", domain_xml("n2", 1)))
    fake.crash("c-n1")
    await asyncio.sleep(0)
    task.cancel()
    assert [(e.kind, e.domain) for e in got] == [(DomainEventKind.DEFINED, "c-n2")]


async def test_domains_defined_without_a_host_are_anyones(fake: FakeBackend,
                                                          tmp_path: Path) -> None:
    await fake.define(domain_xml("old", 1))
    agent = HostAgent(fake, state_dir=tmp_path, host="pm1", image_dirs=())
    assert [d.name for d in (await agent.execute(HostCommand(Op.LIST, 1))).domains] == \
        ["c-old"]
    assert (await agent.execute(HostCommand(Op.START, 1, "c-old"))).outcome is CommandOutcome.DONE


async def test_inventory_adds_the_images_found_in_image_dirs(fake: FakeBackend,
                                                              tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "web.qcow2").write_bytes(b"")
    (images / "notes.txt").write_text("not an image")
    agent = HostAgent(fake, state_dir=tmp_path, image_dirs=(images, tmp_path / "missing"))
    inv = (await agent.execute(HostCommand(Op.INVENTORY, 1))).inventory
    assert inv is not None
    assert inv.images == frozenset({"/img/a.qcow2", str(images / "web.qcow2")})


async def test_resync_lists_only_this_hosts_domains(fake: FakeBackend, tmp_path: Path) -> None:
    pm1 = HostAgent(fake, state_dir=tmp_path / "pm1", host="pm1", image_dirs=())
    pm2 = HostAgent(fake, state_dir=tmp_path / "pm2", host="pm2", image_dirs=())
    await pm1.execute(HostCommand(Op.DEFINE, 1, "c-n1", domain_xml("n1", 1)))
    await pm2.execute(HostCommand(Op.DEFINE, 1, "c-n2", domain_xml("n2", 1)))
    got: list[DomainEvent] = []
    task = asyncio.create_task(pm2.run_events(got.append))
    await asyncio.sleep(0)
    # what a backend publishes after reconnecting: every cloudd domain on the hypervisor
    fake.hub.publish(DomainEvent(kind=DomainEventKind.RESYNC, domain="", meta=None,
                                 detail="connected", at=0.0, domains=await fake.list()))
    await asyncio.sleep(0)
    task.cancel()
    assert [e.kind for e in got] == [DomainEventKind.RESYNC]
    assert [d.name for d in got[0].domains] == ["c-n2"]


def cloud_xml(cloud: str, node: str, *, name: str = "") -> str:
    meta = CloudMeta(cloud=cloud, node=node, role="compute", term=1)
    return (f"<domain><name>{name or f'{cloud}-{node}'}</name>"
            f"<memory unit='MiB'>64</memory>{metadata_xml(meta)}</domain>")


async def test_two_clouds_on_one_hypervisor_never_touch_each_others_domains(
        fake: FakeBackend, tmp_path: Path) -> None:
    # cloud a-b's node c and cloud a's node b-c: one domain name, a-b-c
    ab = HostAgent(fake, state_dir=tmp_path / "ab", host="pm1", cloud="a-b", image_dirs=())
    a = HostAgent(fake, state_dir=tmp_path / "a", host="pm1", cloud="a", image_dirs=())
    got: list[DomainEvent] = []
    task = asyncio.create_task(a.run_events(got.append))
    await asyncio.sleep(0)
    assert (await ab.execute(HostCommand(Op.DEFINE, 1, "a-b-c", cloud_xml("a-b", "c")))
            ).outcome is CommandOutcome.DONE
    await ab.execute(HostCommand(Op.START, 1, "a-b-c"))
    fake.calls.clear()
    refused = await a.execute(HostCommand(Op.DEFINE, 1, "a-b-c", cloud_xml("a", "b-c")))
    assert (refused.outcome, refused.message) == (
        CommandOutcome.FAILED, "domain 'a-b-c' belongs to cloud a-b, not a; not touching it")
    for op in (Op.DESTROY, Op.SHUTDOWN, Op.START, Op.UNDEFINE):
        result = await a.execute(HostCommand(op, 1, "a-b-c"))
        assert (result.outcome, result.message) == (
            CommandOutcome.FAILED, "domain 'a-b-c' belongs to cloud a-b, not a; not touching it")
    assert (await a.execute(HostCommand(Op.LIST, 1))).domains == ()
    assert fake.calls == []
    meta = fake.domains["a-b-c"].meta
    assert meta is not None and meta.cloud == "a-b"
    assert fake.domains["a-b-c"].state.value == "running"
    fake.crash("a-b-c")
    await asyncio.sleep(0)
    task.cancel()
    assert got == []  # cloud a-b's events are not cloud a's


@pytest.mark.parametrize(("domain", "xml", "why"), [
    ("c-n1", cloud_xml("other", "n1", name="c-n1"),
     "define of c-n1: its metadata names cloud other, not c"),
    ("c-n1", cloud_xml("c", "n2"), "define of 'c-n1' carries the domain name 'c-n2'"),
    ("c-n1", "<domain><name>c-n1</name></domain>",
     "define of c-n1: the domain XML carries no cloudd metadata"),
    ("c-n1", "<domain><name>c-n1", "define of c-n1: domain XML does not parse: "
                                  "no element found: line 1, column 18"),
])
async def test_a_define_is_for_its_domain_and_this_cloud(fake: FakeBackend, tmp_path: Path,
                                                         domain: str, xml: str,
                                                         why: str) -> None:
    agent = HostAgent(fake, state_dir=tmp_path, host="pm1", cloud="c", image_dirs=())
    result = await agent.execute(HostCommand(Op.DEFINE, 1, domain, xml))
    assert (result.outcome, result.message) == (CommandOutcome.FAILED, why)
    assert fake.domains == {} and fake.calls == []
