"""Fixtures of the Slurm provider's real-daemon tests (the lab itself is in slurmlab.py)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator

import pytest
from cloudd_lab.nodens import NodeLab
from slurmlab import PREFIX, SUBNET, USER, SlurmLab, drop_user, make_user


@pytest.fixture
async def slurmlab(have) -> AsyncIterator[SlurmLab]:  # type: ignore[no-untyped-def]
    for program in ("munged", "munge", "slurmctld", "slurmd", "sbatch", "scontrol", "setpriv",
                    "nsenter", "unshare", "useradd"):
        have(program)
    make_user()
    lab = None
    try:
        with NodeLab(PREFIX, subnet=SUBNET) as nodes:
            secrets = nodes.root / "secrets"
            secrets.mkdir(mode=0o700)
            (secrets / "munge").write_bytes(os.urandom(1024))
            shared = nodes.root / "shared"
            shared.mkdir(mode=0o755)
            shutil.chown(shared, USER, USER)
            lab = SlurmLab(nodes=nodes, secrets=secrets, shared=shared)
            try:
                yield lab
            finally:
                await lab.stop_all()
    finally:
        drop_user()
