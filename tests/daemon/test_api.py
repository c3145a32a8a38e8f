"""The local API on a real Unix socket: answers, errors, and refusal of other users."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cloudd.client.api import MAX_REQUEST, ApiClient, ApiError
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


CLIENT = """
import asyncio, sys
from pathlib import Path
from cloudd.client.api import ApiClient, ApiError
try:
    print(asyncio.run(ApiClient(Path(sys.argv[1])).call("echo")))
except ApiError as e:
    print("refused:", e)
"""


def _as_nobody() -> None:
    os.setgid(65534)
    os.setuid(65534)


@pytest.mark.netns  # needs root to switch to another user
async def test_other_users_are_refused(server: ApiServer) -> None:
    async def run_as_nobody() -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLIENT, str(server.path),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=_as_nobody,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        return out.decode()

    # The socket's mode stops them at connect...
    assert "refused: permission denied on" in await run_as_nobody()
    # ...and with the mode opened up by mistake, the peer-credential check still does.
    server.path.chmod(0o666)
    assert "refused: permission denied: root only" in await run_as_nobody()
    assert await ApiClient(server.path).call("echo") == {"echo": {}}
