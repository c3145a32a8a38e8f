"""The host agent's OVERLAY command, with the real qemu-img."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cloudd.vmctl.backend import FakeBackend
from cloudd.vmctl.hostagent import CommandOutcome, HostAgent, HostCommand, Op
from cloudd.vmctl.images import backing_file


@pytest.fixture
def agent(tmp_path: Path) -> HostAgent:
    (tmp_path / "images").mkdir()
    return HostAgent(FakeBackend(clock=lambda: 0.0), state_dir=tmp_path / "state", host="pm1",
                     image_dirs=(tmp_path / "images",))


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "images" / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    return path


async def test_overlay_is_created_once_on_its_base(agent: HostAgent, base: Path) -> None:
    image = base.with_name("web2.qcow2")
    cmd = HostCommand(Op.OVERLAY, 1, "c1-web2", image=str(image), base=str(base))
    first = await agent.execute(cmd)
    assert first.outcome is CommandOutcome.DONE, first.message
    assert await backing_file(image) == str(base)
    again = await agent.execute(cmd)
    assert again.outcome is CommandOutcome.NOOP


async def test_overlay_outside_the_image_folders_is_refused(agent: HostAgent, base: Path,
                                                            tmp_path: Path) -> None:
    result = await agent.execute(HostCommand(Op.OVERLAY, 1, "c1-x",
                                             image=str(tmp_path / "x.qcow2"), base=str(base)))
    assert result.outcome is CommandOutcome.FAILED
    assert "outside this host's image folders" in result.message
    assert not (tmp_path / "x.qcow2").exists()


async def test_overlay_of_a_missing_base_fails_with_the_reason(agent: HostAgent,
                                                               tmp_path: Path) -> None:
    result = await agent.execute(HostCommand(
        Op.OVERLAY, 1, "c1-n", image=str(tmp_path / "images" / "n.qcow2"),
        base=str(tmp_path / "images" / "absent.qcow2")))
    assert result.outcome is CommandOutcome.FAILED
    assert "absent.qcow2" in result.message


async def test_overlay_with_a_stale_term_is_refused(agent: HostAgent, base: Path) -> None:
    await agent.execute(HostCommand(Op.LIST, 5))
    result = await agent.execute(HostCommand(Op.OVERLAY, 4, "c1-o",
                                             image=str(base.with_name("o.qcow2")),
                                             base=str(base)))
    assert result.outcome is CommandOutcome.STALE_TERM
