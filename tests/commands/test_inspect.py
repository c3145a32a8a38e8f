"""`cloudd-cli inspect` against a real ApiServer on a Unix socket, run by a thread of its own.

The CLI path is the real one: argument parsing, the socket, the JSON lines, the document's
validation, the exit status and the one-line error when something is wrong.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudd.cli import main
from cloudd.client.api import ApiError
from cloudd.client.inspectdoc import (
    CloudView,
    ElectionState,
    HostView,
    InspectDoc,
    LeadershipView,
    LivenessView,
    Source,
)
from cloudd.daemon.operator.api import ApiServer

REPO = Path(__file__).resolve().parents[2]


class Agent:
    """An ApiServer on its own event loop in a thread, as the agent would run it."""

    def __init__(self, path: Path) -> None:
        self.server = ApiServer(path)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.calls: list[dict[str, Any]] = []

    def register(self, op: str, handler: Callable[[dict[str, Any]], Any]) -> None:
        async def call(args: dict[str, Any]) -> Any:
            self.calls.append(args)
            return handler(args)
        self.server.register(op, call)

    def register_stream(self, op: str,
                        handler: Callable[[dict[str, Any]], AsyncIterator[Any]]) -> None:
        self.server.register_stream(op, handler)

    def start(self) -> Agent:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)

        async def cancel_rest() -> None:  # open streams end with the agent
            me = asyncio.current_task()
            for task in asyncio.all_tasks():
                if task is not me:
                    task.cancel()
        asyncio.run_coroutine_threadsafe(cancel_rest(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def sock() -> Iterator[Path]:
    # Short path: a Unix socket path must fit in 108 bytes, pytest's tmp_path may not.
    d = Path(tempfile.mkdtemp(prefix="cloudd-insp-"))
    yield d / "cloudd.sock"
    shutil.rmtree(d)


@pytest.fixture
def agent(sock: Path) -> Iterator[Agent]:
    a = Agent(sock)
    yield a
    a.stop()


def doc(name: str = "shop", *, hosts: int = 2) -> InspectDoc:
    now = time.time()
    cloud = CloudView(
        name=name, type="web", ensure="running", source=Source.LEADER, observed_at=now - 1,
        leadership=LeadershipView(state=ElectionState.STABLE, term=4, leader="pm1",
                              since=now - 60, quorum_reached=hosts, quorum_needed=2),
        hosts=tuple(HostView(name=f"pm{i}", address=f"192.0.2.{70 + i}",
                             liveness=LivenessView.ALIVE, reachable=True, free_memory_mib=2048,
                             domains=1) for i in range(1, hosts + 1)))
    return InspectDoc(answered_by="pm1", generated_at=now, clouds=(cloud,))


def answer_doc(args: dict[str, Any]) -> Any:
    if args.get("cloud") not in (None, "shop"):
        raise ApiError(f"no cloud named {args['cloud']!r} on this agent")
    return doc().to_json()


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_text(capsys: pytest.CaptureFixture[str], agent: Agent, sock: Path) -> None:
    agent.register("inspect", answer_doc)
    agent.start()
    code, out, err = cli(capsys, "inspect", "--socket", str(sock))
    assert (code, err) == (0, "")
    assert out.startswith("cloud shop  type web  ensure running\n")
    assert "quorum 2/2 hosts" in out and "pm2   192.0.2.72  alive" in out
    assert "\x1b[" not in out  # not a terminal: no colour
    assert agent.calls == [{"cloud": None}]


def test_json_is_the_document_and_stable(capsys: pytest.CaptureFixture[str], agent: Agent,
                                         sock: Path) -> None:
    fixed = doc().to_json()
    agent.register("inspect", lambda args: fixed)
    agent.start()
    first = cli(capsys, "inspect", "shop", "--json", "--socket", str(sock))
    second = cli(capsys, "inspect", "shop", "--json", "--socket", str(sock))
    assert first == second
    code, out, _ = first
    assert code == 0 and json.loads(out) == fixed
    assert list(json.loads(out)) == ["answered_by", "generated_at", "clouds", "version",
                                     "agent"]
    assert agent.calls == [{"cloud": "shop"}] * 2


def test_refusal_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str], agent: Agent,
                                        sock: Path) -> None:
    agent.register("inspect", answer_doc)
    agent.start()
    assert cli(capsys, "inspect", "nope", "--socket", str(sock)) == (
        1, "", "cloudd-cli inspect: no cloud named 'nope' on this agent\n")


def test_no_agent(capsys: pytest.CaptureFixture[str], sock: Path) -> None:
    assert cli(capsys, "inspect", "--socket", str(sock)) == (
        1, "", f"cloudd-cli inspect: no agent answers on {sock}: No such file or directory\n")


def test_agent_without_inspect(capsys: pytest.CaptureFixture[str], agent: Agent,
                               sock: Path) -> None:
    agent.register("ping", lambda args: "pong")
    agent.start()
    code, out, err = cli(capsys, "inspect", "--socket", str(sock))
    assert (code, out) == (1, "")
    assert err == "cloudd-cli inspect: unknown op 'inspect' (known: ping)\n"


def test_malformed_document_names_the_key(capsys: pytest.CaptureFixture[str], agent: Agent,
                                          sock: Path) -> None:
    bad = doc().to_json()
    bad["clouds"][0]["hosts"][1]["liveness"] = "zombie"
    agent.register("inspect", lambda args: bad)
    agent.start()
    assert cli(capsys, "inspect", "--socket", str(sock)) == (
        1, "", "cloudd-cli inspect: inspect document: clouds[0].hosts[1].liveness: expected "
               "one of alive, suspect, dead, got 'zombie'\n")


def test_not_a_cloudd_agent(capsys: pytest.CaptureFixture[str], agent: Agent,
                            sock: Path) -> None:
    async def start_http_like() -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()
            writer.write(b"HTTP/1.1 400 Bad Request\r\n")
            await writer.drain()
            writer.close()
        await asyncio.start_unix_server(serve, path=str(sock))
    agent.thread.start()
    asyncio.run_coroutine_threadsafe(start_http_like(), agent.loop).result(10)
    code, out, err = cli(capsys, "inspect", "--socket", str(sock))
    assert (code, out) == (1, "")
    assert err.startswith(f"cloudd-cli inspect: the answer on {sock} is not cloudd's: ")
    assert err.count("\n") == 1


@pytest.mark.parametrize("interval", ["0", "-1", "soon", "inf"])
def test_bad_interval(capsys: pytest.CaptureFixture[str], interval: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["inspect", "--watch", "--interval", interval])
    assert exit_.value.code == 2
    assert "--interval" in capsys.readouterr().err


class Lines:
    """A child's output, read by a thread so that the test waits with a deadline."""

    def __init__(self, stream: Any) -> None:
        self.q: queue.Queue[bytes] = queue.Queue()
        self.seen = b""
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: Any) -> None:
        try:
            while chunk := os.read(stream.fileno(), 65536):
                self.q.put(chunk)
        except OSError:  # a pty whose other end closed reads EIO instead of EOF
            pass

    def wait_for(self, predicate: Callable[[bytes], bool], *, timeout: float = 20.0) -> bytes:
        deadline = time.monotonic() + timeout
        while not predicate(self.seen):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out; output so far: {self.seen[-2000:]!r}")
            try:
                self.seen += self.q.get(timeout=left)
            except queue.Empty:
                continue
        return self.seen


def spawn(*argv: str, **kw: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "cloudd.cli", *argv], cwd=REPO,
                            stdout=kw.pop("stdout", subprocess.PIPE),
                            stderr=subprocess.STDOUT, **kw)


def test_watch_survives_the_agent_coming_late_and_ends_on_ctrl_c(agent: Agent,
                                                                  sock: Path) -> None:
    agent.register("inspect", answer_doc)
    proc = spawn("inspect", "--watch", "--interval", "0.05", "--socket", str(sock))
    try:
        out = Lines(proc.stdout)
        out.wait_for(lambda s: b"no agent answers on" in s)
        agent.start()
        seen = out.wait_for(lambda s: s.count(b"cloud shop  type web") >= 2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        proc.kill()
        proc.wait()
    frames = seen.split(b"\n\n")  # not a terminal: frames follow each other
    assert b"\x1b[" not in seen
    assert any(f.startswith(b"cloudd-cli inspect: no agent") for f in frames)
    assert len(agent.calls) >= 2


def test_watch_on_a_terminal_redraws_in_colour(agent: Agent, sock: Path) -> None:
    agent.register("inspect", answer_doc)
    agent.start()
    leader, follower = os.openpty()
    proc = spawn("inspect", "--watch", "--interval", "0.05", "--socket", str(sock),
                 stdout=follower)
    os.close(follower)
    try:
        out = Lines(os.fdopen(leader, "rb", buffering=0))
        seen = out.wait_for(lambda s: s.count(b"\x1b[H\x1b[2J") >= 2
                            and s.count(b"quorum") >= 2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        proc.kill()
        proc.wait()
    assert b"\x1b[32malive" in seen


def test_no_color_on_a_terminal_when_asked(agent: Agent, sock: Path) -> None:
    agent.register("inspect", answer_doc)
    agent.start()
    leader, follower = os.openpty()
    proc = spawn("inspect", "--socket", str(sock), stdout=follower,
                 env={**os.environ, "NO_COLOR": "1"})
    os.close(follower)
    try:
        seen = Lines(os.fdopen(leader, "rb", buffering=0)).wait_for(lambda s: b"pm2" in s)
        assert proc.wait(20) == 0
    finally:
        proc.kill()
        proc.wait()
    assert b"alive" in seen and b"\x1b[" not in seen


def test_watch_json_prints_one_document_per_line(agent: Agent, sock: Path) -> None:
    agent.register("inspect", answer_doc)
    agent.start()
    proc = spawn("inspect", "shop", "--watch", "--json", "--interval", "0.05",
                 "--socket", str(sock))
    try:
        seen = Lines(proc.stdout).wait_for(lambda s: s.count(b"\n") >= 2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        proc.kill()
        proc.wait()
    docs = [InspectDoc.from_json(json.loads(ln)) for ln in seen.splitlines()[:2]]
    assert [d.clouds[0].name for d in docs] == ["shop", "shop"]
