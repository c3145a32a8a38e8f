"""Fixtures of the AppScale tools' real tests (the lab itself is in aslab.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aslab import PREFIX, PRIVATE, SUBNET, ASLab
from cloudd_lab.nodens import NodeLab


@pytest.fixture
def aslab(have) -> Iterator[ASLab]:  # type: ignore[no-untyped-def]
    for program in ("sshd", "ssh", "nsenter", "unshare"):
        have(program)
    with NodeLab(PREFIX, subnet=SUBNET, private=PRIVATE) as nodes:
        lab = ASLab(nodes=nodes)
        try:
            lab.build()
            yield lab
        finally:
            lab.stop_all()
