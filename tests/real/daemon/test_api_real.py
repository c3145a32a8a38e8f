"""The local API refuses other users: by the socket's mode, and by the peer's credentials when
the mode is opened up by mistake (needs root, to run the client as another user)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cloudd.client.api import ApiClient
from cloudd.daemon.operator.api import ApiServer

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
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[3])})
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        return out.decode()

    # The socket's mode stops them at connect...
    assert "refused: permission denied on" in await run_as_nobody()
    # ...and with the mode opened up by mistake, the peer-credential check still does.
    server.path.chmod(0o666)
    assert "refused: permission denied: root only" in await run_as_nobody()
    assert await ApiClient(server.path).call("echo") == {"echo": {}}
