"""Every helper that runs a command from the loop ends it, however it is left.

The check that matters is the transport: asyncio closes it once it has seen the child exit and
its pipes close. One left open is closed by the garbage collector later, perhaps after its
loop is closed ("Event loop is closed" ignored in `BaseSubprocessTransport.__del__`). The
helpers are hammered with cancellations (one each loop turn, as a TaskGroup's or a timeout's
may come while a helper is already killing its command) and must come back with their
command gone and no transport open.
"""

from __future__ import annotations

import asyncio
import gc
import os
from asyncio.base_subprocess import BaseSubprocessTransport
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from cloudd import children
from cloudd.config.users import User
from cloudd.daemon.leader.fencing import CommandFencer
from cloudd.daemon.node.users import ensure_users
from cloudd.providers import base, probes
from cloudd.providers.appscale import tools
from cloudd.providers.service import ProbeKind, ProbeSpec
from cloudd.providers.slurm import roles
from cloudd.providers.torque import programs
from cloudd.vmctl import images

#: Writes its pid, says something, and hangs: only a kill ends it.
HANG = 'echo $$ > "$0"; echo started; exec sleep 60'


async def _open_transports(pid: int) -> list[BaseSubprocessTransport]:
    """The transports of child `pid` that asyncio has not closed within 2 s (its protocol
    closes one a loop turn after the process's end is seen, which may be after the helper
    returned)."""
    for _ in range(200):
        gc.collect()
        found = [t for t in gc.get_objects() if isinstance(t, BaseSubprocessTransport)
                 and t.get_pid() == pid and not t.is_closing()]
        if not found:
            break
        await asyncio.sleep(0.01)
    return found


async def _gone(pid: int) -> bool:
    """The process `pid` no longer exists (not even as a zombie), within 10 s."""
    for _ in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        await asyncio.sleep(0.05)
    return False


def _assignment(tmp_path: Path) -> base.Assignment:
    return base.Assignment(cloud="batch", node="b-head", role="head", address="10.2.0.1",
                           root=tmp_path / "node", secrets_dir=tmp_path / "secrets")


def _slurm(tmp_path: Path, pidfile: Path) -> Awaitable[object]:
    a = _assignment(tmp_path)
    deadline = asyncio.get_running_loop().time() + 60
    return roles._run(a, deadline, "sh", "-c", HANG, str(pidfile))


def _torque(tmp_path: Path, pidfile: Path) -> Awaitable[object]:
    return programs.run(_assignment(tmp_path), "b-head", ("sh", "-c", HANG, str(pidfile)),
                        within=60)


def _fence(tmp_path: Path, pidfile: Path) -> Awaitable[object]:
    return CommandFencer({"h1": ["sh", "-c", f"{HANG} >&2", str(pidfile)]}).fence("h1")


def _appscale(tmp_path: Path, pidfile: Path) -> Awaitable[object]:
    return tools.run(tools.ToolsCommand(verb=tools.Verb.UP, argv=("sh", "-c", HANG, str(pidfile)),
                                        cwd=tmp_path, env={"PATH": os.environ["PATH"]},
                                        within=60, must_succeed=False))


def _users(tmp_path: Path, pidfile: Path) -> Awaitable[object]:
    (tmp_path / "etc").mkdir()  # no accounts yet: `groupadd` comes first, run by the prefix
    return ensure_users((User("alice", 1001, 1001),), root=tmp_path,
                        exec_prefix=("sh", "-c", HANG, str(pidfile)))


HELPERS: dict[str, Callable[[Path, Path], Awaitable[object]]] = {
    "providers.base.run_command": lambda _, pid: base.run_command(
        ("sh", "-c", HANG, str(pid)), within=60),
    "providers.probes exec": lambda _, pid: probes.run_probe(ProbeSpec(
        kind=ProbeKind.EXEC, argv=("sh", "-c", HANG, str(pid)), timeout=60)),
    "providers.slurm.roles._run": _slurm,
    "providers.torque.programs.run": _torque,
    "providers.appscale.tools.run": _appscale,
    "daemon.leader.fencing": _fence,
    "daemon.node.users": _users,
    "vmctl.images._run": lambda _, pid: images._run("sh", "-c", HANG, str(pid)),
}


@pytest.mark.parametrize("helper", sorted(HELPERS))
async def test_a_helper_cancelled_again_and_again_ends_its_command(tmp_path: Path,
                                                                   helper: str) -> None:
    pidfile = tmp_path / "pid"
    task = asyncio.ensure_future(HELPERS[helper](tmp_path, pidfile))
    for _ in range(400):  # the command has started
        if pidfile.exists() and pidfile.read_text().strip():
            break
        await asyncio.sleep(0.025)
    pid = int(pidfile.read_text())
    turns = 0
    while not task.done():
        task.cancel()
        turns += 1
        await asyncio.sleep(0)
    assert task.cancelled()
    assert turns > 1  # the helper was cancelled while it ended its command, too
    assert await _open_transports(pid) == []
    assert await _gone(pid)


async def test_a_block_left_normally_reaps_what_it_started(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        "sh", "-c", 'sleep 60 & echo $! > "$0"; echo started; wait', str(tmp_path / "pid"),
        stdout=asyncio.subprocess.PIPE, start_new_session=True)
    async with children.ended(proc):
        assert proc.stdout is not None
        assert await proc.stdout.readline() == b"started\n"
    assert proc.returncode is not None  # killed, its session with it
    assert await _open_transports(proc.pid) == []
    assert await _gone(int((tmp_path / "pid").read_text()))


async def test_a_finished_command_is_left_as_it_ended(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        "sh", "-c", "echo done; exit 3", stdout=asyncio.subprocess.PIPE,
        start_new_session=True)
    async with children.ended(proc):
        out, _ = await proc.communicate()
    assert (out, proc.returncode) == (b"done\n", 3)
    assert await _open_transports(proc.pid) == []


async def test_pipes_held_by_what_left_the_session_do_not_hold_the_reaping(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A daemon started by the command, in a session of its own, keeps the command's stdout:
    # the kill cannot reach it, and reading to the pipe's end would wait as long as it lives.
    monkeypatch.setattr(children, "PIPES_WITHIN", 0.5)
    daemon = tmp_path / "daemon"
    proc = await asyncio.create_subprocess_exec(
        "sh", "-c", 'setsid sh -c \'echo $$ > "$0"; exec sleep 60\' "$0" & echo started; '
        'exec sleep 60', str(daemon), stdout=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        task = asyncio.ensure_future(_read_then_end(proc))
        await asyncio.sleep(0)  # it runs: a task cancelled before its start never reaps
        for _ in range(400):
            if daemon.exists() and daemon.read_text().strip():
                break
            await asyncio.sleep(0.025)
        task.cancel()
        async with asyncio.timeout(30):  # bounded by PIPES_WITHIN, not by the daemon's life
            with pytest.raises(asyncio.CancelledError):
                await task
        assert proc.returncode is not None
        assert await _open_transports(proc.pid) == []
    finally:
        os.kill(int(daemon.read_text()), 9)


async def _read_then_end(proc: asyncio.subprocess.Process) -> None:
    async with children.ended(proc):
        assert proc.stdout is not None
        await proc.stdout.readline()
        await asyncio.sleep(3600)



async def test_appscale_tools_keep_what_they_said_when_an_escaped_process_holds_the_pipe(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The tools exit; something they started in a session of its own keeps their output pipe:
    # it is closed on this side after PIPES_WITHIN, and what the tools said is kept.
    monkeypatch.setattr(children, "PIPES_WITHIN", 0.5)
    pids = tmp_path / "pids"
    try:
        async with asyncio.timeout(30):  # bounded by PIPES_WITHIN, not by the daemon's life
            result = await tools.run(tools.ToolsCommand(
                verb=tools.Verb.UP, argv=("sh", "-c", 'setsid sleep 60 & echo $! $$ > "$0"; '
                                          'echo said; exit 3', str(pids)),
                cwd=tmp_path, env={"PATH": os.environ["PATH"]}, within=2,
                must_succeed=False))
        assert result.output == "said\n"
        assert await _open_transports(int(pids.read_text().split()[1])) == []
    finally:
        os.kill(int(pids.read_text().split()[0]), 9)
