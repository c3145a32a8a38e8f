"""The agent's start with the state folder as an older agent, an operator or a crash left it:
modes made private again, and a corrupt event log set aside instead of stopping the agent."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cloudd.config.agent import load_agent
from cloudd.daemon.base.eventlog import LogEvent, LogKind
from cloudd.daemon.main import STATE_DIR_MODE, Agent

from .test_main import T0, write_agent


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_state_folder_is_made_private_and_a_corrupt_log_set_aside(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "clouds" / "shop").mkdir(parents=True)
    for folder in (state, state / "clouds", state / "clouds" / "shop"):
        os.chmod(folder, 0o755)
    (state / "events.sqlite3").write_bytes(b"\x00garbage" * 64)
    path = write_agent(tmp_path)
    agent = Agent(load_agent(path), config_path=path, env={})
    try:
        assert agent.events.append(LogEvent(T0, "c1", LogKind.ACTION, "n1", "works")).id == 1
    finally:
        agent.events.close()
    assert (mode(state), mode(state / "clouds"), mode(state / "clouds" / "shop")) == (
        STATE_DIR_MODE, 0o700, 0o700)
    (kept,) = state.glob("events.sqlite3.corrupt-*")
    assert kept.read_bytes() == b"\x00garbage" * 64
    assert mode(state / "events.sqlite3") == 0o600


def test_a_new_state_folder_is_made_with_its_modes(tmp_path: Path) -> None:
    path = write_agent(tmp_path)
    agent = Agent(load_agent(path), config_path=path, env={})
    agent.events.close()
    state = tmp_path / "state"
    assert (mode(state), mode(state / "clouds")) == (STATE_DIR_MODE, 0o700)
