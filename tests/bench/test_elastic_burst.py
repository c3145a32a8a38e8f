"""bench/elastic_burst.py's pure parts: the node-seconds integral, the settle time, and what
the polls of the head make of a burst's jobs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load_bench() -> ModuleType:
    # the script imports its neighbours (failover, report) as a script would
    if str(BENCH) not in sys.path:
        sys.path.append(str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_elastic_burst",
                                                  BENCH / "elastic_burst.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


eb = load_bench()


def test_a_constant_count_integrates_to_count_times_duration() -> None:
    samples = [(0.0, 1), (1.0, 1), (2.0, 1), (3.0, 1)]
    assert eb.node_seconds(samples, 0.5, 2.5) == pytest.approx(2.0)


def test_each_sample_holds_until_the_next() -> None:
    # one VM, then three from t=10 to t=40, then one again
    samples = [(0.0, 1), (10.0, 3), (40.0, 1), (50.0, 1)]
    assert eb.node_seconds(samples, 0.0, 50.0) == pytest.approx(10 * 1 + 30 * 3 + 10 * 1)
    # a window inside a step, and one across steps
    assert eb.node_seconds(samples, 12.0, 20.0) == pytest.approx(8 * 3)
    assert eb.node_seconds(samples, 5.0, 45.0) == pytest.approx(5 * 1 + 30 * 3 + 5 * 1)


def test_the_start_between_samples_takes_the_sample_before_it() -> None:
    samples = [(0.0, 2), (10.0, 1)]
    assert eb.node_seconds(samples, 4.0, 12.0) == pytest.approx(6 * 2 + 2 * 1)
    # before the first sample, the first one's count
    assert eb.node_seconds(samples, -5.0, 0.0) == pytest.approx(10.0)
    assert eb.node_seconds(samples, 3.0, 3.0) == 0.0


def test_the_integral_refuses_what_it_cannot_read() -> None:
    with pytest.raises(ValueError, match="no samples"):
        eb.node_seconds([], 0.0, 1.0)
    with pytest.raises(ValueError, match="before the start"):
        eb.node_seconds([(0.0, 1)], 2.0, 1.0)
    with pytest.raises(ValueError, match="out of time order"):
        eb.node_seconds([(2.0, 1), (1.0, 1)], 0.0, 3.0)


def test_settled_is_the_first_sample_back_at_the_floor_after_the_jobs() -> None:
    samples = [(0.0, 1), (5.0, 3), (60.0, 3), (70.0, 2), (80.0, 1), (90.0, 1)]
    assert eb.settled_at(samples, after=50.0, floor=1) == 80.0
    # at the floor before the jobs ended does not count
    assert eb.settled_at(samples, after=2.0, floor=1) == 80.0
    assert eb.settled_at(samples, after=0.0, floor=1) == 0.0
    assert eb.settled_at(samples, after=95.0, floor=1) is None


def js(state: str, *times: float | None) -> object:
    return eb.JobState(state, *times)


def test_the_polls_give_each_job_its_start_and_end() -> None:
    p = eb.Progress.of(["1", "2", "3"])
    p.seen({"1": js(eb.RUNNING), "2": js("waiting"), "3": js("waiting")}, 2.0)
    assert p.all_running() is None
    p.seen({"1": js(eb.RUNNING), "2": js(eb.RUNNING), "3": js("waiting")}, 70.0)
    # job 1 no longer listed: it ended; job 3 seen only once ended started then too
    p.seen({"2": js(eb.DONE), "3": js(eb.DONE)}, 130.0)
    assert p.started == {"1": 2.0, "2": 70.0, "3": 130.0}
    assert p.ended == {"1": 130.0, "2": 130.0, "3": 130.0}
    assert p.all_running() == 130.0 and p.all_finished() == 130.0


def test_a_job_never_seen_is_not_taken_for_ended() -> None:
    p = eb.Progress.of(["1", "2"])
    p.seen({"1": js(eb.RUNNING)}, 3.0)
    assert p.started == {"1": 3.0} and p.ended == {}


def test_a_failed_job_aborts_the_run() -> None:
    p = eb.Progress.of(["7"])
    with pytest.raises(RuntimeError, match="job 7 failed"):
        p.seen({"7": js(eb.FAILED)}, 9.0)


def test_the_schedulers_records_give_the_times_from_the_first_submission() -> None:
    p = eb.Progress.of(["1", "2"])
    p.seen({"1": js(eb.RUNNING, 1000.0, 1001.0), "2": js("waiting", 1001.0)}, 4.0)
    assert p.by_the_scheduler() is None  # not every time shown yet
    # what a poll showed is kept when a later one shows less (a job forgotten, a time unset)
    p.seen({"1": js(eb.DONE, 1000.0, 1001.0, 1061.0), "2": js(eb.RUNNING, 1001.0, 1062.0)},
           70.0)
    p.seen({"2": js(eb.DONE, None, None, 1122.0)}, 130.0)
    assert p.records["2"] == eb.JobState(eb.DONE, 1001.0, 1062.0, 1122.0)
    assert p.by_the_scheduler() == (62.0, 122.0)
    assert p.all_finished() == 130.0


def test_the_summary_takes_medians_and_the_median_of_each_runs_ratio() -> None:
    def burst(mode: str, running: float, ns: float) -> object:
        return eb.Burst(mode, running=running, finished=2 * running, settled=2 * running,
                        node_seconds=ns, peak=3 if mode == "elastic" else 1)
    pairs = [(burst("fixed", 120, 180), burst("elastic", 60, 300)),
             (burst("fixed", 100, 200), burst("elastic", 80, 260)),
             (burst("fixed", 140, 190), burst("elastic", 70, 285))]
    fixed, elastic, ratios = eb.summary(pairs)
    assert fixed == ["fixed", 120, 240, 240, 190, 1]
    assert elastic == ["elastic", 70, 140, 140, 285, 3]
    # the ratios of the runs are 0.5, 0.8, 0.5: their median, not the medians' ratio
    assert ratios[0] == "elastic/fixed" and ratios[1] == 0.5
    assert ratios[4] == pytest.approx(1.5, abs=0.01)
