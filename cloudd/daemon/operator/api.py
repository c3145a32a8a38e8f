"""The local API's server: `cloudd-cli` talks to the agent over a Unix socket, in JSON lines.

Only root (or the agent's own user) may connect: the socket is mode 0600 and every connection's
peer credentials (SO_PEERCRED) are checked as well, since a socket's mode alone is not enforced
by every kernel path (e.g. an fd passed along). One request per line:
`{"op": NAME, "args": {...}}`; one answer per line: `{"ok": true, "result": ...}` or
`{"ok": false, "error": "one sentence"}`. A handler may instead stream (`--follow`): it yields
results, each sent as its own line, until the client goes away.

A malformed request gets an error answer and the connection stays usable; nothing a client
sends can stop the agent. The framing, the size limit and `ApiError` are shared with the
client (`cloudd.client.api`), which the command line uses without importing the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from cloudd import log
from cloudd.client.api import MAX_REQUEST, ApiError, encode_line
from cloudd.errors import ClouddError

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
StreamHandler = Callable[[dict[str, Any]], AsyncIterator[Any]]

_log = log.get("api")


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class ApiServer:
    """Serves registered operations on a Unix socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ops: dict[str, Handler] = {}
        self._streams: dict[str, StreamHandler] = {}
        self._server: asyncio.AbstractServer | None = None
        self._allowed_uids = {0, os.geteuid()}

    def register(self, op: str, handler: Handler) -> None:
        self._ops[op] = handler

    def register_stream(self, op: str, handler: StreamHandler) -> None:
        self._streams[op] = handler

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        # Create the socket with no permissions for others from the first instant.
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=MAX_REQUEST + 1
            )
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        try:
            uid = peer_uid(sock)
            if uid not in self._allowed_uids:
                _log.warning("api_refused", uid=uid, reason="not root")
                # Take the request off the wire first, so that closing does not reset the
                # connection under the client before it has read why.
                with contextlib.suppress(TimeoutError, ValueError, asyncio.LimitOverrunError):
                    await asyncio.wait_for(reader.readline(), 1.0)
                await self._send(writer, {"ok": False, "error": "permission denied: root only"})
                return
            while True:
                try:
                    line = await reader.readline()
                except (asyncio.LimitOverrunError, ValueError):
                    await self._send(writer, {"ok": False,
                                              "error": f"request longer than {MAX_REQUEST} bytes"})
                    return
                if not line:
                    return
                if not await self._answer(line, writer):
                    return
        except (ConnectionError, BrokenPipeError):
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, line: bytes, writer: asyncio.StreamWriter) -> bool:
        """Answers one request; False when the connection is done (after a stream)."""
        try:
            request = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            await self._send(writer, {"ok": False, "error": f"request is not JSON: {e}"})
            return True
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            await self._send(writer, {"ok": False,
                                      "error": "request must be an object with a string 'op'"})
            return True
        op, args = request["op"], request.get("args", {})
        if not isinstance(args, dict):
            await self._send(writer, {"ok": False, "error": "'args' must be an object"})
            return True
        if op in self._streams:
            try:
                async for item in self._streams[op](args):
                    await self._send(writer, {"ok": True, "result": item})
            except ApiError as e:
                await self._send(writer, {"ok": False, "error": str(e)})
            return False
        handler = self._ops.get(op)
        if handler is None:
            known = ", ".join(sorted({*self._ops, *self._streams}))
            await self._send(writer, {"ok": False, "error": f"unknown op {op!r} (known: {known})"})
            return True
        try:
            result = await handler(args)
        except ClouddError as e:
            await self._send(writer, {"ok": False, "error": str(e)})
            return True
        except Exception as e:  # a bug in a handler must not take the agent down
            _log.exception("api_handler_failed", op=op)
            await self._send(writer, {"ok": False, "error": f"internal error in {op}: {e}"})
            return True
        await self._send(writer, {"ok": True, "result": result})
        return True

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, answer: dict[str, Any]) -> None:
        writer.write(encode_line(answer))
        await writer.drain()
