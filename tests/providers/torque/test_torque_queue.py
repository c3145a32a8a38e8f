"""The jobs waiting in pbs_server's queues, summed from `qstat -x` as TORQUE prints it."""

from __future__ import annotations

import pytest

from cloudd.errors import PermanentError
from cloudd.providers.batchqueue import Queue
from cloudd.providers.torque.queue import parse_qstat_x


def _job(job_id: str, state: str, resources: str = "") -> str:
    listed = f"<Resource_List>{resources}</Resource_List>" if resources else ""
    return (f"<Job><Job_Id>{job_id}</Job_Id><Job_Name>j</Job_Name>"
            f"<job_state>{state}</job_state>{listed}</Job>")


def test_only_the_jobs_that_wait_are_summed_with_what_they_ask() -> None:
    xml = "<Data>" + "".join([
        _job("1.tq-head", "R", "<nodect>1</nodect><nodes>1</nodes>"),
        _job("2.tq-head", "Q", "<nodect>2</nodect><nodes>2:ppn=2</nodes>"),
        _job("3.tq-head", "H", "<nodes>tq-c1+tq-c2:ppn=3</nodes>"),
        _job("4.tq-head", "W", "<procs>6</procs>"),
        _job("5.tq-head", "Q"),
        _job("6.tq-head", "C", "<nodect>8</nodect>"),
        _job("7.tq-head", "E"),
    ]) + "</Data>"
    # Only the queued ones wait for nodes; the held and deferred ones are counted apart.
    assert parse_qstat_x(xml) == Queue(4, 3, 5, (
        ("queued", 2), ("held", 1), ("waiting for its start time", 1)), blocked=2)


def test_no_job_at_all_prints_nothing() -> None:
    assert parse_qstat_x("") == Queue()
    assert parse_qstat_x("<Data></Data>") == Queue()


@pytest.mark.parametrize(("text", "match"), [
    ("<Data><Job>", "qstat -x printed no XML"),
    ("<Data>" + _job("2.h", "Q", "<nodes>:ppn=2</nodes>") + "</Data>",
     "not TORQUE's spec"),
])
def test_output_that_is_not_qstats_is_refused(text: str, match: str) -> None:
    with pytest.raises(PermanentError, match=match):
        parse_qstat_x(text)
