"""The local API server on a real Unix socket, with a few handlers to call: the fast API tests
and the real-process one (another user refused) both talk to it."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cloudd.client.api import ApiError
from cloudd.daemon.operator.api import ApiServer


@pytest.fixture
def sock_dir():
    # World-traversable, so that a non-root client can reach the socket's own check.
    d = Path(tempfile.mkdtemp(prefix="cloudd-api-"))
    d.chmod(0o755)
    yield d
    for p in d.iterdir():
        p.unlink()
    d.rmdir()


@pytest.fixture
async def server(sock_dir: Path) -> AsyncIterator[ApiServer]:
    srv = ApiServer(sock_dir / "cloudd.sock")

    async def echo(args: dict[str, Any]) -> Any:
        return {"echo": args}

    async def boom(args: dict[str, Any]) -> Any:
        raise RuntimeError("kaput")

    async def refuse(args: dict[str, Any]) -> Any:
        raise ApiError("no such cloud 'x'")

    async def count(args: dict[str, Any]) -> AsyncIterator[Any]:
        for i in range(int(args.get("n", 3))):
            yield i

    srv.register("echo", echo)
    srv.register("boom", boom)
    srv.register("refuse", refuse)
    srv.register_stream("count", count)
    await srv.start()
    yield srv
    await srv.close()
    await srv.close()  # safe twice
