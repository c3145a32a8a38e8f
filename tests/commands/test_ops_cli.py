"""`cloudd-cli history | rollback` against a real ApiServer answering as an agent would: what
is sent, and what the operator reads."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_inspect import Agent

from cloudd.cli import main

HISTORY = {"cloud": "shop", "leader": "pm2", "term": 5, "version": "5.9", "in_force": 2,
           "maintenance": ["(cloud)", "shop-database-1"],
           "generations": [
               {"number": 1, "at": 1_796_000_000.0, "by": "pm1", "ensure": "running",
                "what": "adopted from pm1's manifest file", "digest": "ab" * 32},
               {"number": 2, "at": 1_796_000_600.0, "by": "pm3", "ensure": "stopped",
                "what": "stop", "digest": "cd" * 32}]}

PLAN = {"leader": "pm2", "term": 5, "actions": ["define hpc-compute-2 on pm1: a new node"],
        "waiting": [],
        "elastic": ["elastic compute: 2 node(s) in use, of 1 to 8; following the queue"],
        "decided": [{"at": 1_796_000_000.0, "term": 5, "node": "hpc-compute-2", "what": "take",
                     "reason": "1 job(s) wait for nodes, asking 2 node(s) and 2 CPU(s)"},
                    {"at": "junk", "term": 5, "node": "x", "what": "drain", "reason": "r"}]}


@pytest.fixture
def agent() -> Iterator[Agent]:
    d = Path(tempfile.mkdtemp(prefix="cloudd-ops-"))  # a socket path must fit in 108 bytes
    a = Agent(d / "cloudd.sock")
    a.register("history", lambda args: HISTORY)
    a.register("diff", lambda args: {"cloud": "shop", "a": args["a"], "b": args["b"],
                                     "diff": "--- shop generation 1\n+++ shop generation 2\n"
                                             if args["a"] != args["b"] else ""})
    a.register("drain", lambda args: {"cloud": "shop", "leader": "pm2", "drained": [
        {"host": args["host"], "move_stateful": bool(args.get("move_stateful")), "at": 1.0,
         "by": "pm1"}]})
    a.register("plan", lambda args: PLAN)
    a.register("undrain", lambda args: {"cloud": "shop", "leader": "pm2", "drained": []})
    a.register("rollback", lambda args: {"accepted_by": "pm2", "cloud": "shop",
                                         "generation": 3, "ensure": "running", "path": None})
    yield a.start()
    a.stop()
    shutil.rmtree(d)


def run(agent: Agent, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main([*argv, "--socket", str(agent.server.path)])
    return code, capsys.readouterr().out


def test_history_lists_the_generations_and_marks_the_one_in_force(
        agent: Agent, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(agent, capsys, "history", "shop")
    assert code == 0 and agent.calls == [{"cloud": "shop"}]
    assert out.splitlines() == [
        "history of shop (leader pm2, term 5, record version 5.9):",
        "      GEN  WHEN (UTC)           BY            ENSURE    DIGEST        WHAT",
        "        1  2026-11-30 00:53:20  pm1           running   abababababab  adopted from "
        "pm1's manifest file",
        "   *    2  2026-11-30 01:03:20  pm3           stopped   cdcdcdcdcdcd  stop",
        "in maintenance: (cloud), shop-database-1"]


def test_diff_and_rollback(agent: Agent, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(agent, capsys, "history", "shop", "--diff", "1", "2")
    assert code == 0 and out == "--- shop generation 1\n+++ shop generation 2\n"
    code, out = run(agent, capsys, "history", "shop", "--diff", "2", "2")
    assert out == "generations 2 and 2 have the same text\n"
    code, out = run(agent, capsys, "rollback", "shop", "1")
    assert code == 0 and out == ("pm2 carries on (cloud shop, ensure running, generation 3, "
                                 "recorded by a majority of the pool hosts)\n")
    assert agent.calls[-1] == {"cloud": "shop", "number": 1}


def test_a_refusal_is_one_line_on_stderr(agent: Agent,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    def refuse(args: dict[str, Any]) -> Any:
        from cloudd.client.api import ApiError
        raise ApiError("cloud shop has no generation 9 (its history holds generations 1 to 2)")
    agent.register("rollback", refuse)
    assert main(["rollback", "shop", "9", "--socket", str(agent.server.path)]) == 1
    assert capsys.readouterr().err == ("cloudd-cli rollback: cloud shop has no generation 9 "
                                       "(its history holds generations 1 to 2)\n")


def test_drain_and_undrain(agent: Agent, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(agent, capsys, "drain", "pm3", "--move-stateful")
    assert code == 0 and agent.calls[-1] == {"host": "pm3", "move_stateful": True}
    assert out == ("pm2 recorded it (cloud shop); drained: pm3 (move stateful); "
                   "`cloudd-cli inspect` shows the drain's progress\n")
    code, out = run(agent, capsys, "drain", "pm3")
    assert agent.calls[-1] == {"host": "pm3"}
    code, out = run(agent, capsys, "undrain", "pm3")
    assert code == 0 and out == "pm2 recorded it (cloud shop); drained: nothing\n"


def test_plan_shows_the_elastic_roles_and_the_leader_s_last_decisions(
        agent: Agent, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(agent, capsys, "plan", "hpc")
    assert code == 0 and out.splitlines() == [
        "plan of leader pm2 (term 5):",
        "  define hpc-compute-2 on pm1: a new node",
        "elastic roles:",
        "  elastic compute: 2 node(s) in use, of 1 to 8; following the queue",
        "elastic decisions (this leader's, oldest first):",
        "  2026-11-30 00:53:20 term 5: take hpc-compute-2: 1 job(s) wait for nodes, asking 2 "
        "node(s) and 2 CPU(s)",
        "  ? term 5: drain x: r"]
