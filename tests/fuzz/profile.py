"""The one hypothesis profile of the fuzz tests: derandomized, so that CI runs the same
examples every time, and small enough that the whole folder takes well under a minute.

For a longer run, scale the examples up: `CLOUDD_FUZZ_SCALE=50 pytest tests/fuzz`; to explore
beyond the fixed examples, `CLOUDD_FUZZ_RANDOM=1` draws a fresh seed each run (hypothesis
prints the failing example, and how to reproduce it, when one fails).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

#: How many times the default example counts to run (an integer, at least 1).
SCALE = max(1, int(os.environ.get("CLOUDD_FUZZ_SCALE", "1")))
#: Whether to draw a fresh seed each run instead of the fixed one.
RANDOM = os.environ.get("CLOUDD_FUZZ_RANDOM", "") not in ("", "0")


def fuzz(examples: int) -> settings:
    """The settings of one property: `examples` times SCALE, deterministic unless RANDOM."""
    return settings(max_examples=examples * SCALE, derandomize=not RANDOM, database=None,
                    deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


#: A hang is a failure: each fuzz module runs under this bound (pytest-timeout), scaled too.
timeout = pytest.mark.timeout(120 * SCALE)
