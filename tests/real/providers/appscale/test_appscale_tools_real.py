"""cloudd's AppScale tools driving the lab's stand-in for `appscale` (named as one in its output)
over real sshd in three namespaced nodes, with the trust `sshtrust` makes."""

from __future__ import annotations

import json

import pytest
from aslab import KEYNAME, ASLab
from cloudd_lab.appscale_standin import BANNER

from cloudd.providers.appscale import sshtrust, tools

pytestmark = pytest.mark.netns


def ledger(lab: ASLab) -> list[tuple[str, ...]]:
    lines = lab.ledger.read_text().splitlines() if lab.ledger.exists() else []
    entries = [json.loads(line) for line in lines]
    assert all(e["cwd"] == str(lab.folder) for e in entries)
    return [tuple(e["argv"]) for e in entries]


def states(report: tools.StatusReport) -> dict[str, tools.NodeState]:
    return {n.address: n.state for n in report.nodes}


async def test_up_status_respawn_down_through_the_stand_in(aslab: ASLab) -> None:
    lab = aslab
    for label in ("m", "w1", "w2"):
        lab.install_trust(label)
        await lab.start_sshd(label)
    settings = lab.settings()
    ips = [lab.ip(label) for label in ("m", "w1", "w2")]

    done = await tools.up(settings)
    assert done.output.startswith(BANNER), done.output
    assert "AppScale successfully started!" in done.output
    head = lab.ns["m"].outside(f"/root/.appscale/locations-{KEYNAME}.json")
    node_info = json.loads(head.read_text())["node_info"]
    assert [n["public_ip"] for n in node_info] == ips
    assert {"shadow", "load_balancer", "database", "zookeeper"} <= set(node_info[0]["roles"])

    report = await tools.status(settings)
    assert report.summary is tools.Summary.UP
    assert states(report) == dict.fromkeys(ips, tools.NodeState.LOADED)
    master = report.node(ips[0])
    assert master is not None and "shadow" in master.roles

    # w1's VM is respawned: a new sshd, root's ~/.ssh gone. Until its trust is back the
    # master cannot log in: status reports it as a node that did not report.
    lab.kill_sshd("w1")
    lab.wipe_root_ssh("w1")
    await lab.start_sshd("w1")
    report = await tools.status(settings)
    assert report.summary is tools.Summary.PARTIAL
    assert states(report)[ips[1]] is tools.NodeState.UNREPORTED
    assert states(report)[ips[2]] is tools.NodeState.LOADED

    lab.install_trust("w1")
    results = await tools.respawn(settings)
    assert [(r.command.verb, r.ok) for r in results] == [(tools.Verb.DOWN, True),
                                                         (tools.Verb.UP, True)]
    report = await tools.status(settings)
    assert states(report) == dict.fromkeys(ips, tools.NodeState.LOADED)

    done = await tools.down(settings)
    assert "Successfully stopped your AppScale deployment." in done.output
    assert not head.exists()
    with pytest.raises(tools.ToolsFailed, match="AppScale may not be running"):
        await tools.status(settings)

    assert ledger(lab) == [
        ("appscale", "up"), ("appscale", "status", "--verbose"),
        ("appscale", "status", "--verbose"),
        ("appscale", "down"), ("appscale", "up"), ("appscale", "status", "--verbose"),
        ("appscale", "down"), ("appscale", "status", "--verbose")]


async def test_the_trust_refuses_a_wrong_host_key_and_other_sources(aslab: ASLab) -> None:
    lab = aslab
    for label in ("m", "w1", "w2"):
        lab.install_trust(label)
        await lab.start_sshd(label)

    ok = lab.ssh_from("m", lab.ip("w2"))
    assert ok.returncode == 0 and ok.stdout.strip() == "as-w2", ok.stderr

    # A host key other than the deployment's (another seed) is refused, not learnt.
    other = sshtrust.host_key(bytes(32), cloud="as1").public_line
    wrong = lab.ssh_from("m", lab.ip("w2"),
                         known_hosts=sshtrust.known_hosts(other, lab.trust_nodes()))
    assert wrong.returncode == 255
    assert "Host key verification failed" in wrong.stderr, wrong.stderr
    # An address the known_hosts does not name is refused too (StrictHostKeyChecking=yes).
    unknown = lab.ssh_from("m", lab.ip("w2"), known_hosts="")
    assert unknown.returncode == 255 and "Host key verification failed" in unknown.stderr

    # The master's key from another node is refused: authorized_keys names the master's address.
    key = sshtrust.client_key(lab.client_seed, cloud="as1").private_text
    good_hosts = (lab.ns["m"].outside("/root/.appscale/as1.known_hosts")).read_text()
    stolen = lab.ssh_from("w1", lab.ip("w2"), known_hosts=good_hosts, key_text=key)
    assert stolen.returncode == 255 and "Permission denied" in stolen.stderr, stolen.stderr


async def test_up_refuses_a_missing_key_and_a_bad_layout(aslab: ASLab) -> None:
    lab = aslab
    settings = lab.settings()
    with pytest.raises(tools.ToolsFailed, match="interactive appscale-add-keypair"):
        await tools.up(settings)
    text = (lab.folder / "AppScalefile").read_text()
    (lab.folder / "AppScalefile").write_text(text.replace("- master", "- compute"))
    lab.install_trust("m")
    with pytest.raises(tools.ToolsFailed, match="Need to specify one master node"):
        await tools.up(settings)
    assert ledger(lab) == [("appscale", "up"), ("appscale", "up")]
