"""Compute that follows the queue: the elastic core's decisions, pass by pass."""

from __future__ import annotations

from cloudd.daemon.leader.elastic import Bounds, ElasticStep, Memory, Use, step
from cloudd.daemon.leader.elastic import Wanted as Queue

NODES = ("c1", "c2", "c3", "c4", "c5")
BOUNDS = Bounds(min=1, max=4, idle_after=60.0, cooldown=30.0)
IDLE, BUSY, BOOTING = Use(ready=True), Use(ready=True, busy=True), Use()
DRAINED = Use(drained=True)


def run(active: tuple[str, ...], queue: Queue, use: dict[str, Use], *, now: float,
        memory: Memory | None = None, bounds: Bounds = BOUNDS) -> ElasticStep:
    return step(bounds, NODES, active, queue, use, memory or Memory(), vcpus=2, now=now)


def changes(s: ElasticStep) -> list[tuple[str, str]]:
    return [(c.node, c.what) for c in s.changes]


def waiting_for(nodes: int, cpus: int, jobs: int = 1) -> Queue:
    return Queue(jobs=jobs, nodes=nodes, cpus=cpus)


def test_a_new_role_takes_its_minimum() -> None:
    s = run((), Queue(), {}, now=0.0)
    assert s.active == ("c1",)
    assert s.changes[0].reason == "below the role's minimum of 1"


def test_a_burst_grows_the_role_to_fit_once_and_never_beyond_max() -> None:
    # 3 jobs of 2 CPUs each: three nodes of 2 vCPUs; c1 runs something already.
    s = run(("c1",), waiting_for(3, 6, jobs=3), {"c1": BUSY}, now=10.0)
    assert s.active == ("c1", "c2", "c3", "c4") and changes(s) == [
        ("c2", "take"), ("c3", "take"), ("c4", "take")]
    assert s.changes[0].reason == "3 job(s) wait for nodes, asking 3 node(s) and 6 CPU(s)"
    # Next pass, same queue while they boot: they count as capacity, nothing more is taken.
    again = run(s.active, waiting_for(3, 6, jobs=3), {"c1": BUSY}, now=12.0, memory=s.memory)
    assert again.active == s.active and again.changes == ()
    # A bigger burst stops at max and says so.
    big = run(s.active, waiting_for(8, 8, jobs=8), {n: BUSY for n in s.active}, now=14.0,
              memory=s.memory)
    assert big.active == s.active
    assert big.waiting == "8 more node(s) wanted, the role's maximum of 4 reached"


def test_cpus_asked_count_in_whole_nodes() -> None:
    s = run(("c1",), waiting_for(1, 5), {"c1": BUSY}, now=0.0)
    assert s.active == ("c1", "c2", "c3", "c4")  # 5 CPUs on nodes of 2: 3 nodes


def test_idle_nodes_drain_after_idle_after_newest_first_never_below_min() -> None:
    use = {n: IDLE for n in ("c1", "c2", "c3")}
    first = run(("c1", "c2", "c3"), Queue(), use, now=100.0)
    assert first.changes == () and first.memory.idle_since == {
        "c1": 100.0, "c2": 100.0, "c3": 100.0}
    later = run(first.active, Queue(), use, now=161.0, memory=first.memory)
    assert changes(later) == [("c3", "drain"), ("c2", "drain")]
    assert later.changes[0].reason == (
        "no job for 61s (the role's idle_after is 60s), none waiting for nodes")
    assert later.active == ("c1", "c2", "c3")  # in use until the scheduler drained them
    # Drained with no job: they leave; c1 stays, the minimum.
    done = run(later.active, Queue(), {"c1": IDLE, "c2": DRAINED, "c3": DRAINED}, now=170.0,
               memory=later.memory)
    assert done.active == ("c1",) and changes(done) == [("c2", "leave"), ("c3", "leave")]
    assert done.memory.releasing == frozenset()


def test_a_node_that_runs_a_job_is_never_drained_and_restarts_its_idle_count() -> None:
    use = {"c1": BUSY, "c2": IDLE}
    s = run(("c1", "c2"), Queue(), use, now=0.0)
    s = run(s.active, Queue(), {"c1": BUSY, "c2": BUSY}, now=50.0, memory=s.memory)
    s = run(s.active, Queue(), use, now=70.0, memory=s.memory)
    assert s.changes == () and s.memory.idle_since["c2"] == 70.0
    s = run(s.active, Queue(), use, now=131.0, memory=s.memory)
    assert changes(s) == [("c2", "drain")]


def test_a_draining_node_with_a_job_left_stays_until_it_is_done() -> None:
    memory = Memory(releasing=frozenset({"c2"}))
    s = run(("c1", "c2"), Queue(), {"c1": IDLE, "c2": Use(drained=True, busy=True)},
            now=0.0, memory=memory)
    assert s.active == ("c1", "c2") and s.changes == ()


def test_a_pass_without_the_scheduler_s_word_keeps_the_idle_count() -> None:
    use = {"c1": IDLE, "c2": IDLE}
    s = run(("c1", "c2"), Queue(), use, now=100.0)
    s = run(s.active, Queue(), {}, now=130.0, memory=s.memory)  # the head did not answer
    assert s.changes == () and s.memory.idle_since == {"c1": 100.0, "c2": 100.0}
    # past idle_after, still no word: nothing is drained on a guess
    assert run(s.active, Queue(), {}, now=170.0, memory=s.memory).changes == ()
    s = run(s.active, Queue(), use, now=161.0, memory=s.memory)
    assert changes(s) == [("c2", "drain")]


def test_a_new_leader_goes_on_with_the_drains_the_scheduler_shows() -> None:
    # An earlier leader drained c2 and c3 (its memory is gone): c3, drained with no job,
    # leaves; c2 still runs a job and stays until it is done, then leaves too.
    use = {"c1": IDLE, "c2": Use(drained=True, busy=True), "c3": DRAINED}
    s = run(("c1", "c2", "c3"), Queue(), use, now=0.0)
    assert changes(s) == [("c3", "leave")] and s.memory.releasing == frozenset({"c2"})
    s = run(s.active, Queue(), {"c1": IDLE, "c2": DRAINED}, now=5.0, memory=s.memory)
    assert changes(s) == [("c2", "leave")] and s.active == ("c1",)


def test_no_drain_within_the_cooldown_after_growing() -> None:
    grown = run(("c1",), waiting_for(1, 2), {"c1": BUSY}, now=0.0)
    assert grown.active == ("c1", "c2")
    s = run(grown.active, Queue(), {"c1": IDLE, "c2": IDLE}, now=1.0, memory=grown.memory)
    s = run(s.active, Queue(), {"c1": IDLE, "c2": IDLE}, now=20.0,
            memory=s.memory)
    assert s.changes == ()
    long_bounds = Bounds(min=1, max=4, idle_after=10.0, cooldown=30.0)
    cooling = run(s.active, Queue(), {"c1": IDLE, "c2": IDLE}, now=25.0, memory=s.memory,
                  bounds=long_bounds)
    assert cooling.changes == ()
    assert cooling.waiting == ("c2 idle, drained once the role's cool-down of 30s after "
                               "growing has passed")
    after = run(s.active, Queue(), {"c1": IDLE, "c2": IDLE}, now=31.0, memory=s.memory,
                bounds=long_bounds)
    assert changes(after) == [("c2", "drain")]


def test_jobs_arriving_while_nodes_drain_take_those_back_first() -> None:
    memory = Memory(releasing=frozenset({"c2", "c3"}))
    s = run(("c1", "c2", "c3"), waiting_for(1, 2), {"c1": BUSY, "c2": DRAINED,
                                                    "c3": DRAINED}, now=0.0, memory=memory)
    # c3 (newest) is kept; c2, drained with no job and not wanted, leaves.
    assert changes(s) == [("c3", "keep"), ("c2", "leave")]
    assert s.active == ("c1", "c3") and s.memory.releasing == frozenset()


def test_a_node_idle_while_a_wide_job_waits_is_wanted_not_idle() -> None:
    # c1 idle while a 2-node job waits for c2 to boot: its idleness starts after the job.
    s = run(("c1",), Queue(), {"c1": IDLE}, now=0.0)
    s = run(s.active, waiting_for(2, 2), {"c1": IDLE}, now=50.0, memory=s.memory)
    assert s.active == ("c1", "c2")
    s = run(s.active, waiting_for(2, 2), {"c1": IDLE, "c2": IDLE}, now=100.0, memory=s.memory)
    # The job ran too briefly to be seen; both idle from the same pass: the newest drains.
    s = run(s.active, Queue(), {"c1": IDLE, "c2": IDLE}, now=105.0, memory=s.memory)
    assert s.changes == ()
    s = run(s.active, Queue(), {"c1": IDLE, "c2": IDLE}, now=166.0, memory=s.memory)
    assert changes(s) == [("c2", "drain")]


def test_the_newest_idle_node_goes_first_a_busy_one_is_passed_over() -> None:
    # c2 became idle later than c1 (it booted, then its job ended): c1 waits for it.
    memory = Memory(idle_since={"c1": 0.0, "c2": 40.0})
    s = run(("c1", "c2"), Queue(), {"c1": IDLE, "c2": IDLE}, now=70.0, memory=memory)
    assert s.changes == ()
    s = run(s.active, Queue(), {"c1": IDLE, "c2": IDLE}, now=101.0, memory=s.memory)
    assert changes(s) == [("c2", "drain")]
    # A busy newest node does not hold back idle older ones (down to min; c3 stays).
    s = run(("c1", "c2", "c3"), Queue(), {"c1": IDLE, "c2": IDLE, "c3": BUSY}, now=70.0,
            memory=Memory(idle_since={"c1": 0.0, "c2": 0.0}))
    assert changes(s) == [("c2", "drain"), ("c1", "drain")]


def test_a_node_drained_to_move_is_no_capacity() -> None:
    # c2 moves off a drained host, a long job still on it: a waiting job gets a new node
    moving = Use(busy=True, moving=True)
    s = run(("c1", "c2"), waiting_for(1, 2), {"c1": BUSY, "c2": moving}, now=0.0)
    assert changes(s) == [("c3", "take")]
    # and idle peers are not drained down to min counting it as one that stays
    use = {"c1": IDLE, "c2": moving, "c3": IDLE}
    s = run(("c1", "c2", "c3"), Queue(), use, now=100.0)
    s = run(s.active, Queue(), use, now=200.0, memory=s.memory)
    assert changes(s) == [("c3", "drain")]
    s = run(("c1", "c2"), Queue(), {"c1": IDLE, "c2": moving}, now=100.0)
    assert run(s.active, Queue(), {"c1": IDLE, "c2": moving}, now=200.0,
               memory=s.memory).changes == ()
