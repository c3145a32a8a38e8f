"""TORQUE for real: a head and compute nodes in namespaces, jobs from a normal user, daemons
killed and supervised back, compute nodes added and removed."""

from __future__ import annotations

import time

import pytest
from torquelab import USER, TorqueLab, until

from cloudd.errors import TemporaryError
from cloudd.providers.torque.provider import PROVIDER

pytestmark = [pytest.mark.services, pytest.mark.netns]


async def _bring_up(lab: TorqueLab) -> None:
    """Roles in the provider's order, each configured by the leader's hook once it runs."""
    for role in PROVIDER.role_order:
        for label in [lb for lb, r in lab.roles.items() if r == role]:
            await lab.converge(label)
        await PROVIDER.configure(lab.cluster(), role)


def _pbsnodes(lab: TorqueLab) -> str:
    done = lab.client("head", "pbsnodes", "-a")
    return done.stdout + done.stderr


@pytest.mark.timeout(330)
async def test_jobs_run_through_kill_9_of_every_daemon_and_nodes_come_and_go(
        torquelab: TorqueLab) -> None:
    lab = torquelab
    # Nothing runs yet: the leader's hook is refused, to be retried.
    lab.health["head"] = False
    with pytest.raises(TemporaryError, match="has no healthy TORQUE head"):
        await PROVIDER.configure(lab.cluster(), "compute")
    lab.health["head"] = True

    started = time.monotonic()
    await _bring_up(lab)
    # A fresh pbs_mom reads `down` for a while before `free`: waited for, never asserted.
    await until(lab.all_free, "both compute nodes free in pbs_server's view")
    print(f"\n[torque] head and two computes up, nodes free after "
          f"{time.monotonic() - started:.1f} s")
    findings = await lab.findings()
    assert sorted(findings) == ["tq-c1", "tq-c2"]
    assert all(f.message.startswith("free") for f in findings.values())

    # A normal user's job runs on a compute node; its output comes back.
    host, user = await lab.ran(lab.submit("first"))
    assert (host, user) in {("tq-c1", USER), ("tq-c2", USER)}

    # kill -9 of each daemon: the supervisor brings it back, and a new job still runs.
    for label, service in (("head", "pbs_server"), ("head", "pbs_sched"),
                           ("head", "trqauthd"), ("c1", "pbs_mom"), ("c2", "pbs_mom"),
                           ("c1", "trqauthd")):
        killed = time.monotonic()
        old = await lab.kill9(label, service)
        print(f"[torque] kill -9 {service} on {label} (pid {old}): running again after "
              f"{time.monotonic() - killed:.1f} s")
    killed = time.monotonic()
    await until(lab.all_free, "both compute nodes free again after the kills")
    print(f"[torque] nodes free again {time.monotonic() - killed:.1f} s after the last kill")
    host, user = await lab.ran(lab.submit("after-kills"))
    assert (host, user) in {("tq-c1", USER), ("tq-c2", USER)}

    # A compute node added: registered by the leader's hook, and it takes jobs.
    lab.add("c3", "compute")
    await lab.converge("c3")
    await PROVIDER.configure(lab.cluster(), "compute")
    assert "tq-c3" in _pbsnodes(lab)
    await until(lab.all_free, "the new compute node free")
    assert await lab.ran(lab.submit("on-c3", where="tq-c3")) == ["tq-c3", USER]

    # One removed: its services stop, the hook deletes it from pbs_server, jobs go on.
    await lab.stop("c3")
    lab.forget("c3")
    await PROVIDER.configure(lab.cluster(), "compute")
    assert "tq-c3" not in _pbsnodes(lab)
    assert sorted(await lab.findings()) == ["tq-c1", "tq-c2"]
    host, _ = await lab.ran(lab.submit("after-removal"))
    assert host in {"tq-c1", "tq-c2"}
