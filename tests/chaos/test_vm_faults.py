"""The injector's VM faults on a lab that records what it is asked: each fault is undone with
what it made (the qemu it stopped is the one continued), and a soak that ends early starts
libvirtd again."""

from __future__ import annotations

from cloudd_lab.chaos.faults import Injector
from cloudd_lab.chaos.schedule import Fault


class RecordingLab:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def kill_qemu(self, node: str) -> str:
        self.calls.append(("kill", node))
        return f"killed {node}"

    def stop_qemu(self, node: str) -> tuple[str, int | None]:
        self.calls.append(("stop", node))
        return f"stopped {node}", 4242

    def continue_qemu(self, pid: int | None) -> str:
        self.calls.append(("continue", pid))
        return f"continued {pid}"

    def stop_libvirtd(self) -> str:
        self.calls.append(("libvirtd", "stop"))
        return "stopped"

    def start_libvirtd(self) -> str:
        self.calls.append(("libvirtd", "start"))
        return "started"


def test_each_vm_fault_is_made_and_undone_with_what_it_made() -> None:
    lab = RecordingLab()
    injector = Injector(lab)
    kill = Fault(1, "qemu_kill", "lab-server-1/qemu", 0, 150)
    stop = Fault(2, "qemu_stop", "lab-balancer-1/qemu", 160, 170)
    restart = Fault(3, "libvirtd_restart", "libvirtd", 180, 182)
    for f in (kill, stop, restart):
        injector.inject(f)
        injector.recover(f)
    assert lab.calls == [("kill", "lab-server-1"), ("stop", "lab-balancer-1"),
                         ("continue", 4242), ("libvirtd", "stop"), ("libvirtd", "start")]
    assert injector.recover(kill) == "nothing to undo: the leader starts the domain again"


def test_healing_a_soak_stopped_early_starts_libvirtd() -> None:
    lab = RecordingLab()
    injector = Injector(lab)
    injector.inject(Fault(1, "libvirtd_restart", "libvirtd", 0, 2))
    assert injector.heal() == ["started"]
    assert lab.calls[-1] == ("libvirtd", "start")
