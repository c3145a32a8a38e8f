"""The soak's schedule: a pure function of its seed, its faults within the soak and apart."""

from __future__ import annotations

import itertools

import pytest
from cloudd_lab.chaos.schedule import (
    KINDS,
    VM_GAP,
    VM_KINDS,
    Fault,
    Targets,
    counts,
    members_of,
    plan,
    steps,
)

TARGETS = Targets(hosts=("pm1", "pm2", "pm3"),
                  nodes=("lab-database-1", "lab-server-1", "lab-server-2", "lab-balancer-1"),
                  disks=("pm1", "lab-server-1"), clock="pm3")


def test_the_seed_reproduces_the_schedule_and_another_seed_gives_another() -> None:
    assert plan(17, 600, TARGETS) == plan(17, 600, TARGETS)
    assert plan(17, 600, TARGETS) != plan(18, 600, TARGETS)


def test_every_fault_is_made_and_undone_within_the_soak() -> None:
    faults = plan(3, 900, TARGETS)
    assert len(faults) > 50
    assert all(0 < f.at < f.until <= 900 for f in faults)
    for f in faults:
        _, shortest, longest = KINDS[f.kind]
        assert shortest <= round(f.until - f.at, 2) <= longest + 0.01, f


@pytest.mark.parametrize("concurrency", [1, 2, 3])
def test_at_most_concurrency_faults_at_once_and_never_two_on_one_member(
        concurrency: int) -> None:
    faults = plan(5, 1200, TARGETS, concurrency=concurrency)
    for f in faults:
        live = [g for g in faults if g.at <= f.at < g.until]
        assert len(live) <= concurrency, (f, live)
    for a, b in itertools.combinations(faults, 2):
        if a.at < b.until and b.at < a.until:
            assert not members_of(a.target) & members_of(b.target), (a, b)


def test_a_long_soak_draws_every_kind_and_targets_only_what_the_kind_may_hit() -> None:
    faults = plan(11, 3600, TARGETS)
    assert set(counts(faults)) == set(KINDS) - set(VM_KINDS)
    for f in faults:
        assert f.target in TARGETS.of(f.kind), f
    assert {f.target for f in faults if f.kind == "clock_step"} == {"pm3"}
    assert all(0.1 <= f.arg <= 0.5 for f in faults if f.kind == "loss")
    assert all(30 <= abs(f.arg) <= 300 for f in faults if f.kind == "clock_step")


def test_a_kind_without_targets_is_never_drawn() -> None:
    bare = Targets(hosts=("pm1", "pm2"), nodes=(), disks=())
    kinds = set(counts(plan(2, 1200, bare)))
    assert kinds.isdisjoint({"disk_full", "clock_step", "service_kill", "service_stop"})


def test_steps_undo_each_fault_after_making_it_and_a_recover_goes_first_at_one_time() -> None:
    a = Fault(1, "agent_kill", "pm1", 1.0, 5.0)
    b = Fault(2, "isolate", "pm1", 5.0, 7.0)
    out = [(s.at, s.action, s.fault.id) for s in steps([b, a])]
    assert out == [(1.0, "inject", 1), (5.0, "recover", 1), (5.0, "inject", 2),
                   (7.0, "recover", 2)]


def test_targets_name_their_members() -> None:
    assert members_of("pm1|pm2") == {"pm1", "pm2"}
    assert members_of("lab-server-1/ruby") == {"lab-server-1"}
    assert members_of("cloud/lab-server-1") == members_of("cloud") == {"cloud"}


def test_nonsense_is_refused() -> None:
    with pytest.raises(ValueError, match="duration must be positive"):
        plan(1, 0, TARGETS)
    with pytest.raises(ValueError, match="concurrency must be at least 1"):
        plan(1, 10, TARGETS, concurrency=0)


VM_TARGETS = Targets(hosts=("pm1", "pm2", "pm3"), nodes=("lab-database-1",),
                     disks=("pm1", "pm2"), clock="pm3",
                     vms=("lab-server-1", "lab-server-2", "lab-balancer-1"))


def test_without_vms_the_schedule_is_the_namespace_soaks_of_before() -> None:
    """The VM kinds are drawn only with VM targets: a namespace soak's seed gives the faults
    it gave before they existed (the README's figures stay reproducible)."""
    faults = plan(17, 90, TARGETS)
    assert not set(counts(faults)) & set(VM_KINDS)
    assert [(f.kind, f.target, f.at) for f in faults[:3]] == [
        (f.kind, f.target, f.at) for f in plan(17, 90, TARGETS, gap=(1.0, 6.0))[:3]]


def test_with_vms_the_vm_kinds_hit_only_vms_one_at_a_time_and_apart() -> None:
    faults = plan(26, 3600, VM_TARGETS)
    assert set(counts(faults)) == set(KINDS)
    vm = [f for f in faults if f.kind in VM_KINDS]
    for f in vm:
        assert f.target in VM_TARGETS.of(f.kind)
        assert f.target == "libvirtd" or f.target.removesuffix("/qemu") in VM_TARGETS.vms
    for a, b in itertools.combinations(vm, 2):
        assert a.until <= b.at or b.until <= a.at, (a, b)
    for f in (f for f in faults if f.kind == "qemu_kill"):
        assert f.until - f.at >= KINDS["qemu_kill"][1]  # time for the guest to boot again
    # the namespace kinds keep to the namespace members
    for f in faults:
        if f.kind in ("agent_kill", "agent_stop", "isolate", "loss", "service_kill"):
            assert not members_of(f.target) & set(VM_TARGETS.vms), f
    starts = sorted(f.at for f in faults)
    assert all(b - a >= VM_GAP[0] - 0.01 for a, b in itertools.pairwise(starts))


def test_a_vm_fault_holds_its_node_and_the_vm_slot() -> None:
    assert members_of("lab-server-1/qemu") == {"lab-server-1", "vm"}
    assert members_of("libvirtd") == {"libvirtd", "vm"}
    assert Fault(1, "qemu_kill", "lab-server-1/qemu", 0, 1).holds(
        Fault(2, "libvirtd_restart", "libvirtd", 0, 1))
