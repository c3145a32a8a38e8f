"""The AppScale provider's pure decisions and checks (the lifecycle runs for real in
tests/real/providers/appscale/test_appscale_provider_real.py)."""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import ip_address
from pathlib import Path

import pytest

from cloudd.errors import PermanentError
from cloudd.providers.appscale import jobs, sshtrust
from cloudd.providers.appscale.provider import PROVIDER, forgotten, next_run, trust
from cloudd.providers.appscale.spec import ROLES
from cloudd.providers.base import Assignment, Peer

DONE_UP = jobs.JobView("up", jobs.JobState.DONE)


@pytest.mark.parametrize(("view", "back", "run"), [
    (jobs.JobView("", jobs.JobState.NONE), False, "up"),
    (jobs.JobView("up", jobs.JobState.FAILED, "AppScale is already running"), False, "up"),
    (jobs.JobView("respawn", jobs.JobState.LOST), True, "up"),
    (jobs.JobView("down", jobs.JobState.DONE), False, "up"),
    (DONE_UP, False, None),
    (DONE_UP, True, "respawn"),
    (jobs.JobView("respawn", jobs.JobState.DONE), False, None),
])
def test_what_the_deployment_needs_next(view: jobs.JobView, back: bool,
                                        run: str | None) -> None:
    assert next_run(view, back=back) == run


def test_the_roles_run_in_appscales_order() -> None:
    assert PROVIDER.role_order == tuple(r.name for r in ROLES)
    assert PROVIDER.role_order.index("master") < PROVIDER.role_order.index("compute")


def node(tmp_path: Path) -> Assignment:
    return Assignment(cloud="as1", node="w1", role="compute", address=ip_address("10.0.0.3"),
                      root=tmp_path, secrets_dir=tmp_path / "secrets",
                      peers=(Peer("head", "master", ip_address("10.0.0.2"), True,
                                  ("master", "database")),))


@pytest.mark.parametrize(("args", "why"), [
    ({"master": "10.0.0.9"}, "'10.0.0.9' is not the master of as1"),
    ({"public": "ssh-ed25519 AAAAC3Nz operator@laptop"},
     "the key is not as1's client key (its comment differs)"),
])
async def test_a_node_trusts_only_its_masters_address_and_its_clouds_key(
        tmp_path: Path, args: dict[str, str], why: str) -> None:
    public = sshtrust.client_key(b"\x01" * 32, cloud="as1").public_line
    with pytest.raises(PermanentError) as info:
        await trust(node(tmp_path), {"public": public, "master": "10.0.0.2", **args})
    assert str(info.value) == why


@pytest.mark.parametrize(("answer", "lost"), [
    (None, False),  # no answer: nothing known
    ({"summary": "up", "node 10.0.0.2": "loaded master", "node 10.0.0.3": "loaded compute"},
     False),
    ({"summary": "up", "node 10.0.0.2": "loaded master",
      "node 10.0.0.3": "unreported compute"}, True),
    ({"summary": "up", "node 10.0.0.2": "initialized master"}, True),  # 10.0.0.3 missing
    ({"summary": "up", "node 10.0.0.2": "starting master", "node 10.0.0.3": "starting"},
     False),
])
def test_a_node_appscale_lost_is_seen_in_its_status(answer: dict[str, str] | None,
                                                      lost: bool) -> None:
    assert forgotten(answer, ["10.0.0.2", "10.0.0.3"]) is lost


async def test_the_masters_words_reach_inspect_bounded_and_only_for_its_nodes() -> None:
    """The master is a node (a tenant's VM): what it answers is cut to a few hundred
    characters before it becomes a finding, and a row naming no node of the deployment is
    dropped."""
    from cloudd.providers.base import ClusterView

    answers = {
        "result": {"verb": "up", "state": "done", "message": "x" * 10_000},
        "status": {"summary": "up", "node 10.0.0.2": "loaded " + "m" * 10_000,
                   "node 10.0.0.3": "unreported compute", "node 10.9.9.9": "loaded evil"},
    }

    async def ask(node: str, action: str, args: Mapping[str, str]) -> Mapping[str, str]:
        return answers[action]

    cluster = ClusterView(cloud="as1", ask=ask, nodes=(
        Peer("head", "master", ip_address("10.0.0.2"), True),
        Peer("w1", "compute", ip_address("10.0.0.3"), True)))
    found = await PROVIDER.monitor(cluster)
    assert all(len(f.message) <= 250 and len(f.state) <= 32 for f in found), found
    assert [(f.check, f.node, f.ok) for f in found] == [
        ("appscale-run", "head", True), ("appscale", "head", True), ("appscale", "w1", False)]


def test_a_generated_seed_reads_back_as_its_random_bytes() -> None:
    raw = bytes(range(32))
    contents = sshtrust.HOST_SEED.contents(raw)
    assert b"=" not in contents and sshtrust.HOST_SEED.random_bytes(contents + b"\n") == raw
