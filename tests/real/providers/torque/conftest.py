"""Fixtures of the TORQUE provider's real tests (the lab itself is in torquelab.py)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cloudd_lab.nodens import NodeLab
from torquelab import PREFIX, SUBNET, TorqueLab, drop_user, make_user

from cloudd.providers.torque.layout import PREFIX as TORQUE
from cloudd.providers.torque.layout import program

#: Where `make test` takes TORQUE's source from (scripts/build-torque.sh's default).
SOURCE = Path(os.environ.get("CLOUDD_TORQUE_SOURCE") or Path(__file__).resolve().parents[4]
              .parent / "shared" / "third_party" / "torque-6.1.3.h5.tar.gz")


def built_or_skipped() -> None:
    """TORQUE is built (`make test` builds it first, so its absence fails), unless this
    machine has no source tarball to build it from: then the tests are skipped, saying so."""
    if not (TORQUE / "sbin").exists() and not SOURCE.exists():
        pytest.skip(f"TORQUE is not built here and its source tarball is not at {SOURCE} "
                    "(set CLOUDD_TORQUE_SOURCE and run scripts/build-torque.sh)")
    for name in ("pbs_server", "pbs_sched", "pbs_mom", "trqauthd"):
        if not (TORQUE / "sbin" / name).exists():
            pytest.fail(f"{program('sbin', name)} is missing: build TORQUE with "
                        "scripts/build-torque.sh (make test does it first)")


@pytest.fixture
async def torquelab(have) -> AsyncIterator[TorqueLab]:  # type: ignore[no-untyped-def]
    """One head and two compute nodes' namespaces (nothing started), the job user and a
    shared folder (`built_or_skipped` first)."""
    built_or_skipped()
    have("nsenter")
    have("setpriv")
    # TORQUE's daemons refuse a PBS_HOME below a world-writable folder, even a sticky one
    # (/var/tmp): the lab's folders go under /var/lib, as a node's root would.
    with NodeLab(PREFIX, subnet=SUBNET, base=Path("/var/lib")) as nodes:
        shared = nodes.root / "shared"
        shared.mkdir()
        shared.chmod(0o1777)
        make_user(shared / "home")
        lab = TorqueLab(nodes=nodes, shared=shared)
        try:
            lab.add("head", "head")
            lab.add("c1", "compute")
            lab.add("c2", "compute")
            yield lab
        finally:
            await lab.stop_all()
            drop_user()
