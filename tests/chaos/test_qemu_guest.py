"""The soak's reading of qemu command lines: which domain a process runs, from `-name`."""

from __future__ import annotations

import pytest
from cloudd_lab.chaos.vms import qemu_guest


@pytest.mark.parametrize(("cmdline", "domain"), [
    (["/usr/bin/qemu-system-x86_64", "-name", "guest=h26v-lab-server-1,debug-threads=on",
      "-S"], "h26v-lab-server-1"),
    (["qemu-system-x86_64", "-machine", "pc", "-name", "solo"], "solo"),
    (["/usr/bin/qemu-system-x86_64", "-machine", "pc"], None),
    (["/usr/bin/python3", "-name", "guest=h26v-lab-server-1"], None),
    ([], None),
])
def test_the_domain_a_qemu_runs(cmdline: list[str], domain: str | None) -> None:
    assert qemu_guest(cmdline) == domain
