"""The master's detached runs of the AppScale tools: real shells, short commands."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cloudd.providers.appscale import jobs
from cloudd.providers.appscale.tools import ToolsCommand, Verb

ENV = {"PATH": "/usr/bin:/bin"}


def command(tmp_path: Path, shell: str, *, within: float = 30.0,
            must: bool = True) -> ToolsCommand:
    return ToolsCommand(verb=Verb.UP, argv=("/bin/sh", "-c", shell), cwd=tmp_path, env=ENV,
                        within=within, must_succeed=must)


def settle(folder: Path) -> jobs.JobView:
    end = time.monotonic() + 30
    while (view := jobs.read(folder)).state is jobs.JobState.RUNNING:
        assert time.monotonic() < end, "the job never ended"
        time.sleep(0.05)
    return view


def test_no_job_yet_reads_none(tmp_path: Path) -> None:
    assert jobs.read(tmp_path) == jobs.JobView("", jobs.JobState.NONE)


def test_a_job_runs_detached_and_its_last_line_is_kept(tmp_path: Path) -> None:
    # The job waits for the test's word, not for a time: a loaded machine cannot end it early.
    gate = tmp_path / "gate"
    first = command(tmp_path, f"echo starting; while [ ! -e {gate} ]; do sleep 0.05; done; "
                              "echo AppScale successfully started!")
    view = jobs.start(tmp_path, jobs.Run.UP, (first,), env=ENV)
    assert view.state is jobs.JobState.RUNNING
    again = jobs.start(tmp_path, jobs.Run.DOWN, (first,), env=ENV)
    assert (again.verb, again.state) == ("up", jobs.JobState.RUNNING)  # one job at a time
    gate.touch()
    done = settle(tmp_path)
    assert done == jobs.JobView("up", jobs.JobState.DONE, "AppScale successfully started!")
    assert done.deployed
    assert (tmp_path / jobs.FOLDER / "out").stat().st_mode & 0o077 == 0


def test_a_failed_run_says_its_status_and_the_tools_last_line(tmp_path: Path) -> None:
    jobs.start(tmp_path, jobs.Run.UP, (command(tmp_path, "echo AppScale is already "
                                                          "running; exit 3"),),
               env=ENV)
    assert settle(tmp_path) == jobs.JobView(
        "up", jobs.JobState.FAILED, "appscale up exited with 3: AppScale is already running")


def test_a_run_past_its_bound_is_killed_and_failed(tmp_path: Path) -> None:
    jobs.start(tmp_path, jobs.Run.DOWN, (command(tmp_path, "sleep 30", within=0.3),),
               env=ENV)
    view = settle(tmp_path)
    assert view.state is jobs.JobState.FAILED and "ran past its bound" in view.message
    assert not view.deployed


def test_a_respawn_goes_on_to_up_when_down_fails(tmp_path: Path) -> None:
    down = command(tmp_path, "echo node gone; exit 1", must=False)
    up = command(tmp_path, "echo up again")
    jobs.start(tmp_path, jobs.Run.RESPAWN, (down, up), env=ENV)
    assert settle(tmp_path) == jobs.JobView("respawn", jobs.JobState.DONE, "up again")
    assert (tmp_path / jobs.FOLDER / "rc").read_text().split() == ["1", "0"]


def test_a_job_whose_shell_is_gone_without_its_status_is_lost(tmp_path: Path) -> None:
    job = tmp_path / jobs.FOLDER
    job.mkdir()
    (job / "verb").write_text("up\n")
    (job / "pid").write_text("999999999\n")
    view = jobs.read(tmp_path)
    assert (view.state, view.deployed) == (jobs.JobState.LOST, False)


def test_a_pid_the_system_gave_to_another_process_is_not_the_job(tmp_path: Path) -> None:
    """After a reboot, or once the shell ended and its pid was reused: lost, not running."""
    job = tmp_path / jobs.FOLDER
    job.mkdir()
    (job / "verb").write_text("up\n")
    here = Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[19]
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    (job / "pid").write_text(f"{os.getpid()} {boot} {here}\n")
    assert jobs.read(tmp_path).state is jobs.JobState.RUNNING  # this very process
    (job / "pid").write_text(f"{os.getpid()} {boot} {int(here) + 1}\n")
    assert jobs.read(tmp_path).state is jobs.JobState.LOST
    (job / "pid").write_text(f"{os.getpid()} another-boot {here}\n")
    assert jobs.read(tmp_path).state is jobs.JobState.LOST


def test_a_job_ending_between_the_two_looks_is_done_not_lost(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The shell writes `rc` and exits: a reader that found no `rc`, then no shell, was
    # reading just between the two (a whole-suite run saw it as "lost").
    job = tmp_path / jobs.FOLDER
    job.mkdir()
    (job / "verb").write_text("up\n")
    (job / "out").write_text("AppScale successfully started!\n")

    def ends_meanwhile(folder: Path) -> bool:
        (folder / "rc").write_text("0\n")
        return False

    monkeypatch.setattr(jobs, "_alive", ends_meanwhile)
    assert jobs.read(tmp_path) == jobs.JobView("up", jobs.JobState.DONE,
                                               "AppScale successfully started!")
