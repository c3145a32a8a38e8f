"""The supervisor with real processes: small Python programs written into tmp_path.

Every wait is bounded (`wait_for(..., within=...)` or `until()`); nothing asserts on time.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import structlog

from cloudd.errors import ConfigError
from cloudd.providers import procstate
from cloudd.providers.policy import PolicyConfig, State
from cloudd.providers.service import ProbeKind, ProbeSpec, ServiceSpec
from cloudd.providers.supervisor import ServiceStatus, Supervisor

FAST = PolicyConfig(backoff_base=0.3, backoff_max=1.0, jitter=0.1, stable_after=30.0,
                    max_failures=3, failure_window=60.0, fatal_cooldown=1.0)
WAIT = 20.0


def program(tmp_path: Path, name: str, body: str) -> tuple[str, ...]:
    """Write a Python program; it appends its pid to `<name>.starts` first thing."""
    path = tmp_path / f"{name}.py"
    starts = tmp_path / f"{name}.starts"
    path.write_text(f"import os, signal, socket, sys, time\n"
                    f"with open({str(starts)!r}, 'a') as f: f.write(f'{{os.getpid()}}\\n')\n"
                    + textwrap.dedent(body))
    return (sys.executable, str(path))


def starts(tmp_path: Path, name: str) -> list[int]:
    path = tmp_path / f"{name}.starts"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    return procstate.proc_start_time(pid) is not None


async def until(check: Callable[[], bool], within: float = WAIT) -> None:
    # Polls files and /proc written by other processes: there is nothing to await instead.
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SLEEPER = "time.sleep(3600)\n"


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Callable[..., Supervisor]]:
    made: list[Supervisor] = []

    def build(specs: list[ServiceSpec], **kw: object) -> Supervisor:
        sup = Supervisor(specs, state_dir=tmp_path / "state", defaults=FAST, **kw)  # type: ignore[arg-type]
        made.append(sup)
        return sup

    yield build
    for sup in made:
        await sup.stop(within=10)
        sup.detach()


def running(s: ServiceStatus) -> bool:
    return s.state is State.RUNNING


async def test_start_runs_and_stop_stops(make, tmp_path) -> None:
    sup = make([ServiceSpec("a", program(tmp_path, "a", SLEEPER), start_grace=0.2)])
    await sup.start()
    st = await sup.wait_for("a", running, within=WAIT)
    await until(lambda: starts(tmp_path, "a") == [st.pid])
    assert st.pid is not None and alive(st.pid)
    assert os.getpgid(st.pid) == st.pid and os.getsid(st.pid) == st.pid  # own session
    saved = procstate.load(tmp_path / "state")["a"]
    assert saved.pid == st.pid and saved.state == "RUNNING"
    assert saved.start_time == procstate.proc_start_time(st.pid)
    await sup.stop()
    assert sup.status()["a"].state is State.STOPPED and not alive(st.pid)


async def test_exiting_service_backs_off_to_fatal_and_is_retried(make, tmp_path) -> None:
    sup = make([ServiceSpec("x", program(tmp_path, "x", "sys.exit(3)\n"), start_grace=0.5)])
    await sup.start()
    await sup.wait_for("x", lambda s: s.state is State.BACKOFF, within=WAIT)
    st = await sup.wait_for("x", lambda s: s.state is State.FATAL, within=WAIT)
    assert st.fatal_count == 1 and "exited with status 3 while starting" in st.last_error
    assert len(starts(tmp_path, "x")) == 3  # max_failures, then it rests: no busy loop
    st = await sup.wait_for("x", lambda s: s.fatal_count == 2, within=WAIT)
    assert len(starts(tmp_path, "x")) == 6 and st.starts == 6
    await sup.stop(["x"])
    assert len(starts(tmp_path, "x")) == 6


async def test_kill_9_restarts(make, tmp_path) -> None:
    sup = make([ServiceSpec("a", program(tmp_path, "a", SLEEPER), start_grace=0.2)])
    await sup.start()
    first = (await sup.wait_for("a", running, within=WAIT)).pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    st = await sup.wait_for("a", lambda s: running(s) and s.pid != first, within=WAIT)
    await until(lambda: starts(tmp_path, "a") == [first, st.pid])
    assert st.starts == 2
    assert st.last_error == "killed by signal 9"


GROUP = """
child = os.fork()
if child == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(sys.argv[1], 'w') as f: f.write(str(os.getpid()))
    time.sleep(3600)
    os._exit(0)
time.sleep(3600)
"""


async def test_stop_kills_the_whole_group_even_a_child_ignoring_term(make, tmp_path) -> None:
    childfile = tmp_path / "child.pid"
    argv = (*program(tmp_path, "g", GROUP), str(childfile))
    sup = make([ServiceSpec("g", argv, start_grace=0.2, stop_grace=0.5)])
    await sup.start()
    leader = (await sup.wait_for("g", running, within=WAIT)).pid
    await until(lambda: childfile.exists() and childfile.read_text() != "")
    child = int(childfile.read_text())
    assert alive(child) and os.getsid(child) == leader
    await sup.stop()
    assert not alive(leader) and not alive(child)


async def test_stop_sends_a_service_one_term_not_one_per_way_it_is_reached(make, tmp_path) -> None:
    # The main process is both the group's leader and a member of its session: a TERM by
    # each way ran a handler twice (a flaky "stop app" written twice by the test below).
    log = tmp_path / "terms.log"
    argv = program(tmp_path, "t", f"""
        def term(*_):
            open({str(log)!r}, 'a').write('term\\n')
        signal.signal(signal.SIGTERM, term)
        open({str(log)!r}, 'a').write('up\\n')
        while not open({str(log)!r}).read().count('term'):
            time.sleep(0.01)
        time.sleep(0.5)  # any second TERM arrives well within this
        """)
    sup = make([ServiceSpec("t", argv, start_grace=0.1, stop_grace=5.0)])
    await sup.start()
    await sup.wait_for("t", running, within=WAIT)
    await until(lambda: log.exists() and "up" in log.read_text())
    await sup.stop()
    assert log.read_text().splitlines() == ["up", "term"]


async def test_dependencies_start_in_order_and_stop_in_reverse(make, tmp_path) -> None:
    port = free_port()
    log = tmp_path / "order.log"
    db = program(tmp_path, "db", f"""
        def bye(*_):
            open({str(log)!r}, 'a').write('stop db\\n'); sys.exit(0)
        signal.signal(signal.SIGTERM, bye)
        time.sleep(0.5)  # slow to open its port: dependents must wait for readiness
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(('127.0.0.1', {port})); s.listen()
        while True: s.accept()[0].close()
        """)
    app = program(tmp_path, "app", f"""
        def bye(*_):
            open({str(log)!r}, 'a').write('stop app\\n'); sys.exit(0)
        signal.signal(signal.SIGTERM, bye)
        socket.create_connection(('127.0.0.1', {port})).close()  # raises if db is not up
        open({str(log)!r}, 'a').write('app saw db\\n')
        time.sleep(3600)
        """)
    ready = ProbeSpec(ProbeKind.TCP, port=port, period=0.05, timeout=1.0)
    sup = make([ServiceSpec("app", app, depends_on=("db",), start_grace=0.1),
                ServiceSpec("db", db, start_grace=0.1, readiness=ready)])
    await sup.start()
    await sup.wait_for("app", running, within=WAIT)
    await until(lambda: log.exists() and "app saw db" in log.read_text())
    assert sup.status()["db"].ready and sup.status()["db"].starts == 1
    await sup.stop()
    assert log.read_text().splitlines() == ["app saw db", "stop app", "stop db"]


def test_bad_dependencies_are_refused_with_one_message(tmp_path) -> None:
    a = ServiceSpec("a", ("true",), depends_on=("b",))
    b = ServiceSpec("b", ("true",), depends_on=("a",))
    with pytest.raises(ConfigError, match=r"a.depends_on: unknown service 'zz'"):
        Supervisor([ServiceSpec("a", ("true",), depends_on=("zz",))], state_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"dependency cycle: a -> b -> a"):
        Supervisor([a, b], state_dir=tmp_path)
    assert not (tmp_path / "services.json").exists()


@pytest.fixture
def shared() -> Iterator[Path]:
    """pytest's tmp_path sits in a 0700 directory: `nobody` needs a place it can reach."""
    path = Path(tempfile.mkdtemp(prefix="cloudd-h6-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch user")
async def test_runs_as_nobody(make, shared: Path) -> None:
    out = shared / "who"
    body = "open(sys.argv[1], 'w').write(f'{os.getuid()} {os.getgid()} {os.getgroups()}')\n"
    argv = (*program(shared, "n", body + SLEEPER), str(out))
    sup = make([ServiceSpec("n", argv, user="nobody", start_grace=0.2, cwd=str(shared))])
    await sup.start()
    st = await sup.wait_for("n", running, within=WAIT)
    await until(lambda: out.exists() and out.read_text() != "")
    assert out.read_text() == "65534 65534 [65534]"
    await until(lambda: starts(shared, "n") == [st.pid])
    await sup.stop()


async def test_spawn_errors_are_recorded_not_raised(make, tmp_path) -> None:
    sup = make([ServiceSpec("nobin", (str(tmp_path / "missing"),)),
                ServiceSpec("nouser", ("true",), user="no-such-user-h6")])
    await sup.start()
    a = await sup.wait_for("nobin", lambda s: s.state is State.FATAL, within=WAIT)
    b = await sup.wait_for("nouser", lambda s: s.state is State.FATAL, within=WAIT)
    assert "No such file or directory" in a.last_error and a.pid is None
    assert "no such user 'no-such-user-h6'" in b.last_error


async def test_liveness_failure_restarts_readiness_only_reports(make, tmp_path) -> None:
    flag, ready = tmp_path / "live", tmp_path / "ready"
    flag.touch()
    ready.touch()
    live = ProbeSpec(ProbeKind.EXEC, argv=("test", "-e", str(flag)), period=0.05,
                     failure_threshold=2)
    readiness = ProbeSpec(ProbeKind.EXEC, argv=("test", "-e", str(ready)), period=0.05)
    sup = make([ServiceSpec("s", program(tmp_path, "s", SLEEPER), start_grace=0.1,
                            stop_grace=1.0, liveness=live, readiness=readiness)])
    await sup.start()
    first = (await sup.wait_for("s", lambda s: running(s) and s.ready, within=WAIT)).pid
    ready.unlink()
    st = await sup.wait_for("s", lambda s: not s.ready, within=WAIT)
    assert st.state is State.RUNNING and st.pid == first
    ready.touch()
    flag.unlink()
    await sup.wait_for("s", lambda s: s.pid not in (None, first), within=WAIT)
    flag.touch()
    st = await sup.wait_for("s", lambda s: running(s) and s.ready, within=WAIT)
    await until(lambda: len(starts(tmp_path, "s")) == 2)
    assert not alive(first) and st.starts == 2


async def test_reload_sends_sighup_or_runs_the_command(make, tmp_path) -> None:
    hups = tmp_path / "hups"
    body = f"""
        signal.signal(signal.SIGHUP, lambda *_: open({str(hups)!r}, 'a').write('hup\\n'))
        open({str(hups)!r}, 'a').write('armed\\n')
        while True: time.sleep(1)
        """
    cmd = ("sh", "-c", f"echo cmd >> {hups}")
    sup = make([ServiceSpec("h", program(tmp_path, "h", body), start_grace=0.1,
                            reload_argv=()),
                ServiceSpec("c", program(tmp_path, "c", SLEEPER), start_grace=0.1,
                            reload_argv=cmd),
                ServiceSpec("r", program(tmp_path, "r", SLEEPER), start_grace=0.1)])
    await sup.start()
    for name in "hcr":
        await sup.wait_for(name, running, within=WAIT)
    await until(lambda: hups.exists() and "armed" in hups.read_text())
    await sup.reload("h")
    await until(lambda: hups.exists() and "hup" in hups.read_text())
    await sup.reload("c")
    assert "cmd" in hups.read_text()
    first = sup.status()["r"].pid
    await sup.reload("r")  # no way to reload: restart
    await sup.wait_for("r", lambda s: running(s) and s.pid != first, within=WAIT)
    assert sup.status()["h"].starts == 1


AGENT = """
import asyncio, json, sys
from pathlib import Path
from cloudd.providers.policy import PolicyConfig
from cloudd.providers.service import ServiceSpec
from cloudd.providers.supervisor import Supervisor

async def main():
    specs = [ServiceSpec(n, tuple(a), start_grace=0.2, depends_on=tuple(d))
             for n, a, d in json.loads(sys.argv[2])]
    sup = Supervisor(specs, state_dir=Path(sys.argv[1]))
    await sup.start()
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_services_survive_agent_kill_9_and_are_readopted(tmp_path) -> None:
    state = tmp_path / "state"
    specs = [("a", program(tmp_path, "a", SLEEPER), []),
             ("b", program(tmp_path, "b", SLEEPER), ["a"])]
    script = tmp_path / "agent.py"
    script.write_text(AGENT)

    def agent() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, str(script), str(state), json.dumps(specs)],
                                stdout=subprocess.DEVNULL, stderr=open(tmp_path / "agent.log",
                                                                       "ab"))

    def saved() -> dict[str, procstate.ProcRecord]:
        try:
            return procstate.load(state)
        except (procstate.StateFileError, FileNotFoundError):
            return {}

    def all_running() -> bool:
        recs = saved()
        return len(recs) == 2 and all(r.state == "RUNNING" for r in recs.values())

    first = agent()
    try:
        await until(all_running)
        pids = {n: r.pid for n, r in saved().items()}
        first.kill()
        first.wait(timeout=WAIT)
        assert all(alive(p) for p in pids.values() if p)  # the services outlived their agent
        launched = time.time_ns()
        second = agent()
        try:
            # written after the launch: what the second agent saw, not the first one's file
            await until(lambda: (state / "services.json").stat().st_mtime_ns > launched
                        and all_running())
            assert {n: r.pid for n, r in saved().items()} == pids  # adopted, not restarted
            assert len(starts(tmp_path, "a")) == 1 and len(starts(tmp_path, "b")) == 1
            # the new agent watches the adopted (non-child) process: kill -9 -> restarted
            os.kill(pids["a"], signal.SIGKILL)  # type: ignore[arg-type]
            await until(lambda: all_running() and saved()["a"].pid != pids["a"])
            await until(lambda: len(starts(tmp_path, "a")) == 2)
            assert len(starts(tmp_path, "b")) == 1 and alive(pids["b"])  # type: ignore[arg-type]
        finally:
            second.kill()
            second.wait(timeout=WAIT)
    finally:  # the first agent (if a wait failed early), then every copy ever started
        first.kill()
        first.wait(timeout=WAIT)
        for pid in starts(tmp_path, "a") + starts(tmp_path, "b"):
            if alive(pid):
                os.killpg(pid, signal.SIGKILL)


async def test_dead_service_of_a_dead_agent_is_started_once(tmp_path, make) -> None:
    # The record names a pid that is now someone else's (or nobody's): start afresh, once.
    procstate.save(tmp_path / "state", {"a": procstate.ProcRecord(
        "a", "RUNNING", pid=os.getpid(), start_time=1, starts=4, fatal_count=1)})
    sup = make([ServiceSpec("a", program(tmp_path, "a", SLEEPER), start_grace=0.1)])
    await sup.start()
    st = await sup.wait_for("a", running, within=WAIT)
    assert st.pid != os.getpid() and st.starts == 5 and st.fatal_count == 1
    assert len(starts(tmp_path, "a")) == 1


async def test_unreadable_state_file_is_reported_and_started_fresh(make, tmp_path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "services.json").write_text("{not json")
    with pytest.raises(procstate.StateFileError, match=r"services.json: not JSON"):
        procstate.load(tmp_path / "state")
    sup = make([ServiceSpec("a", program(tmp_path, "a", SLEEPER), start_grace=0.1)])
    await sup.start()
    await sup.wait_for("a", running, within=WAIT)
    assert procstate.load(tmp_path / "state")["a"].state == "RUNNING"


PRINTER = "print('hello from the service', flush=True)\ntime.sleep(3600)\n"


async def test_output_goes_to_the_log_path_in_a_folder_only_root_writes(make, tmp_path) -> None:
    logs = tmp_path / "log"
    logs.mkdir(mode=0o755)
    sup = make([ServiceSpec("a", program(tmp_path, "a", PRINTER), start_grace=0.1,
                            log_path=str(logs / "a.out"))])
    await sup.start()
    await sup.wait_for("a", running, within=WAIT)
    await until(lambda: (logs / "a.out").exists()
                and "hello from the service" in (logs / "a.out").read_text())


async def test_a_link_at_the_log_path_is_refused_and_the_service_still_runs(
        make, tmp_path) -> None:
    victim = tmp_path / "authorized_keys"
    victim.write_text("ssh-ed25519 AAAA root's own\n")
    logs = tmp_path / "log"
    logs.mkdir(mode=0o755)
    (logs / "a.out").symlink_to(victim)
    sup = make([ServiceSpec("a", program(tmp_path, "a", PRINTER), start_grace=0.1,
                            log_path=str(logs / "a.out"))])
    with structlog.testing.capture_logs() as events:
        await sup.start()
        st = await sup.wait_for("a", running, within=WAIT)
    assert st.pid is not None and alive(st.pid)
    refused = [e for e in events if e["event"] == "service_log_refused"]
    assert [(e["service"], e["path"], e["reason"]) for e in refused] == [
        ("a", str(logs / "a.out"), f"service log {logs}/a.out is a symbolic link: refused, "
                                   "not followed")]
    assert victim.read_text() == "ssh-ed25519 AAAA root's own\n"
    assert (logs / "a.out").is_symlink()
