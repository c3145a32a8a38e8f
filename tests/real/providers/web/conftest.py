"""Fixtures of the web provider's real-service tests (the lab itself is in weblab.py)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cloudd_lab.netlab import NetLab
from weblab import LABELS, PREFIX, SUBNET, WebLab


@pytest.fixture
def webroot(have) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    """The nodes' root dirs. Not under pytest's tmp_path: its parents are 0700, and mysql and
    www-data must traverse to their files."""
    for program in ("nginx", "mariadbd", "mariadb-install-db", "ruby", "setpriv"):
        have(program)
    root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-", dir="/var/tmp"))
    root.chmod(0o755)
    secrets = root / "secrets"
    secrets.mkdir(mode=0o700)
    (secrets / "db_password").write_text("correct horse 'battery'\n")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def weblab(webroot: Path) -> AsyncIterator[WebLab]:
    root, secrets = webroot, webroot / "secrets"
    net = NetLab(PREFIX, subnet=SUBNET)
    lab = None
    try:
        with net:
            lab = WebLab(net=net, root=root, secrets=secrets,
                         ns={label: net.add_netns(label) for label in LABELS})
            yield lab
            await lab.stop_all()
    finally:
        if lab is not None:
            await lab.stop_all()
