"""The local API's client side: one JSON line per request and per answer over a Unix socket.

`cloudd-cli` talks to the agent on its machine through `ApiClient`. A request is
`{"op": NAME, "args": {...}}`; an answer is `{"ok": true, "result": ...}` or
`{"ok": false, "error": "one sentence"}`, and a streaming operation (`--follow`) sends one
answer line per result until the client goes away. The agent's server
(`cloudd.daemon.operator.api`) frames its answers with `encode_line` and refuses requests
longer than `MAX_REQUEST`, so both ends share this module's definitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from cloudd.errors import ClouddError

#: Largest request line the agent accepts, in bytes. Requests are small commands, but an
#: `apply` carries a whole manifest (at most 256 KiB, `cloudd.config.yamlsrc.MAX_MANIFEST_BYTES`),
#: which JSON-escaping may grow up to fourfold: 1 MiB and a little room, nothing more.
MAX_REQUEST = (1 << 20) + 64 * 1024
#: Largest answer line the client reads, in bytes: an inspect document of a big cloud, or a
#: long page of events, fits with room to spare.
MAX_ANSWER = 2**26


class ApiError(ClouddError):
    """A request the agent understood and refused, or an agent that could not be asked; the
    message is one sentence for the operator."""


def encode_line(message: dict[str, Any]) -> bytes:
    """One request or answer as its line on the socket (values JSON cannot hold as `str`)."""
    return json.dumps(message, default=str).encode() + b"\n"


class ApiClient:
    """What `cloudd-cli` uses: one request, one answer (or a stream of answers)."""

    def __init__(self, path: Path, *, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout

    async def call(self, op: str, **args: Any) -> Any:
        async for result in self._request(op, args, stream=False):
            return result
        raise ApiError(f"agent closed the connection without answering {op}")

    def stream(self, op: str, **args: Any) -> AsyncIterator[Any]:
        return self._request(op, args, stream=True)

    async def _request(self, op: str, args: dict[str, Any], *,
                       stream: bool) -> AsyncIterator[Any]:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(self.path), limit=MAX_ANSWER), self.timeout)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise ApiError(f"no agent answers on {self.path}: {e.strerror}") from e
        except PermissionError as e:
            raise ApiError(f"permission denied on {self.path}: run as root") from e
        try:
            # The agent may answer (a refusal) and close before reading: read what it said.
            with contextlib.suppress(ConnectionError):
                writer.write(encode_line({"op": op, "args": args}))
                await writer.drain()
            while True:
                try:
                    line = await (reader.readline() if stream
                                  else asyncio.wait_for(reader.readline(), self.timeout))
                except TimeoutError:
                    raise ApiError(f"the agent did not answer {op} within "
                                   f"{self.timeout:g} s") from None
                if not line:
                    return
                answer = json.loads(line)
                if not answer.get("ok"):
                    raise ApiError(str(answer.get("error")))
                yield answer.get("result")
                if not stream:
                    return
        finally:
            writer.close()
