"""`cloudd-cli events` against a real ApiServer streaming from a real EventLog in tmp_path.

(Named `_cli` because tests/daemon/test_events.py already holds the module name.)
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from test_inspect import Agent, Lines, spawn

from cloudd.cli import main
from cloudd.commands.events import parse_since
from cloudd.daemon.base.eventlog import EventLog, LogEvent, LogKind
from cloudd.daemon.operator.queries import event_json, events_stream

NOW = 1_796_000_000.0


@pytest.fixture
def sock() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="cloudd-ev-"))  # a socket path must fit in 108 bytes
    yield d / "cloudd.sock"
    shutil.rmtree(d)


@pytest.fixture
def events(tmp_path: Path) -> Iterator[EventLog]:
    log = EventLog(tmp_path / "events.sqlite3")
    yield log
    log.close()


@pytest.fixture
def agent(sock: Path, events: EventLog) -> Iterator[Agent]:
    a = Agent(sock)
    a.register_stream("events", events_stream(events))
    yield a.start()
    a.stop()


def history(log: EventLog, now: float) -> list[LogEvent]:
    rows = [(now - 7200, "shop", LogKind.ELECTION, "pm1", "pm1 leads"),
            (now - 3000, "shop", LogKind.ACTION, "shop-server-0", "started on pm1"),
            (now - 1800, "lab", LogKind.COMMAND, "lab", "manifest loaded"),
            (now - 600, "shop", LogKind.FAILURE, "shop-server-0", "domain crashed"),
            (now - 60, "shop", LogKind.RESTART, "webrick", "exited with status 1")]
    return [log.append(LogEvent(time=t, cloud=c, kind=k, subject=s, reason=r, term=2))
            for t, c, k, s, r in rows]


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out.splitlines(), out.err


def test_last_events_oldest_first(capsys: pytest.CaptureFixture[str], agent: Agent,
                                  sock: Path, events: EventLog) -> None:
    stored = history(events, time.time())
    code, lines, err = cli(capsys, "events", "--limit", "2", "--socket", str(sock))
    assert (code, err, len(lines)) == (0, "", 2)
    assert lines[0].split()[2:] == ["shop", "failure", "shop-server-0", "term", "2", "domain",
                                    "crashed"]
    # fixed columns, so that streamed lines align without knowing what comes next
    assert lines[1][20:] == ("  shop          restart   webrick               term 2    "
                             "exited with status 1")
    day = datetime.fromtimestamp(stored[-1].time, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    assert lines[1].startswith(day)
    assert "\x1b[" not in "".join(lines)


def test_json_cloud_and_since(capsys: pytest.CaptureFixture[str], agent: Agent, sock: Path,
                              events: EventLog) -> None:
    stored = history(events, time.time())
    code, lines, _ = cli(capsys, "events", "--json", "--cloud", "shop", "--since", "1h",
                         "--socket", str(sock))
    assert code == 0
    assert [json.loads(ln) for ln in lines] == [event_json(stored[i]) for i in (1, 3, 4)]
    code, lines, _ = cli(capsys, "events", "--json", "--since", str(stored[2].time),
                         "--limit", "2", "--socket", str(sock))
    assert [json.loads(ln)["id"] for ln in lines] == [stored[2].id, stored[3].id]


def test_empty_history(capsys: pytest.CaptureFixture[str], agent: Agent, sock: Path) -> None:
    assert cli(capsys, "events", "--socket", str(sock)) == (0, [], "")


def test_no_agent(capsys: pytest.CaptureFixture[str], sock: Path) -> None:
    assert cli(capsys, "events", "--follow", "--socket", str(sock)) == (
        1, [], f"cloudd-cli events: no agent answers on {sock}: No such file or directory\n")


@pytest.mark.parametrize(("argv", "message"), [
    (["--limit", "0"], "argument --limit/-n: must be at least 1, got 0"),
    (["--limit", "many"], "argument --limit/-n: 'many' is not a whole number"),
])
def test_bad_limit(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["events", *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_since_touches_nothing(capsys: pytest.CaptureFixture[str], agent: Agent,
                                   sock: Path) -> None:
    code, lines, err = cli(capsys, "events", "--since", "last tuesday", "--socket", str(sock))
    assert (code, lines) == (2, [])
    assert err == ("cloudd-cli events: --since: 'last tuesday' is not a time: give epoch "
                   "seconds (1796000000), an ISO time (2026-11-30T07:00:00Z) or an age "
                   "(90s, 10m, 2h, 7d)\n")


def test_follow_prints_new_events_until_ctrl_c(agent: Agent, sock: Path,
                                               events: EventLog) -> None:
    history(events, time.time())
    proc = spawn("events", "--follow", "--json", "--limit", "1", "--socket", str(sock))
    try:
        out = Lines(proc.stdout)
        out.wait_for(lambda s: s.count(b"\n") == 1)
        fresh = [events.append(LogEvent(time=time.time(), cloud="shop", kind=LogKind.ACTION,
                                     subject=f"shop-server-{i}", reason="defined", term=3))
                 for i in range(3)]
        seen = out.wait_for(lambda s: s.count(b"\n") == 4)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        proc.kill()
        proc.wait()
    got = [json.loads(ln) for ln in seen.splitlines()]
    assert got[0]["reason"] == "exited with status 1"
    assert got[1:] == [event_json(e) for e in fresh]


def test_follow_ends_with_exit_1_when_the_agent_goes(agent: Agent, sock: Path) -> None:
    proc = spawn("events", "--follow", "--socket", str(sock))
    try:
        out = Lines(proc.stdout)
        deadline = time.monotonic() + 20
        while not _streaming(agent) and time.monotonic() < deadline:
            time.sleep(0.02)
        agent.stop()
        seen = out.wait_for(lambda s: b"closed the stream\n" in s)
        assert proc.wait(20) == 1
    finally:
        proc.kill()
        proc.wait()
    assert seen.decode() == f"cloudd-cli events: the agent on {sock} closed the stream\n"


def _streaming(agent: Agent) -> bool:
    """Whether a client's stream is open on the agent (its handler task exists)."""

    async def count() -> int:
        return len(asyncio.all_tasks()) - 1
    return asyncio.run_coroutine_threadsafe(count(), agent.loop).result(10) > 0


@pytest.mark.parametrize(("text", "expected"), [
    ("1796000000", 1_796_000_000.0),
    ("1796000000.5", 1_796_000_000.5),
    ("90s", NOW - 90), ("10m", NOW - 600), ("2h", NOW - 7200), ("7d", NOW - 7 * 86400),
    ("1.5h", NOW - 5400), (" 10m ", NOW - 600),
    ("2026-11-30T07:00:00Z", datetime(2026, 11, 30, 7, tzinfo=UTC).timestamp()),
    ("2026-11-30T07:00:00", datetime(2026, 11, 30, 7, tzinfo=UTC).timestamp()),
    ("2026-11-30T09:00:00+02:00", datetime(2026, 11, 30, 7, tzinfo=UTC).timestamp()),
    ("2026-11-30", datetime(2026, 11, 30, tzinfo=UTC).timestamp()),
])
def test_parse_since(text: str, expected: float) -> None:
    assert parse_since(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "-5m", "10w", "inf", "nan", "-1", "5 m"])
def test_parse_since_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="is not a time"):
        parse_since(text, now=NOW)
