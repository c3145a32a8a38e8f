"""kill -9 of a supervised service: how soon is a new process running, and accepting again?

cloudd's supervisor and supervisord supervise the same tiny TCP server (each its own copy, on
its own port), each in its own process, in the same run. For every round the bench kills the
server with SIGKILL and measures, from the kill, (1) a new server process exists (it appears
among the supervisor's children) and (2) the port accepts a TCP connection again, which is
what cloudd's readiness probe checks. Both are observed from outside in the same way.

    .venv/bin/python bench/supervisor_restart.py [--runs 20]

Prints medians and maxima in milliseconds and the ratio supervisord / cloudd.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(64)
while True:
    s.accept()[0].close()
"""
AGENT = """
import asyncio, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from cloudd import log
from cloudd.providers.policy import PolicyConfig
from cloudd.providers.service import ProbeKind, ProbeSpec, ServiceSpec
from cloudd.providers.supervisor import Supervisor

async def main():
    log.configure(level="warning")
    port = int(sys.argv[2])
    spec = ServiceSpec("srv", (sys.executable, sys.argv[3], str(port)), start_grace=0.2,
                       stop_grace=2.0,
                       readiness=ProbeSpec(ProbeKind.TCP, port=port, period=0.05, timeout=1.0))
    sup = Supervisor([spec], state_dir=Path(sys.argv[1]),
                     defaults=PolicyConfig(stable_after=1.0, max_failures=1000))
    await sup.start()
    await asyncio.Event().wait()

asyncio.run(main())
"""
SUPERVISORD_CONF = """
[unix_http_server]
file={dir}/supervisor.sock
[supervisord]
logfile={dir}/supervisord.log
pidfile={dir}/supervisord.pid
nodaemon=true
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[program:srv]
command={python} {server} {port}
autorestart=true
startsecs=1
startretries=1000
stopwaitsecs=2
stdout_logfile={dir}/srv.log
redirect_stderr=true
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children(pid: int) -> set[int]:
    """Children of every thread of `pid` (cloudd forks from a worker thread)."""
    found: set[int] = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):
            found.update(int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text()
                         .split())
    return found


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def wait(check: Callable[[], object], within: float, step: float) -> object:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(step)
    raise TimeoutError("nothing happened within the bound")


class Subject:
    def __init__(self, name: str, proc: subprocess.Popen[bytes], port: int) -> None:
        self.name, self.proc, self.port = name, proc, port
        self.spawn_ms: list[float] = []
        self.accept_ms: list[float] = []

    def server_pid(self) -> int:
        return int(wait(lambda: next(iter(children(self.proc.pid)), 0), 30, 0.01))  # type: ignore[call-overload]

    def round(self) -> None:
        old = self.server_pid()
        wait(lambda: accepts(self.port), 30, 0.01)
        t0 = time.perf_counter()
        os.kill(old, signal.SIGKILL)
        wait(lambda: children(self.proc.pid) - {old}, 30, 0.0005)
        t1 = time.perf_counter()
        wait(lambda: accepts(self.port), 30, 0.001)
        t2 = time.perf_counter()
        self.spawn_ms.append((t1 - t0) * 1000)
        self.accept_ms.append((t2 - t0) * 1000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--settle", type=float, default=1.5,
                        help="seconds between rounds (past cloudd's stable_after and "
                             "supervisord's startsecs, so neither backs off)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cloudd-bench-sup-"))
    server = tmp / "server.py"
    server.write_text(SERVER)
    agent = tmp / "agent.py"
    agent.write_text(AGENT.format(repo=str(REPO)))
    ports = free_port(), free_port()
    conf = tmp / "supervisord.conf"
    conf.write_text(textwrap.dedent(SUPERVISORD_CONF.format(
        dir=tmp, python=sys.executable, server=server, port=ports[1])))
    procs = [subprocess.Popen([sys.executable, str(agent), str(tmp / "state"), str(ports[0]),
                               str(server)], start_new_session=True),
             subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
                              start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)]
    subjects = [Subject("cloudd", procs[0], ports[0]), Subject("supervisord", procs[1], ports[1])]
    try:
        for subject in subjects:
            subject.server_pid()
            wait(lambda s=subject: accepts(s.port), 30, 0.01)
        time.sleep(args.settle)
        for _ in range(args.runs):
            for subject in subjects:  # interleaved, so both see the same machine load
                subject.round()
            time.sleep(args.settle)
    finally:
        # cloudd's services outlive their agent by design: kill the agent, then its servers.
        left = children(procs[0].pid)
        os.killpg(procs[0].pid, signal.SIGKILL)
        for pid in left:
            os.killpg(pid, signal.SIGKILL)
        os.killpg(procs[1].pid, signal.SIGTERM)  # supervisord stops its own children
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)
    ours, theirs = subjects
    print(f"kill -9 of a supervised TCP server, {args.runs} runs each, milliseconds")
    print(f"{'metric':<28}{'cloudd med':>12}{'cloudd max':>12}{'supd med':>12}"
          f"{'supd max':>12}{'supd/cloudd':>13}")
    rows: list[list[object]] = []
    for label, a, b in (("new process running", ours.spawn_ms, theirs.spawn_ms),
                        ("port accepting again", ours.accept_ms, theirs.accept_ms)):
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"{label:<28}{ma:>12.1f}{max(a):>12.1f}{mb:>12.1f}{max(b):>12.1f}"
              f"{mb / ma:>12.1f}x")
        rows.append([label, round(ma, 1), round(max(a), 1), round(mb, 1), round(max(b), 1),
                     round(mb / ma, 1)])
    from report import table, write_result

    write_result("supervisor_restart", what="kill -9 of a service to its new process / to "
                 "its port accepting again (supervisord side by side)",
                 figure=f"{rows[0][1]:,} ms / {rows[1][1]:,} ms; supervisord: {rows[0][3]:,} ms"
                        f" / {rows[1][3]:,} ms",
                 tables=[table(f"kill -9 of a supervised TCP server, {args.runs} runs each, ms",
                               ["metric", "cloudd med", "cloudd max", "supd med", "supd max",
                                "supd/cloudd"], rows)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
