"""The `cloudd` entry point as a real process, and its Runner of root tasks."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudd.client.inspectdoc import InspectDoc
from cloudd.config.agent import DAY, load_agent
from cloudd.daemon.base.eventlog import LogEvent, LogKind
from cloudd.daemon.base.runner import Runner
from cloudd.daemon.main import Agent, main

REPO = Path(__file__).resolve().parents[2]
#: The installed console script, as systemd runs it.
CLOUDD = [str(Path(sys.executable).parent / "cloudd")]
T0 = 1_800_000_000.0
DEADLINE = 60.0  # generous: the machine is shared; nothing here should take more than 2 s


def write_agent(folder: Path, extra: str = "") -> Path:
    manifests = folder / "manifests"
    manifests.mkdir(exist_ok=True)
    shutil.copytree(REPO / "manifests" / "templates", manifests / "templates",
                    dirs_exist_ok=True)
    path = manifests / "agent.yaml"  # inside manifest_dir, as on a real host: must be skipped
    # A name no example manifest uses: this agent only watches, it joins no cloud. Every
    # path it writes is under the test's folder, and it listens on loopback only.
    path.write_text(f"name: h1-watcher\nprofile: local\nmanifest_dir: {manifests}\n"
                    f"state_dir: {folder / 'state'}\napi_socket: {folder / 'api.sock'}\n"
                    f"listen: {{address: 127.0.0.1}}\nlibvirt: {{uri: null}}\n{extra}")
    return path


class Lines:
    """A subprocess's stderr lines, collected by a thread, waited for with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        assert proc.stderr is not None
        self._stream = proc.stderr
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """After the process exited: read to the end, then close the pipe."""
        self._thread.join(DEADLINE)
        self._stream.close()

    def _pump(self) -> None:
        for line in self._stream:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def events(self) -> list[dict[str, object]]:
        with self._cond:
            return [json.loads(x) for x in self.lines if x.startswith("{")]

    def wait_for(self, event: str, **keys: object) -> dict[str, object]:
        end = time.monotonic() + DEADLINE
        with self._cond:
            while True:
                for e in (json.loads(x) for x in self.lines if x.startswith("{")):
                    if e.get("event") == event and all(e.get(k) == v for k, v in keys.items()):
                        return e
                left = end - time.monotonic()
                if left <= 0:
                    pytest.fail(f"no {event} {keys} within {DEADLINE} s: {self.lines}")
                self._cond.wait(left)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(DEADLINE)
    yield path, sock
    sock.close()


def next_message(sock: socket.socket, wanted: str) -> list[str]:
    """Datagrams until one holding `wanted`; WATCHDOG pings may come in between."""
    while True:
        lines = sock.recv(4096).decode().split("\n")
        if wanted in lines:
            return lines


def test_agent_notifies_ready_watchdog_stopping_and_exits_0(
        tmp_path: Path, notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    config = write_agent(tmp_path)
    shutil.copy(REPO / "manifests" / "torque.yaml", config.parent / "torque.yaml")
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "300000"}
    proc = subprocess.Popen([*CLOUDD, "--config", str(config)], env=env, text=True,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    log = Lines(proc)
    try:
        ready = next_message(sock, "READY=1")
        assert f"MAINPID={proc.pid}" in ready
        next_message(sock, "WATCHDOG=1")
        next_message(sock, "WATCHDOG=1")
        loaded = log.wait_for("manifest_loaded", cloud="hpc")
        assert loaded["nodes"] == 4
        # A broken edit is refused and the previous generation is kept.
        text = (config.parent / "torque.yaml").read_text()
        (config.parent / "torque.yaml").write_text(text.replace("192.0.2.12", "192.0.2.1200"))
        refused = log.wait_for("manifest_refused", cloud="hpc")
        assert refused["kept"] == loaded["digest"]
        assert any("'192.0.2.1200' is not an IP address" in p
                   for p in refused["problems"])  # type: ignore[union-attr]
        proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in next_message(sock, "STOPPING=1")
        assert proc.wait(timeout=DEADLINE) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert next(e for e in log.events() if e["event"] == "agent_stopped")["reason"] == "SIGTERM"
    # The agent's own settings file in manifest_dir is not a manifest.
    assert not any(e.get("path", "").endswith("agent.yaml")  # type: ignore[union-attr]
                   for e in log.events())


def test_sigint_also_stops_the_agent(tmp_path: Path,
                                     notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    config = write_agent(tmp_path)
    proc = subprocess.Popen([*CLOUDD, "--config", str(config)], text=True,
                            env={**os.environ, "NOTIFY_SOCKET": path},
                            stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        next_message(sock, "READY=1")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=DEADLINE) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_events_settings_reach_the_agents_event_log(tmp_path: Path) -> None:
    """`events.retention` in agent.yaml is what the agent's event log prunes by: an event ten
    days old goes under a retention of eight days and stays under the default fourteen."""
    kept = {}
    for retention in (8 * DAY, None):
        folder = tmp_path / str(retention)
        folder.mkdir()
        extra = f"events: {{retention: {retention}, prune_every: 1}}\n" if retention else ""
        path = write_agent(folder, extra)
        agent = Agent(load_agent(path), config_path=path, env={})
        try:
            for t, subject in ((T0, "old"), (T0 + 10 * DAY, "new")):
                agent.events.append(LogEvent(time=t, cloud="c1", kind=LogKind.ACTION,
                                          subject=subject, reason="test"))
            agent.events.prune(now=T0 + 10 * DAY)
            kept[retention] = [e.subject for e in agent.events.query()]
        finally:
            agent.events.close()
    assert kept == {8 * DAY: ["new"], None: ["old", "new"]}


async def test_the_agent_stops_its_manifest_worker_when_it_stops(tmp_path: Path) -> None:
    """Received manifests are checked in a worker process; stopping the agent stops it."""
    path = write_agent(tmp_path)
    agent = Agent(load_agent(path), config_path=path, env={})
    run = asyncio.create_task(agent.run())
    pid = await agent.checker.run(os.getpid)
    assert pid != os.getpid() and agent.checker.running
    agent.runner.stop("test")
    assert await asyncio.wait_for(run, DEADLINE) == 0
    assert not agent.checker.running
    end = time.monotonic() + DEADLINE
    while not exited(pid):
        assert time.monotonic() < end, "the worker process outlived its agent"
        await asyncio.sleep(0.02)


def exited(pid: int) -> bool:
    """Whether process `pid` is gone, reaped too."""
    return not Path(f"/proc/{pid}").exists()


async def test_the_inspect_document_is_made_json_off_the_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    real = InspectDoc.to_json

    def to_json(doc: InspectDoc) -> dict[str, Any]:
        threads.append(threading.current_thread().name)
        return real(doc)
    monkeypatch.setattr(InspectDoc, "to_json", to_json)
    path = write_agent(tmp_path)
    agent = Agent(load_agent(path), config_path=path, env={})
    try:
        assert (await agent._api_inspect({}))["answered_by"] == "h1-watcher"
    finally:
        agent.events.close()
    assert len(threads) == 1 and threads[0] != threading.current_thread().name


def test_check_accepts_valid_settings_and_manifests(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    config = write_agent(tmp_path)
    secret = tmp_path / "shop-db"  # the example names /etc/cloudd/secrets/shop-db
    secret.write_text("s3cret\n")
    (config.parent / "web.yaml").write_text((REPO / "manifests" / "web.yaml").read_text()
                                            .replace("/etc/cloudd/secrets/shop-db", str(secret)))
    assert main(["--config", str(config), "--check"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{config}: ok", f"{config.parent / 'web.yaml'}: ok"]


def test_check_refuses_a_bad_manifest(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    config = write_agent(tmp_path)
    bad = config.parent / "bad.yaml"
    bad.write_text((REPO / "manifests" / "web.yaml").read_text().replace("type: web",
                                                                        "type: nope"))
    assert main(["--config", str(config), "--check"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith(f"{bad}:5:7: type: unknown type 'nope'")
    assert len(lines) == 2


def test_bad_settings_give_one_placed_line_and_exit_1(tmp_path: Path) -> None:
    config = write_agent(tmp_path, "membership: {probe_interval: 0.1, probe_timeout: 0.5}\n")
    proc = subprocess.run([*CLOUDD, "--config", str(config), "--check"], capture_output=True,
                          text=True, timeout=DEADLINE, check=False)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"{config}:8:50: membership.probe_timeout: 0.5 s must be shorter than "
        "membership.probe_interval (0.1 s): a probe must end before the next one starts"]


def test_missing_settings_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(tmp_path / "agent.yaml")]) == 1
    assert capsys.readouterr().err == f"{tmp_path}/agent.yaml: (document): no such file\n"


# -- Runner ----------------------------------------------------------------------------------

async def forever() -> None:
    await asyncio.Event().wait()


async def test_runner_stops_all_tasks_on_request() -> None:
    runner = Runner(stop_timeout=5)
    cancelled: list[str] = []

    async def task(name: str) -> None:
        try:
            await forever()
        except asyncio.CancelledError:
            cancelled.append(name)
            raise

    runner.add("a", lambda: task("a"))
    runner.add("b", lambda: task("b"))
    started: list[bool] = []
    asyncio.get_running_loop().call_soon(runner.stop, "SIGTERM")
    outcome = await runner.run(on_started=lambda: started.append(True))
    assert outcome.ok and outcome.reason == "SIGTERM"
    assert sorted(cancelled) == ["a", "b"] and started == [True]


async def test_a_failing_task_shuts_everything_down() -> None:
    runner = Runner(stop_timeout=5)

    async def broken() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("disk on fire")

    runner.add("steady", forever)
    runner.add("broken", broken)
    stopping: list[bool] = []
    outcome = await runner.run(on_stopping=lambda: stopping.append(True))
    assert not outcome.ok
    assert outcome.reason == "task broken failed"
    assert outcome.failed == (("broken", "RuntimeError: disk on fire"),)
    assert stopping == [True]


async def test_a_task_returning_early_counts_as_a_failure() -> None:
    runner = Runner(stop_timeout=5)

    async def quits() -> None:
        return None

    runner.add("quits", quits)
    runner.add("steady", forever)
    outcome = await runner.run()
    assert outcome.failed == (("quits", "returned early"),)


async def test_a_task_ignoring_cancellation_is_abandoned_after_the_timeout() -> None:
    runner = Runner(stop_timeout=0.2)
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    runner.add("stubborn", stubborn)
    asyncio.get_running_loop().call_soon(runner.stop)
    outcome = await runner.run()
    assert outcome.stuck == ("stubborn",) and not outcome.ok
    release.set()  # let the abandoned task end before the loop closes
    for _ in range(10):
        await asyncio.sleep(0)


def test_runner_refuses_duplicate_names() -> None:
    runner = Runner()
    runner.add("a", forever)
    with pytest.raises(ValueError, match="'a' is already registered"):
        runner.add("a", forever)
