"""The shared checks of values rendered into configuration files and command lines: a value
ending in a newline is not a plain one (a `$` in a pattern would let it through)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from cloudd.config.sources import SECRET_NAME
from cloudd.errors import PermanentError
from cloudd.providers import values


@pytest.mark.parametrize(("check", "good", "bad", "why"), [
    (values.label, "hpc-c1", "hpc-c1\n", "not a DNS label"),
    (values.identifier, "cloudd_app", "cloudd_app\n", "not a plain identifier"),
    (values.path, "/var/lib/cloudd", "/var/lib/cloudd\n", "not a plain absolute path"),
])
def test_a_trailing_newline_is_refused(check: Callable[..., Any], good: str, bad: str,
                                       why: str) -> None:
    assert str(check(good, what="it", target="t")) == good
    with pytest.raises(PermanentError, match=f": {why}$"):
        check(bad, what="it", target="t")


def test_a_secret_name_may_not_end_in_a_newline() -> None:
    assert SECRET_NAME.match("munge.key") and not SECRET_NAME.match("munge.key\n")
