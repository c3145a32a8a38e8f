"""Health probes of a service (exec, TCP connect, HTTP GET), asyncio only, each under a timeout.

A probe never raises: every failure (refused, timed out, bad status, missing binary) becomes a
failed `ProbeOutcome` with a one-line reason, because a failure is an event for the policy, not
an error of the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from cloudd import children
from cloudd.providers.service import ProbeKind, ProbeSpec


@dataclass(frozen=True)
class ProbeOutcome:
    ok: bool
    detail: str = ""


async def run_probe(spec: ProbeSpec) -> ProbeOutcome:
    """Run `spec` once; a run longer than `spec.timeout` seconds fails."""
    runner = {ProbeKind.EXEC: _exec, ProbeKind.TCP: _tcp, ProbeKind.HTTP: _http}[spec.kind]
    try:
        # In this task, not wait_for's: a cancellation during the run waits for its end.
        async with asyncio.timeout(spec.timeout):
            return await runner(spec)
    except TimeoutError:
        return ProbeOutcome(False, f"{spec.kind.value} probe timed out after {spec.timeout:g}s")
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        return ProbeOutcome(False, f"{spec.kind.value} probe of {_target(spec)}: {why}")


def _target(spec: ProbeSpec) -> str:
    if spec.kind is ProbeKind.TCP:
        return f"{spec.host}:{spec.port}"
    return spec.url if spec.kind is ProbeKind.HTTP else (spec.argv[0] if spec.argv else "?")


async def _exec(spec: ProbeSpec) -> ProbeOutcome:
    proc = await asyncio.create_subprocess_exec(
        *spec.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
    # Timed out (the timeout cancels us): a hung check must not outlive its probe.
    async with children.ended(proc):
        code = await proc.wait()
    return ProbeOutcome(code == 0, "" if code == 0 else f"{spec.argv[0]} exited with {code}")


async def _tcp(spec: ProbeSpec) -> ProbeOutcome:
    _reader, writer = await asyncio.open_connection(spec.host, spec.port)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return ProbeOutcome(True)


async def _http(spec: ProbeSpec) -> ProbeOutcome:
    url = urlsplit(spec.url)
    if url.scheme not in ("http", "https") or not url.hostname:
        return ProbeOutcome(False, f"http probe: not an http(s) URL: {spec.url!r}")
    tls = ssl.create_default_context() if url.scheme == "https" else None
    port = url.port or (443 if tls else 80)
    reader, writer = await asyncio.open_connection(url.hostname, port, ssl=tls)
    try:
        target = (url.path or "/") + (f"?{url.query}" if url.query else "")
        host = url.netloc.rsplit("@", 1)[-1]
        writer.write(f"GET {target} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: cloudd-probe\r\n"
                     "Connection: close\r\n\r\n".encode("latin-1"))
        await writer.drain()
        line = (await reader.readline()).decode("latin-1").strip()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    parts = line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return ProbeOutcome(False, f"http probe: not an HTTP status line: {line[:80]!r}")
    status = int(parts[1])
    if 200 <= status < 400:
        return ProbeOutcome(True)
    return ProbeOutcome(False, f"http probe: status {status}")


async def probe_loop(spec: ProbeSpec, report: Callable[[ProbeOutcome], None], *,
                     sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
    """Run `spec` every `spec.period` seconds and hand each outcome to `report`, until cancelled.

    Liveness needs `failure_threshold` failures in a row; the policy counts them, so every
    outcome is reported, not only changes.
    """
    while True:
        report(await run_probe(spec))
        await sleep(spec.period)
