"""The short chaos soak of `make test`: the web cloud of real agents in namespaces under a
fixed seed's faults for 90 s, its invariants checked all along, then converged and every
acknowledged write read back (see lab/cloudd_lab/chaos and docs/operations.md, Chaos soak)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cloudd_lab.chaos.runner import run

pytestmark = [pytest.mark.netns, pytest.mark.services, pytest.mark.libvirt]

SEED, DURATION = 17, 90.0


def test_a_short_soak_breaks_no_invariant(tmp_path: Path) -> None:
    log = tmp_path / f"seed-{SEED}.jsonl"
    summary = run(SEED, DURATION, log_path=log)  # ChaosBreach at the first breach
    print(f"\nchaos seed {SEED}: {summary}")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    made = [e for e in lines if e["event"] == "inject"]
    undone = [e for e in lines if e["event"] == "recover"]
    assert len(made) == sum(summary.planned.values()) == summary.done
    assert {e["fault"] for e in undone} == {e["fault"] for e in made}
    assert all("failed:" not in e["detail"] for e in made + undone), made + undone
    assert summary.writes > 0 and summary.reads > 0 and not summary.breaches
    assert lines[-1]["event"] == "passed"
