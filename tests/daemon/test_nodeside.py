"""NodeSide with the real Supervisor and real processes.

The provider is a tiny one of our own: its one role runs a small Python TCP server that
answers with the peers' addresses from its rendered file and re-reads it on SIGHUP. Every
wait is bounded polling; nothing asserts on time.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import signal
import socket
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
import structlog
from shared.procs import alive

from cloudd.config.agent import LOCAL, AgentSettings, Reconcile, SupervisorSettings
from cloudd.config.model import Cloud, Ensure, Node, PoolHost, Secret
from cloudd.config.plain import Plain
from cloudd.daemon.network.catalogue import NodePhase, NodeReport, PeerInfo, RoleAssignment
from cloudd.daemon.node.converge import NodeSide, node_root
from cloudd.errors import PermanentError, TemporaryError
from cloudd.providers.base import Assignment, FileSpec, Provider, Rendered, Role
from cloudd.providers.registry import Registry
from cloudd.providers.service import ProbeKind, ProbeSpec, ServiceSpec

WAIT = 20.0


def secret(name: str, value: str) -> tuple[str, str]:
    """One secret as an assignment carries it: (name, base64 of its contents)."""
    return name, base64.b64encode(value.encode()).decode()


TOKEN = (secret("token", "s3cret\n"),)

SERVER = textwrap.dedent("""\
    import json, os, signal, socket, sys
    conf, starts, host, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    peers = []
    def load(*_):
        global peers
        with open(conf) as f:
            peers = json.load(f)["peers"]
        with open(conf + ".loads", "a") as f:
            f.write(json.dumps([os.getpid(), peers]) + "\\n")
    def term(*_):
        with open(os.path.join(os.path.dirname(conf), "stops"), "a") as f:
            f.write("app\\n")
        sys.exit(0)
    signal.signal(signal.SIGHUP, load)
    signal.signal(signal.SIGTERM, term)
    load()
    with open(starts, "a") as f:
        f.write(f"{os.getpid()}\\n")
    srv = socket.create_server((host, port))
    while True:
        conn, _ = srv.accept()
        conn.sendall(json.dumps([os.getpid(), peers]).encode() + b"\\n")
        conn.close()
""")


SIDECAR = textwrap.dedent("""\
    import signal, sys, time
    def term(*_):
        with open(sys.argv[1], "a") as f:
            f.write("sidecar\\n")
        sys.exit(0)
    signal.signal(signal.SIGTERM, term)
    while True:
        time.sleep(3600)
""")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TinySettings(Plain):
    port: int


class TinyRole(Role):
    """One service; `fail_prepare` converges fail with a TemporaryError before succeeding."""

    name = "app"

    def __init__(self, program: Path) -> None:
        self.program = program
        self.fail_prepare = 0
        self.fail_permanent = 0
        #: Add a second service, without a readiness probe, that depends on the first.
        self.sidecar = False
        self.prepared = 0

    def secrets(self, a: Assignment) -> tuple[str, ...]:
        return ("token",)

    def render(self, a: Assignment, secrets: Mapping[str, str]) -> Rendered:
        doc = {"peers": sorted(str(p.address) for p in a.peers if p.healthy),
               "token": secrets["token"]}
        return Rendered(files=(FileSpec(a.root / "app.json", json.dumps(doc) + "\n",
                                        reload=("app",)),))

    def services(self, a: Assignment) -> tuple[ServiceSpec, ...]:
        port = a.setting("port", 0)
        return (ServiceSpec(
            name="app",
            argv=(sys.executable, str(self.program), str(a.root / "app.json"),
                  str(a.root / "app.starts"), str(a.address), str(port)),
            start_grace=0.2, stop_grace=2.0,
            readiness=ProbeSpec(kind=ProbeKind.TCP, host=str(a.address), port=port, period=0.1,
                                timeout=1.0),
            reload_argv=(),
            log_path=str(a.root / "app.out")),) + ((ServiceSpec(
                name="sidecar", depends_on=("app",), start_grace=0.2, stop_grace=2.0,
                argv=(sys.executable, str(self.program.with_name("sidecar.py")),
                      str(a.root / "stops"))),) if self.sidecar else ())

    async def prepare(self, a: Assignment) -> None:
        self.prepared += 1
        if self.fail_permanent > 0:
            self.fail_permanent -= 1
            raise PermanentError("prepare is broken")
        if self.fail_prepare > 0:
            self.fail_prepare -= 1
            raise TemporaryError("prepare is not ready yet", delay=0.2)


class TinyProvider(Provider):
    cloud_type = "tiny"

    def __init__(self, role: TinyRole) -> None:
        self.roles = {"app": role}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ask(port: int) -> tuple[int, list[str]]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        data = s.makefile().readline()
    pid, peers = json.loads(data)
    return int(pid), list(peers)


async def until(check: Callable[[], bool], what: str, within: float = WAIT) -> None:
    # Polls files, /proc and report lists written by other processes and tasks.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {within:g}s waiting for {what}")
        await asyncio.sleep(0.02)


class Lab:
    """One node `n1` of cloud `t`, its NodeSides (one per simulated agent) and their reports."""

    def __init__(self, tmp_path: Path, port: int | None = None) -> None:
        self.tmp = tmp_path
        program = tmp_path / "server.py"
        program.write_text(SERVER)
        program.with_name("sidecar.py").write_text(SIDECAR)
        self.role = TinyRole(program)
        self.registry = Registry([TinyProvider(self.role)])
        self.port = port if port is not None else free_port()
        # the node's view of its cloud: the secret is declared, its contents come with the
        # assignment
        self.cloud = Cloud(
            name="t", type="tiny", ensure=Ensure.RUNNING, source=tmp_path / "t.yaml",
            digest="gen1", domain_template=tmp_path / "t.xml",
            pool=(PoolHost("pm1", "127.0.0.1"),), roles=("app",),
            nodes=(Node("n1", "app", 1, "127.0.0.1", None, 64, 1, managed=False),),
            settings=TinySettings(port=self.port), secrets={"token": Secret()})
        self.settings = AgentSettings(
            name="n1", state_dir=tmp_path / "state",
            reconcile=Reconcile(**LOCAL["reconcile"]),
            supervisor=SupervisorSettings(**LOCAL["supervisor"]))
        self.root = node_root(self.settings, "n1")
        self.reports: list[NodeReport] = []
        self.sides: list[tuple[NodeSide, asyncio.Task[None]]] = []

    def start(self) -> NodeSide:
        side = NodeSide(me="n1", cloud=self.cloud, settings=self.settings,
                        report=self.reports.append, registry=self.registry, heartbeat=0.5)
        self.sides.append((side, asyncio.create_task(side.run())))
        return side

    async def kill_agent(self, side: NodeSide) -> None:
        """What an agent's shutdown does: its root task is cancelled (run() then detaches)."""
        for s, task in self.sides:
            if s is side:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    def assignment(self, term: int = 1, peers: tuple[str, ...] = ("10.0.0.2",),
                   **kw: Any) -> RoleAssignment:
        kw.setdefault("secrets", TOKEN)
        return RoleAssignment(term=term, cloud="t", node="n1", role="app",
                              address=ip_address("127.0.0.1"), generation="gen1",
                              peers=tuple(PeerInfo(f"p{i}", "other", ip_address(addr), True)
                                          for i, addr in enumerate(peers)), **kw)

    def starts(self) -> list[int]:
        path = self.root / "app.starts"
        return [int(x) for x in path.read_text().split()] if path.exists() else []

    def loads(self) -> list[tuple[int, list[str]]]:
        path = self.root / "app.json.loads"
        return [tuple(json.loads(x)) for x in path.read_text().splitlines()]

    def phases(self) -> list[NodePhase]:
        return [r.phase for r in self.reports]

    async def ready(self, side: NodeSide) -> int:
        await until(lambda: side.view().phase == NodePhase.READY
                    and bool(self.reports) and self.reports[-1].phase == NodePhase.READY,
                    "a ready report")
        pid = side.view().services[0].pid
        assert pid is not None
        return pid

    async def close(self) -> None:
        for _side, task in self.sides:  # run() ends by detaching
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        # A fresh NodeSide adopts whatever is left over and stops it.
        last = NodeSide(me="n1", cloud=self.cloud, settings=self.settings,
                        report=lambda r: None, registry=self.registry)
        await last.stop_services()
        left = [pid for pid in self.starts() if alive(pid)]
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"stop_services left {left} running"


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        await lab.close()


async def test_assignment_runs_services_and_reports_ready(lab: Lab) -> None:
    side = lab.start()
    side.assign(lab.assignment(term=3))
    pid = await lab.ready(side)
    assert lab.starts() == [pid] and ask(lab.port) == (pid, ["10.0.0.2"])
    assert lab.phases()[0] == NodePhase.CONVERGING
    last = lab.reports[-1]
    assert (last.node, last.term, last.generation) == ("n1", 3, "gen1")
    assert [(s.name, s.state, s.ready) for s in last.services] == [("app", "RUNNING", True)]
    secret = lab.root / "secrets" / "token"
    assert secret.read_text() == "s3cret\n" and secret.stat().st_mode & 0o777 == 0o600
    assert json.loads((lab.root / "app.json").read_text())["token"] == "s3cret"
    # Heartbeats keep coming with nothing changing.
    count = len(lab.reports)
    await until(lambda: len(lab.reports) >= count + 2, "two heartbeats")
    assert lab.reports[-1].phase == NodePhase.READY
    # The same assignment again changes nothing: no second converge, no restart.
    prepared = lab.role.prepared
    side.assign(lab.assignment(term=3))
    await until(lambda: len(lab.reports) >= count + 3, "another heartbeat")
    assert lab.role.prepared == prepared and lab.starts() == [pid]


async def test_peers_change_rerenders_and_reloads_same_pid(lab: Lab) -> None:
    side = lab.start()
    side.assign(lab.assignment())
    pid = await lab.ready(side)
    side.assign(lab.assignment(peers=("10.0.0.2", "10.0.0.3")))
    await until(lambda: ask(lab.port)[1] == ["10.0.0.2", "10.0.0.3"], "the reloaded peers")
    assert ask(lab.port)[0] == pid and lab.starts() == [pid]
    assert lab.loads() == [(pid, ["10.0.0.2"]), (pid, ["10.0.0.2", "10.0.0.3"])]
    assert lab.reports[-1].phase == NodePhase.READY


async def test_stale_term_ignored_and_other_node_refused(lab: Lab) -> None:
    side = lab.start()
    side.assign(lab.assignment(term=5))
    pid = await lab.ready(side)
    prepared = lab.role.prepared
    side.assign(lab.assignment(term=4, peers=("10.0.0.9",)))
    side.assign(replace(lab.assignment(term=6, peers=("10.0.0.9",)), node="n2"))
    side.assign(replace(lab.assignment(term=6, peers=("10.0.0.9",)), cloud="other"))
    count = len(lab.reports)
    await until(lambda: len(lab.reports) >= count + 2, "two heartbeats")
    assert ask(lab.port) == (pid, ["10.0.0.2"]) and lab.role.prepared == prepared
    assert {r.term for r in lab.reports} == {5}
    # A newer leader re-sending the same role: reports carry its term, nothing restarts.
    side.assign(lab.assignment(term=7))
    await until(lambda: lab.reports[-1].term == 7, "a report of term 7")
    assert lab.starts() == [pid] and lab.role.prepared == prepared


async def test_kill_9_goes_degraded_then_ready(lab: Lab) -> None:
    side = lab.start()
    side.assign(lab.assignment())
    first = await lab.ready(side)
    seen = len(lab.reports)
    os.kill(first, signal.SIGKILL)
    await until(lambda: len(lab.starts()) == 2, "the restart")
    second = await lab.ready(side)
    assert second != first and not alive(first)
    after = lab.phases()[seen:]
    assert NodePhase.DEGRADED in after and after[-1] == NodePhase.READY
    assert after.index(NodePhase.DEGRADED) < len(after) - 1
    degraded = next(r for r in lab.reports[seen:] if r.phase == NodePhase.DEGRADED)
    assert "app" in degraded.message


async def test_converge_failure_reported_and_retried(lab: Lab) -> None:
    lab.role.fail_prepare = 2
    side = lab.start()
    side.assign(lab.assignment())
    await lab.ready(side)
    failed = [r for r in lab.reports if r.phase == NodePhase.FAILED]
    assert failed and failed[0].message == "prepare is not ready yet"
    assert lab.role.prepared == 3 and len(lab.starts()) == 1


async def test_repeated_failures_back_off_exponentially(lab: Lab) -> None:
    lab.role.fail_permanent = 3
    side = lab.start()
    with structlog.testing.capture_logs() as logs:
        side.assign(lab.assignment())
        await lab.ready(side)
    failed = [e for e in logs if e["event"] == "node.converge_failed"]
    assert [e["failures"] for e in failed] == [1, 2, 3]
    base = lab.settings.reconcile.backoff_base
    for e in failed:  # base * 2^(n-1), less up to 20 % of jitter
        top = base * 2 ** (e["failures"] - 1)
        assert 0.8 * top - 0.001 <= e["retry_in"] <= top + 0.001
    assert lab.role.prepared == 4 and failed[0]["error"] == "prepare is broken"


async def test_new_assignment_is_not_held_back_by_backoff(lab: Lab) -> None:
    lab.settings = replace(lab.settings,
                           reconcile=Reconcile(backoff_base=3600.0, backoff_max=3600.0))
    lab.role.fail_permanent = 1
    side = lab.start()
    side.assign(lab.assignment())
    await until(lambda: bool(lab.reports) and lab.reports[-1].phase == NodePhase.FAILED,
                "failed")
    side.assign(lab.assignment(peers=("10.0.0.7",)))  # retried at once, not in an hour
    pid = await lab.ready(side)
    assert ask(lab.port) == (pid, ["10.0.0.7"])


async def test_missing_secret_fails_with_its_path_and_recovers(lab: Lab) -> None:
    side = lab.start()
    side.assign(lab.assignment(secrets=()))  # a leader that does not hold the secret
    await until(lambda: any(r.phase == NodePhase.FAILED for r in lab.reports),
                "a failed report")
    failed = next(r for r in lab.reports if r.phase == NodePhase.FAILED)
    assert failed.message.startswith("secret 'token' not found: ")
    assert str(lab.root / "secrets" / "token") in failed.message and lab.starts() == []
    side.assign(lab.assignment(term=2))  # the next generation carries it
    await lab.ready(side)


async def test_agent_restart_adopts_without_duplicates(lab: Lab) -> None:
    old = lab.start()
    old.assign(lab.assignment(term=2))
    pid = await lab.ready(old)
    await lab.kill_agent(old)
    assert alive(pid)
    lab.reports.clear()
    # The new agent knows its assignment from the node root before the leader speaks again.
    new = lab.start()
    assert await lab.ready(new) == pid
    new.assign(lab.assignment(term=2))
    count = len(lab.reports)
    await until(lambda: len(lab.reports) >= count + 2, "two heartbeats")
    assert lab.starts() == [pid] and ask(lab.port)[0] == pid
    assert lab.reports[-1].term == 2 and lab.reports[-1].services[0].pid == pid


AGENT = textwrap.dedent("""\
    import asyncio, importlib.util, sys
    from pathlib import Path
    from cloudd import log
    log.configure(stream=sys.stderr)  # stdout carries the pid only
    sys.path.insert(0, str(Path(sys.argv[1]).parents[1]))  # tests/: shared helpers
    spec = importlib.util.spec_from_file_location("nodeside_lab", sys.argv[1])
    t = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = t  # its dataclasses read their annotations in their module
    spec.loader.exec_module(t)

    async def main():
        lab = t.Lab(Path(sys.argv[2]), port=int(sys.argv[3]))
        side = lab.start()
        side.assign(lab.assignment(term=2))
        print(await lab.ready(side), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
""")


async def test_agent_killed_9_then_a_new_agent_adopts(lab: Lab) -> None:
    """The first agent is a real process, killed with SIGKILL: no detach, no goodbye."""
    script = lab.tmp / "agent.py"
    script.write_text(AGENT)
    agent = await asyncio.create_subprocess_exec(
        sys.executable, str(script), __file__, str(lab.tmp), str(lab.port),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        assert agent.stdout is not None
        async with asyncio.timeout(60):
            pid = int(await agent.stdout.readline())
    finally:
        agent.kill()
        await agent.wait()
    assert alive(pid) and lab.starts() == [pid]
    new = lab.start()
    assert await lab.ready(new) == pid
    assert new.view().services[0].pid == pid and lab.reports[-1].term == 2
    new.assign(lab.assignment(term=3))
    await until(lambda: lab.reports[-1].term == 3, "a report of term 3")
    assert lab.starts() == [pid] and ask(lab.port)[0] == pid


async def test_agent_restart_with_new_peers_reloads_adopted(lab: Lab) -> None:
    old = lab.start()
    old.assign(lab.assignment())
    pid = await lab.ready(old)
    await lab.kill_agent(old)
    new = lab.start()
    new.assign(lab.assignment(term=2, peers=("10.0.0.4",)))
    await until(lambda: ask(lab.port)[1] == ["10.0.0.4"], "the reloaded peers")
    assert lab.starts() == [pid]


async def test_stop_services_stops_all_and_a_new_assignment_restarts(lab: Lab) -> None:
    side = lab.start()
    side.assign(lab.assignment())
    pid = await lab.ready(side)
    await side.stop_services()
    assert not alive(pid)
    assert [(s.state, s.pid) for s in side.view().services] == [("STOPPED", None)]
    await until(lambda: lab.reports[-1].phase == NodePhase.STOPPED, "a stopped report")
    side.assign(lab.assignment(term=2))
    second = await lab.ready(side)
    assert second != pid and len(lab.starts()) == 2


async def test_service_without_readiness_probe_and_reverse_stop(lab: Lab) -> None:
    lab.role.sidecar = True
    side = lab.start()
    side.assign(lab.assignment())
    await lab.ready(side)
    assert [(s.name, s.state, s.ready) for s in lab.reports[-1].services] == [
        ("app", "RUNNING", True), ("sidecar", "RUNNING", True)]
    pids = [s.pid for s in side.view().services]
    await side.stop_services()
    assert (lab.root / "stops").read_text().split() == ["sidecar", "app"]
    assert not any(alive(p) for p in pids if p is not None)


async def test_stop_services_after_restart_stops_adopted(lab: Lab) -> None:
    old = lab.start()
    old.assign(lab.assignment())
    pid = await lab.ready(old)
    await lab.kill_agent(old)
    new = NodeSide(me="n1", cloud=lab.cloud, settings=lab.settings,
                   report=lab.reports.append, registry=lab.registry)
    await new.stop_services()
    assert not alive(pid) and lab.starts() == [pid]
    assert new.view().phase == NodePhase.STOPPED


async def test_a_new_secret_in_the_assignment_reconverges(lab: Lab) -> None:
    side = lab.start()
    side.assign(lab.assignment())
    pid = await lab.ready(side)
    side.assign(lab.assignment(secrets=(secret("token", "other\n"),)))
    await until(lambda: lab.loads()[-1] == (pid, ["10.0.0.2"]) and len(lab.loads()) == 2,
                "a reload for the new secret")
    assert json.loads((lab.root / "app.json").read_text())["token"] == "other"
    assert lab.starts() == [pid]


async def test_update_cloud_reconverges(lab: Lab) -> None:
    side = lab.start()
    side.assign(lab.assignment())
    pid = await lab.ready(side)
    prepared = lab.role.prepared
    side.update_cloud(replace(lab.cloud, digest="gen2"))
    await until(lambda: lab.role.prepared == prepared + 1, "a converge for the new generation")
    assert len(lab.loads()) == 1 and lab.starts() == [pid]  # the same files: left alone


async def test_changed_service_spec_replaces_the_service(lab: Lab) -> None:
    side = lab.start()
    side.assign(lab.assignment())
    first = await lab.ready(side)
    port = free_port()
    side.update_cloud(replace(lab.cloud, digest="gen2", settings=TinySettings(port=port)))
    await until(lambda: len(lab.starts()) == 2 and not alive(first), "the new copy")
    second = await lab.ready(side)
    assert ask(port) == (second, ["10.0.0.2"]) and second != first
    assert (lab.root / "stops").read_text().split() == ["app"]


async def test_update_cloud_of_another_cloud_is_refused(lab: Lab) -> None:
    side = lab.start()
    side.assign(lab.assignment())
    pid = await lab.ready(side)
    side.update_cloud(replace(lab.cloud, name="other", digest="gen9",
                              settings=TinySettings(port=free_port())))
    assert side.cloud.name == "t" and side.cloud.digest == "gen1"
    count = len(lab.reports)
    await until(lambda: len(lab.reports) >= count + 2, "two heartbeats")
    assert lab.starts() == [pid] and ask(lab.port)[0] == pid


async def test_unassigned_view_and_unreadable_saved_assignment(lab: Lab) -> None:
    lab.root.mkdir(parents=True)
    (lab.root / "assignment.json").write_text("{not json")
    with structlog.testing.capture_logs() as logs:
        side = lab.start()
    assert [e["event"] for e in logs] == ["node.assignment_unreadable"]
    view = side.view()
    assert (view.phase, view.term, view.services) == (NodePhase.UNASSIGNED, 0, ())
    side.assign(lab.assignment(term=4))
    await lab.ready(side)
    saved = json.loads((lab.root / "assignment.json").read_text())
    assert saved["term"] == 4 and saved["peers"][0]["address"] == "10.0.0.2"


async def test_assignment_during_stop_resumes_after_the_stop(lab: Lab) -> None:
    side = lab.start()
    side.assign(lab.assignment())
    pid = await lab.ready(side)
    stopping = asyncio.create_task(side.stop_services())
    await asyncio.sleep(0)  # one loop turn: the stop has begun
    assert side.view().phase == NodePhase.STOPPING
    side.assign(lab.assignment(term=2))
    await stopping
    assert not alive(pid) and (lab.root / "stops").read_text().split() == ["app"]
    second = await lab.ready(side)
    assert second != pid and lab.starts() == [pid, second]
    assert lab.reports[-1].term == 2
