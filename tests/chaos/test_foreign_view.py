"""The soak's view of the foreign domain: gone only when libvirt says it has no such domain,
unknown (no breach) when virsh could not ask."""

from __future__ import annotations

import subprocess

import pytest
from cloudd_lab.chaos import runner


def answers(*replies: tuple[int, str, str]):  # type: ignore[no-untyped-def]
    left = list(replies)

    def virsh(uri: str, *args: str) -> subprocess.CompletedProcess[str]:
        rc, out, err = left.pop(0)
        return subprocess.CompletedProcess(["virsh", *args], rc, out, err)
    return virsh


@pytest.mark.parametrize(("replies", "seen"), [
    ([(0, "<domain/>", ""), (0, "shut off\n", "")], ("<domain/>", "shut off")),
    ([(1, "", f"error: failed to get domain '{runner.FOREIGN}'\n")], (None, None)),
    ([(1, "", "error: failed to connect to the hypervisor\n")], None),
    ([(0, "<domain/>", ""), (1, "", "error: failed to connect to the hypervisor\n")], None),
])
def test_a_domain_is_gone_only_when_libvirt_says_so(
        monkeypatch: pytest.MonkeyPatch, replies: list[tuple[int, str, str]],
        seen: tuple[str | None, str | None] | None) -> None:
    monkeypatch.setattr(runner, "virsh", answers(*replies))
    assert runner.foreign_view() == seen
