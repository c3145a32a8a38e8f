"""The simulator's clocks: an agent is woken when its own clock reads the deadline it asked
for, once, even when its offset and the global time round badly.

Each agent's clock is global time plus its offset, and a wake asked for at local `at` is
scheduled at global `at - offset`. For some offsets and times that subtraction rounds to
an instant whose local reading is one last digit short of `at`: the agent, woken, finds
nothing due, asks for `at` again, and was woken at the same instant for ever (bench runs
of simulated minutes met it and worked around it). The core here is a stand-in with one
deadline, so that the test is about the simulator's clock alone.
"""

from __future__ import annotations

import math

from cloudd.election.agent import Output
from cloudd.election.states import ElectionRole

from .sim import Sim

#: A global time and an offset for which `(at - offset) + offset < at`, `at` being the
#: next representable instant after the agent's clock reading (found by a search).
NOW, OFFSET = 134.0823278047862, 91.68312261651779


class OneDeadlineCore:
    """Stands in for `AgentCore`: one deadline at local `at`, then nothing for a second."""

    role = ElectionRole.FOLLOWER
    leader = ""

    def __init__(self, at: float) -> None:
        self.at = at
        self.ticks: list[float] = []

    def tick(self, now: float) -> Output:
        self.ticks.append(now)
        assert len(self.ticks) < 50, f"woken {len(self.ticks)} times, at {sorted(set(self.ticks))}"
        wake = now + 1.0 if now >= self.at else self.at
        return Output(messages=(), persist_term=None, events=(), acting=False,
                      acting_until=None, wake_at=wake)

    def is_acting(self, now: float) -> bool:
        return False


def test_a_deadline_a_rounding_error_ahead_wakes_the_agent_once_and_on_time() -> None:
    sim = Sim(3, hosts=3, seed=1)
    name = sim.names[0]
    sim.offset[name] = OFFSET
    sim.run_until(NOW)
    at = math.nextafter(sim._local(name), math.inf)
    assert at - OFFSET <= sim.now and (at - OFFSET) + OFFSET < at  # the rounding at stake
    core = OneDeadlineCore(at)
    sim.agents[name] = core  # type: ignore[assignment]
    sim._apply(name, core.tick(sim._local(name)))
    sim.run_for(0.5)
    assert len(core.ticks) == 2 and core.ticks[1] >= at
    assert sim.now == NOW + 0.5


def test_a_deadline_due_at_once_never_moves_the_simulation_back() -> None:
    """A deadline at the agent's current reading (something due at once) is met at the
    current instant: scheduled at `at - offset`, a rounding error in the past, it moved the
    whole simulation's time back, and every other agent with it."""
    now, offset = 121.18883313569249, 606.8017336408379  # (now + offset) - offset < now
    sim = Sim(3, hosts=3, seed=1)
    name = sim.names[0]
    sim.offset[name] = offset
    sim.run_until(now)
    at = sim._local(name)
    assert at - offset < sim.now  # the rounding at stake
    core = OneDeadlineCore(at)
    sim.agents[name] = core  # type: ignore[assignment]
    seen: list[float] = []
    sim.checks.append(lambda: seen.append(sim.now))
    sim._apply(name, Output(messages=(), persist_term=None, events=(), acting=False,
                            acting_until=None, wake_at=at))
    sim.run_for(0.5)
    assert core.ticks == [at] and seen and min(seen) >= now
