"""Probes against real sockets and real processes on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import pytest

from cloudd.providers.probes import ProbeOutcome, probe_loop, run_probe
from cloudd.providers.procstate import proc_start_time
from cloudd.providers.service import ProbeKind, ProbeSpec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], object]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], object]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> int:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)  # type: ignore[arg-type]
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def http_reply(status_line: bytes) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        assert request.startswith(b"GET /health?x=1 HTTP/1.0\r\n")
        writer.write(status_line + b"\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()
    return handle


async def test_tcp_probe_open_and_closed(serve) -> None:
    port = await serve(lambda r, w: w.close())
    assert (await run_probe(ProbeSpec(ProbeKind.TCP, port=port))).ok
    closed = await run_probe(ProbeSpec(ProbeKind.TCP, port=free_port()))
    assert not closed.ok and closed.detail.endswith(": Connection refused")


@pytest.mark.parametrize(("line", "ok", "detail"), [
    (b"HTTP/1.1 200 OK", True, ""),
    (b"HTTP/1.0 302 Found", True, ""),
    (b"HTTP/1.1 503 Service Unavailable", False, "status 503"),
    (b"SSH-2.0-OpenSSH", False, "not an HTTP status line"),
])
async def test_http_probe_status(serve, line: bytes, ok: bool, detail: str) -> None:
    port = await serve(http_reply(line))
    out = await run_probe(ProbeSpec(ProbeKind.HTTP, url=f"http://127.0.0.1:{port}/health?x=1"))
    assert out.ok is ok and detail in out.detail


async def test_http_probe_refuses_non_http_url() -> None:
    out = await run_probe(ProbeSpec(ProbeKind.HTTP, url="ftp://127.0.0.1/"))
    assert not out.ok and "not an http(s) URL" in out.detail


async def test_probe_times_out_on_a_silent_server(serve) -> None:
    hold = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hold.wait()
        writer.close()

    port = await serve(silent)
    out = await run_probe(ProbeSpec(ProbeKind.HTTP, url=f"http://127.0.0.1:{port}/",
                                    timeout=0.2))
    hold.set()
    assert not out.ok and "timed out after 0.2s" in out.detail


async def test_exec_probe(tmp_path) -> None:
    assert (await run_probe(ProbeSpec(ProbeKind.EXEC, argv=("true",)))).ok
    out = await run_probe(ProbeSpec(ProbeKind.EXEC, argv=("sh", "-c", "exit 3")))
    assert not out.ok and out.detail == "sh exited with 3"
    out = await run_probe(ProbeSpec(ProbeKind.EXEC, argv=(str(tmp_path / "nope"),)))
    assert not out.ok and out.detail.endswith("nope: No such file or directory")


async def test_exec_probe_timeout_kills_the_check(tmp_path) -> None:
    pidfile = tmp_path / "pid"
    out = await run_probe(ProbeSpec(ProbeKind.EXEC, timeout=0.3,
                                    argv=("sh", "-c", f"echo $$ > {pidfile}; exec sleep 60")))
    assert not out.ok and "timed out" in out.detail
    pid = int(pidfile.read_text())
    assert proc_start_time(pid) is None  # gone, not left running


async def test_probe_loop_reports_every_run_until_cancelled(serve) -> None:
    port = await serve(lambda r, w: w.close())
    seen: list[ProbeOutcome] = []
    enough = asyncio.Event()

    def report(outcome: ProbeOutcome) -> None:
        seen.append(outcome)
        if len(seen) == 3:
            enough.set()

    task = asyncio.ensure_future(probe_loop(ProbeSpec(ProbeKind.TCP, port=port, period=0.01),
                                            report))
    await asyncio.wait_for(enough.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert all(o.ok for o in seen)
