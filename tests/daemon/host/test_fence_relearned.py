"""A pool host whose fencing token (`highest-term`) was set aside runs no host command until
the election has relearned the terms; the proven token is written before the first one runs."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import structlog

from cloudd.config.model import Cloud
from cloudd.daemon.host.duties import RETRY_AFTER
from cloudd.durable import TermFile
from cloudd.vmctl.hostagent import TERM_FILE, CommandOutcome, HostCommand, Op

from .conftest import make_host, running


async def test_no_command_runs_until_the_fence_is_proven_then_it_is_written_first(
        tmp_path: Path, cloud: Cloud) -> None:
    fence: list[int | None] = [None]
    h = make_host(tmp_path, cloud, fence=lambda: fence[0])
    h.leases["pm2"] = 6
    async with running(h.duties) as agent:
        with structlog.testing.capture_logs() as logs:
            refused = await h.duties.execute("pm2", HostCommand(Op.LIST, 6))
        assert refused.outcome is CommandOutcome.FAILED and refused.retry_after == RETRY_AFTER
        assert "lost its fencing term" in refused.message and refused.domains == ()
        (line,) = [e for e in logs if e["event"] == "command_refused"]
        assert (line["peer"], line["term"]) == ("pm2", 6)
        assert not (h.duties.state_dir / TERM_FILE).exists() and agent.highest_term == 0
        fence[0] = 7  # the election relearned: nothing was granted above 7
        stale = await h.duties.execute("pm2", HostCommand(Op.LIST, 6))
        assert stale.outcome is CommandOutcome.STALE_TERM and agent.highest_term == 7
        assert (h.duties.state_dir / TERM_FILE).read_text() == "7\n"
        h.leases["pm2"] = 8
        done = await h.duties.execute("pm2", HostCommand(Op.LIST, 8))
        assert done.outcome is CommandOutcome.DONE and done.term_seen == 8


async def test_a_token_known_at_start_is_the_host_agents_own(tmp_path: Path,
                                                             cloud: Cloud) -> None:
    h = make_host(tmp_path, cloud, fence=lambda: 5)
    h.leases["pm2"] = 5
    async with running(h.duties) as agent:
        assert agent.highest_term == 5 and h.duties.proven
        done = await h.duties.execute("pm2", HostCommand(Op.LIST, 5))
        assert done.outcome is CommandOutcome.DONE


async def test_a_relearned_token_the_disk_refuses_runs_nothing(
        tmp_path: Path, cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    fence: list[int | None] = [None]
    h = make_host(tmp_path, cloud, fence=lambda: fence[0])
    h.leases["pm2"] = 4
    async with running(h.duties) as agent:
        fence[0] = 4

        def full(self: TermFile, term: int, *, proven: bool = True) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(TermFile, "save", full)
        refused = await h.duties.execute("pm2", HostCommand(Op.LIST, 4))
        assert refused.outcome is CommandOutcome.FAILED and "No space left" in refused.message
        assert agent.highest_term == 0 and not h.duties.proven
        monkeypatch.undo()
        done = await h.duties.execute("pm2", HostCommand(Op.LIST, 4))
        assert done.outcome is CommandOutcome.DONE and agent.highest_term == 4


async def test_a_new_term_the_disk_refuses_runs_nothing_and_fails_for_a_retry(
        tmp_path: Path, cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    h = make_host(tmp_path, cloud)
    h.leases["pm2"] = 3
    async with running(h.duties) as agent:

        def full(self: TermFile, term: int, *, proven: bool = True) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(TermFile, "save", full)
        with structlog.testing.capture_logs() as logs:
            result = await h.duties.execute("pm2", HostCommand(Op.LIST, 3))
        assert (result.outcome, result.retry_after) == (CommandOutcome.FAILED, RETRY_AFTER)
        assert "No space left" in result.message and agent.highest_term == 0
        assert [e["event"] for e in logs] == ["command_failed"]
