"""Running TORQUE's programs on a node: its home made once, its server database, its clients.

The impure side of the TORQUE roles. Every program runs through the node's `exec_prefix`
(its namespaces, in tests) with the node's server in `PBS_DEFAULT`, and within a bounded
time: a hung qmgr or pbsnodes fails the one action that ran it, never the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import stat
from collections.abc import Sequence
from pathlib import Path

from cloudd import children, log
from cloudd.errors import PermanentError, TemporaryError
from cloudd.providers import rolefiles
from cloudd.providers.base import ACT_WITHIN, Assignment
from cloudd.providers.torque.layout import PREFIX, Home, environment, program

_log = log.get("providers.torque")
#: Seconds a client command (qmgr, pbsnodes, momctl) may take: within the node's bound on a
#: whole action, so that a hung client fails with its own sentence.
CLIENT_TIMEOUT = ACT_WITHIN * 0.75
#: Seconds `pbs_server -t create` may take to write its first database.
CREATE_TIMEOUT = 30.0


def installed() -> None:
    """Refuse, with what to do, when this machine has no TORQUE build."""
    if not Path(program("sbin", "pbs_server")).exists():
        raise PermanentError(f"TORQUE is not installed in {PREFIX}: build it there with "
                             "scripts/build-torque.sh TARBALL")


def seed_home(template: Path, home: Path) -> int:
    """Give `home` every folder and file of TORQUE's pristine home that it lacks.

    What is there already (cloudd's rendered files, the daemons' own state) is kept; nothing
    is followed through a symbolic link. Returns how many entries were created."""
    made = 0
    for folder, dirs, files in os.walk(template):
        rel = Path(folder).relative_to(template)
        target = home / rel
        for name in dirs:
            src, dst = Path(folder) / name, target / name
            if dst.is_symlink():
                raise PermanentError(f"a symbolic link stands where TORQUE's folder {dst} goes")
            if not dst.exists():
                dst.mkdir()
                shutil.copystat(src, dst)
                made += 1
        for name in files:
            src, dst = Path(folder) / name, target / name
            if not dst.exists() and not dst.is_symlink():
                shutil.copy2(src, dst, follow_symlinks=False)
                made += 1
    return made


async def run(a: Assignment, head: str, argv: Sequence[str], *,
              within: float = CLIENT_TIMEOUT, stdin: str | None = None) -> tuple[int, str]:
    """Run one TORQUE program on the node (with `stdin` as its input, if given); (exit
    status, output). Killed after `within`."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", **dict(environment(head))}
    proc = await asyncio.create_subprocess_exec(
        *a.exec_prefix, *argv,
        stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
        start_new_session=True)
    async with children.ended(proc):  # past `within` or cancelled: its session is killed
        try:
            async with asyncio.timeout(within):
                out, _ = await proc.communicate(None if stdin is None else stdin.encode())
        except TimeoutError:
            raise TemporaryError(f"{Path(argv[0]).name} on {a.node} took more than "
                                 f"{within:g} s", delay=5.0) from None
    return proc.returncode or 0, out.decode(errors="replace").strip()


async def client(a: Assignment, head: str, name: str, *args: str, kind: str = "bin",
                 stdin: str | None = None) -> str:
    """A TORQUE client's output (`kind`: its folder of PREFIX; `stdin`, its input); its
    failure as one sentence (TemporaryError)."""
    code, out = await run(a, head, (program(kind, name), *args), stdin=stdin)
    if code != 0:
        last = out.splitlines()[-1] if out else f"exit status {code}"
        raise TemporaryError(f"{name} {' '.join(args)} failed on {a.node}: {last}", delay=5.0)
    return out


async def create_server_db(a: Assignment, home: Home) -> bool:
    """`pbs_server -t create`, once: the head's empty server database. False if it existed.

    The server is run in the foreground just long enough to write its database, then
    stopped with SIGTERM (pbs_server saves and exits); the supervisor starts it for real."""
    if home.server_db.exists():
        return False
    argv = (*a.exec_prefix, program("sbin", "pbs_server"), "-t", "create", "-f", "-F",
            "-d", str(home.home), "-H", a.node)
    out = rolefiles.open_log(home.log / "pbs_server-create.out")
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"},
            start_new_session=True)
    finally:
        os.close(out)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CREATE_TIMEOUT
    # A stop cut short (cancelled again, or past its bound) ends in a kill, reaped.
    async with children.ended(proc):
        try:
            while not _written(home.server_db):
                if proc.returncode is not None or loop.time() > deadline:
                    raise TemporaryError(f"pbs_server -t create wrote no database on "
                                         f"{a.node}; see {home.log / 'pbs_server-create.out'}",
                                         delay=10.0)
                await asyncio.sleep(0.2)
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CREATE_TIMEOUT):
                        await proc.wait()
    _log.info("torque.server_created", node=a.node, home=str(home.home))
    return True


def _written(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode) and path.lstat().st_size > 0
    except FileNotFoundError:
        return False
