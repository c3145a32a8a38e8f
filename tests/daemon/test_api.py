"""The local API on a real Unix socket: answers and errors (the refusal of other users needs
root: tests/real/daemon/test_api_real.py)."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from cloudd.client.api import MAX_REQUEST, ApiClient, ApiError
from cloudd.daemon.operator.api import ApiServer


async def raw(path: Path, payload: bytes) -> list[dict[str, Any]]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(payload)
    await writer.drain()
    writer.write_eof()
    out = [json.loads(line) for line in (await asyncio.wait_for(reader.read(), 10)).splitlines()]
    writer.close()
    return out


async def test_socket_is_private(server: ApiServer) -> None:
    mode = stat.S_IMODE(server.path.stat().st_mode)
    assert mode == 0o600


async def test_call_and_stream(server: ApiServer) -> None:
    client = ApiClient(server.path)
    assert await client.call("echo", a=1) == {"echo": {"a": 1}}
    assert [i async for i in client.stream("count", n=4)] == [0, 1, 2, 3]


async def test_errors_are_answers_and_the_server_stays_up(server: ApiServer) -> None:
    client = ApiClient(server.path)
    with pytest.raises(ApiError, match="no such cloud 'x'"):
        await client.call("refuse")
    with pytest.raises(ApiError, match="internal error in boom: kaput"):
        await client.call("boom")
    with pytest.raises(ApiError, match="unknown op 'nope'"):
        await client.call("nope")
    answers = await raw(server.path, b"not json\n[1,2]\n{\"op\": \"echo\", \"args\": 3}\n"
                                     b"{\"op\": \"echo\"}\n")
    assert [a["ok"] for a in answers] == [False, False, False, True]
    assert answers[0]["error"].startswith("request is not JSON")
    assert answers[1]["error"] == "request must be an object with a string 'op'"
    assert answers[2]["error"] == "'args' must be an object"
    too_big = await raw(server.path, b"x" * (MAX_REQUEST + 10) + b"\n")
    assert too_big == [{"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"}]
    assert await client.call("echo") == {"echo": {}}


async def test_no_agent_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ApiError, match="no agent answers on"):
        await ApiClient(tmp_path / "absent.sock").call("inspect")
