"""NetLab refuses bad arguments before it makes anything (the real kernel's side is in
tests/real/lab/test_netlab_real.py)."""

from __future__ import annotations

import pytest
from cloudd_lab.netlab import NetLab, NetLabError


@pytest.mark.parametrize(("prefix", "subnet", "message"), [
    ("", "10.231.0.0/24", "prefix ''"),
    ("bad-name", "10.231.0.0/24", "prefix 'bad-name'"),
    ("waytoolongprefix", "10.231.0.0/24", "prefix 'waytoolongprefix'"),
    ("h7", "10.231.0.0/33", "not an IPv4 network"),
    ("h7", "10.231.0.0/31", "too small"),
])
def test_bad_arguments_are_refused_before_anything_is_made(prefix: str, subnet: str,
                                                           message: str) -> None:
    with pytest.raises(NetLabError, match=message):
        NetLab(prefix, subnet=subnet)
