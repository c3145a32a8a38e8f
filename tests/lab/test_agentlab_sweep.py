"""A new lab's sweep: which folders it removes (dead runs', never a living lab's), and its kills
listing again until no new process appears."""

from __future__ import annotations

import os
from pathlib import Path

from cloudd_lab.agentlab import OWNER, _kill_all, lab_root, stale_folders

#: Above the kernel's largest pid (PID_MAX_LIMIT, 2^22): no process has it.
NO_PROCESS = (1 << 22) + 1


def test_a_folder_is_stale_unless_a_living_process_made_it(tmp_path: Path) -> None:
    mine = lab_root("h7f", parent=tmp_path)
    waiting = lab_root("h7f", parent=tmp_path)  # a lab waiting for the prefix's lock
    assert (waiting / OWNER).read_text() == f"{os.getpid()}\n"
    dead = lab_root("h7f", parent=tmp_path)
    (dead / OWNER).write_text(f"{NO_PROCESS}\n")
    unowned = lab_root("h7f", parent=tmp_path)
    (unowned / OWNER).unlink()
    garbled = lab_root("h7f", parent=tmp_path)
    (garbled / OWNER).write_text("pm1\n")
    (tmp_path / "cloudd-h7f-guest").mkdir()  # not a lab folder's name
    (tmp_path / "cloudd-h7fx-abcdefgh").mkdir()  # another prefix's
    assert stale_folders("h7f", tmp_path, mine=mine) == sorted([dead, unowned, garbled])


def test_kills_list_again_until_no_new_process_appears() -> None:
    # A dead run's process forks between a listing and its kill: the child is in the next one.
    # The pids are above the kernel's largest, so the kills reach nothing.
    a, b, c = NO_PROCESS, NO_PROCESS + 1, NO_PROCESS + 2
    listings = iter([[a], [a, b], [b, c], [c], [a]])
    assert _kill_all(lambda: next(listings)) == [a, b, c]
    assert next(listings) == [a]  # nothing listed after the first listing with no new pid


def test_a_process_that_never_stops_forking_costs_a_bounded_number_of_listings() -> None:
    listed: list[int] = []

    def forever() -> list[int]:
        listed.append(NO_PROCESS + len(listed))
        return [listed[-1]]
    assert len(_kill_all(forever)) == len(listed) == 5
