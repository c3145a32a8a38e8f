"""apply, stop, cleanup, maintenance and plan against a real cluster of agents, and apply
from a machine that is not part of the cloud."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cloudd_lab.agentlab import AgentLab

pytestmark = pytest.mark.netns

@pytest.fixture
def lab() -> Iterator[AgentLab]:
    with AgentLab("cmd3", hosts=3, subnet="10.234.10.0/24") as lab:
        lab.start_all()
        yield lab


def manifest_of(lab: AgentLab, agent: str) -> str:
    return (lab.agents[agent].folder / "manifests" / "lab.yaml").read_text()


def test_commands_reach_the_leader_and_change_the_cloud(lab: AgentLab, tmp_path: Path) -> None:
    leader, _ = lab.wait_for("a leader", lab.one_leader)
    follower = next(n for n in lab.agents if n != leader)

    # an invalid manifest is refused here, with its problem, and nothing changes
    before = manifest_of(lab, leader)
    bad = tmp_path / "bad.yaml"
    bad.write_text(before.replace("type: web", "type: webb"))
    done = lab.cli(follower, "apply", str(bad))
    assert done.returncode == 1
    assert "unknown type 'webb'" in done.stderr
    assert manifest_of(lab, leader) == before

    # a valid new generation, applied on a follower, is installed by the leader everywhere
    good = lab.agents[follower].folder / "manifests" / "next.yaml.in"
    data = yaml.safe_load(manifest_of(lab, follower))
    data["roles"]["server"][0]["run"] = "manual"
    good.write_text(yaml.safe_dump(data))
    done = lab.cli(follower, "apply", str(good))
    assert done.returncode == 0, done.stderr
    assert f"{leader} carries on" in done.stdout
    lab.wait_for("every member has the new generation",
                 lambda: all("run: manual" in manifest_of(lab, n) for n in lab.agents))

    # maintenance on and off, for a node and for the whole cloud
    done = lab.cli(follower, "maintenance", "on", "lab-database-1")
    assert done.returncode == 0, done.stderr
    assert "in maintenance: lab-database-1" in done.stdout
    done = lab.cli(follower, "maintenance", "on", "lab")
    assert "(cloud)" in done.stdout
    done = lab.cli(follower, "maintenance", "off", "lab")
    done = lab.cli(follower, "maintenance", "off", "lab-database-1")
    assert done.stdout.strip() == "in maintenance: nothing"
    bad_node = lab.cli(follower, "maintenance", "on", "nosuch")
    assert bad_node.returncode == 1 and "unknown node 'nosuch'" in bad_node.stderr

    # cleanup of a node's failures, and plan
    done = lab.cli(follower, "cleanup", "lab-server-1")
    assert done.returncode == 0, done.stderr
    done = lab.cli(follower, "plan")
    assert done.returncode == 0 and f"plan of leader {leader}" in done.stdout

    # stop: the manifest in force becomes ensure: stopped, on every member
    done = lab.cli(follower, "stop", "lab")
    assert done.returncode == 0, done.stderr
    lab.wait_for("every member has ensure: stopped",
                 lambda: all("ensure: stopped" in manifest_of(lab, n) for n in lab.agents))
    events = lab.cli(leader, "events", "--since", "10m")
    assert "command" in events.stdout and "stop" in events.stdout


def test_apply_from_a_machine_outside_the_cloud() -> None:
    """The 2012 thesis's start "from outside the cloud": no pool host has the manifest; an
    agent that is not a member hands it to a pool host, which carries on and passes it to
    the other hosts; the cloud comes up."""
    with AgentLab("out3", hosts=3, subnet="10.234.11.0/24") as lab:
        source = lab.agents["pm1"].folder / "manifests" / "lab.yaml"
        kept = source.with_name("lab.yaml.in")  # not a manifest name: the watcher skips it
        source.rename(kept)
        for name in ("pm2", "pm3"):
            (lab.agents[name].folder / "manifests" / "lab.yaml").unlink()
        outsider = lab.add_outsider("outsider").name
        lab.start_all()
        lab.wait_for("the outsider's agent answers", lambda: lab.status(outsider))
        done = lab.cli(outsider, "apply", str(kept))
        assert done.returncode == 0, done.stderr
        assert "this machine is not part of cloud lab: handed to pm1" in done.stdout
        print("\n" + done.stdout.strip())
        leader, _ = lab.wait_for("a leader once every host has the manifest",
                                 lambda: lab.one_leader(["pm1", "pm2", "pm3"]))
        assert leader in ("pm1", "pm2", "pm3")
        status = lab.status(outsider)
        assert status is not None and status["cloud"] is None
