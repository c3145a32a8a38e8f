"""The leader's side of providers, on real agents: two pool hosts and three `managed: false`
nodes of an `appscale`-typed cloud, each agent in its own namespace, running a tiny provider
of this test's own (`hooks_provider`, registered by `hooks_agent.py`).

The leader configures the servers' role by having the controller node's role act
(`NodeAction` over mTLS, answered by the role); its monitor's findings (the controller's
"scheduler" view of each server, and a server's refusal of an action its role lacks) show in
`cloudd-cli inspect`, text and JSON, and are logged only when they change. A server's agent
killed: the role is configured again without it, and inspect shows it down in the scheduler
beside cloudd's own view. A hand-made client with real certificates of the cluster CA sends
`NodeAction`s a node must refuse: from the pool host that does not lead, from a node, from an
operator, and, as the leader, an action the role does not have or with arguments it does not
take. Last, `cloudd-cli stop`: the provider's stop drains the controller before the nodes are
told to stop their services.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cloudd_lab.agentlab import AgentLab
from test_abuse_real import authenticated

from cloudd.daemon.network.catalogue import NodeActed, NodeAction, register_all
from cloudd.daemon.network.codec import FrameDecoder, default_codec
from cloudd.daemon.network.transport import RemoteFailure
from cloudd.pki import MemberKind, PkiFiles, issue

pytestmark = pytest.mark.netns

#: Generous bound on every wait for the real processes (the machine is shared).
BOUND = 60.0
AGENT = Path(__file__).with_name("hooks_agent.py")
HEAD, S1, S2, S3 = "lab-controller-1", "lab-servers-1", "lab-servers-2", "lab-servers-3"
#: Seconds between two monitors (the manifest's `timing.monitor_interval`).
MONITOR = 1


class HooksLab(AgentLab):
    """Agents run `hooks_agent.py`; the manifest asks for a monitor every second."""

    def start(self, name: str) -> None:
        agent = self.agents[name]
        if agent.log_file is None:
            agent.log_file = open(agent.log_path, "ab")  # noqa: SIM115 (closed in close())
        agent.proc = subprocess.Popen(
            ["ip", "netns", "exec", agent.ns.name, sys.executable, str(AGENT), "--config",
             str(agent.folder / "agent.yaml")],
            stdout=agent.log_file, stderr=agent.log_file, start_new_session=True)

    def manifest_extra(self) -> str:
        return f"timing: {{monitor_interval: {MONITOR}}}\n"


@pytest.fixture
def lab() -> Iterator[HooksLab]:
    # lab-servers-3 runs no agent: its node certificate is the insider's
    with HooksLab("h22k", hosts=2, subnet="10.239.38.0/24", cloud_type="appscale",
                  nodes={"controller": 1, "servers": 3},
                  agent_nodes=(HEAD, S1, S2)) as lab:
        lab.start_all()
        yield lab


def inspect(lab: AgentLab, agent: str) -> dict[str, Any] | None:
    done = lab.cli(agent, "inspect", "--json")
    if done.returncode != 0:
        return None
    cloud = json.loads(done.stdout)["clouds"][0]
    return cloud if cloud["source"] == "leader" else None


def scheduler(cloud: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Each node's scheduler view in the leader's inspect: (state, ok)."""
    return {n["name"]: (f["state"], f["ok"]) for n in cloud["nodes"] for f in n["findings"]
            if f["check"] == "scheduler"}


def registered(lab: AgentLab) -> list[str] | None:
    path = lab.root / HEAD / "state" / "nodes" / HEAD / "registered.json"
    return json.loads(path.read_text()) if path.exists() else None


def logged(lab: AgentLab, agent: str, event: str, **fields: Any) -> list[dict[str, Any]]:
    return [e for e in lab.log_events() if e["agent"] == agent and e.get("event") == event
            and all(e.get(k) == v for k, v in fields.items())]


def ask(lab: AgentLab, sender: str, msg: NodeAction) -> object:
    """Send `msg` to the controller node's agent as `sender` (its real certificate from the
    cluster CA); the reply."""
    pki = lab.root / "pki"
    sock = authenticated(lab.agents[HEAD].ns.ip, pki / "ca.crt", PkiFiles.for_member(pki, sender),
                         sender)
    try:
        sock.sendall(default_codec.encode(msg, rid=7, request=True))
        decoder = FrameDecoder(default_codec)
        sock.settimeout(BOUND)
        while True:
            chunk = sock.recv(65536)
            assert chunk, f"{HEAD} closed the connection instead of answering"
            frames = [f for f in decoder.feed_frames(chunk) if f.reply and f.rid == 7]
            if frames:
                return frames[0].msg
    finally:
        sock.close()


def test_hooks_configure_act_monitor_refuse_and_stop(lab: HooksLab) -> None:
    register_all(default_codec)
    t0 = time.monotonic()
    hosts = ["pm1", "pm2"]
    leader, term = lab.wait_for("a leader", lambda: lab.one_leader(hosts), timeout=BOUND)
    # configure -> the controller's role acted on the leader's NodeAction -> its answer
    lab.wait_for("both live servers registered on the controller",
                 lambda: registered(lab) == [S1, S2], timeout=BOUND, interval=0.2)
    print(f"\nleader {leader} (term {term}); servers registered after "
          f"{time.monotonic() - t0:.1f} s")
    cloud = lab.wait_for("the scheduler's view in inspect", lambda: (
        (c := inspect(lab, leader)) is not None
        and scheduler(c) == {S1: ("idle", True), S2: ("idle", True), S3: ("down", False)}
        and c), timeout=BOUND, interval=0.5)
    nodes = {n["name"]: n for n in cloud["nodes"]}
    refusal = [f for f in nodes[S1]["findings"] if f["check"] == "refusal"]
    assert refusal and refusal[0]["message"] == (
        f"{S1}: role servers of {S1} has no action 'list' (actions: none)"), refusal
    # any agent's inspect shows the leader's view: a node's too
    follower_view = inspect(lab, S1)
    assert follower_view is not None and scheduler(follower_view)[S3] == ("down", False)
    text = lab.cli(leader, "inspect").stdout
    row = next(ln for ln in text.splitlines() if ln.split()[:1] == [S3])
    assert "SCHEDULER" in text and " down" in row and "PROVIDER CHECKS" in text
    print(text)
    # logged once, not on every monitor round
    time.sleep(4 * MONITOR)
    first = logged(lab, leader, "provider_finding", node=S3, check="scheduler", term=term)
    assert len(first) == 1 and first[0]["ok"] is False, first

    # a server's agent dies: the role is configured again without it, and inspect says it is
    # down in the scheduler, beside its agent's liveness
    lab.kill(S2)
    t1 = time.monotonic()
    lab.wait_for("the dead server deregistered", lambda: registered(lab) == [S1],
                 timeout=BOUND, interval=0.2)
    cloud = lab.wait_for("the dead server down in the scheduler", lambda: (
        (c := inspect(lab, leader)) is not None and scheduler(c).get(S2) == ("down", False)
        and c), timeout=BOUND, interval=0.5)
    print(f"kill -9 {S2}'s agent: deregistered and shown down after "
          f"{time.monotonic() - t1:.1f} s; its agent is "
          f"{next(n['agent_liveness'] for n in cloud['nodes'] if n['name'] == S2)}")
    # each change of its verdict logged once: the last two, up then down
    oks = [e["ok"] for e in logged(lab, leader, "provider_finding", node=S2, check="scheduler",
                                   term=term)]
    assert oks[-2:] == [True, False] and all(a != b for a, b in itertools.pairwise(oks)), oks

    # NodeActions a node must refuse, with real certificates of the cluster CA
    pki = lab.root / "pki"
    issue(pki, "laptop", now=dt.datetime.now(dt.UTC), kind=MemberKind.OPERATOR)
    other = next(h for h in hosts if h != leader)
    now_term = lab.status(HEAD)["term"]  # type: ignore[index]
    act = NodeAction(lab.cloud_name, now_term, "list", ())
    cases = [
        (other, act, "only the leader of the current term may send it", "message_refused"),
        (S3, act, "only the leader of the current term may send it", "message_refused"),
        ("laptop", act, "only the leader of the current term may send it", "message_refused"),
        (leader, NodeAction(lab.cloud_name, now_term, "reboot", ()),
         f"role controller of {HEAD} has no action 'reboot' (actions: drain, list, register)",
         "action_refused"),
        (leader, NodeAction(lab.cloud_name, now_term, "register",
                            (("nodes", S3), ("force", "yes"))),
         "action 'register' of role controller has no argument force (it takes nodes)",
         "action_refused"),
    ]
    for sender, msg, reason, event in cases:
        since = time.time()
        reply = ask(lab, sender, msg)
        assert isinstance(reply, RemoteFailure) and not reply.temporary, (sender, reply)
        assert reason in reply.message, (sender, reply.message)
        lab.wait_for(f"{HEAD} logs {event} for {sender}",
                     lambda e=event, s=sender, t=since, r=reason: [  # type: ignore[misc]
                         x for x in logged(lab, HEAD, e, peer=s)
                         if x["at"] >= t and r in x["reason"]],
                     timeout=BOUND, interval=0.2)
        print(f"NodeAction from {sender:<16} refused by {HEAD}: {reply.message}")
    assert registered(lab) == [S1], "a refused action changed the controller's registry"
    # the leader's own certificate, an action the role has: answered
    answer = ask(lab, leader, act)
    assert answer == NodeActed(HEAD, "list", ((S1, "idle"),)), answer

    # stop: the provider drains the controller before the nodes stop their services
    since = time.time()
    assert lab.cli(other, "stop", lab.cloud_name).returncode == 0
    stopped = lab.wait_for("the controller's services stopped", lambda: [
        e for e in logged(lab, HEAD, "node.services_stopped") if e["at"] >= since],
        timeout=BOUND, interval=0.2)
    drained = json.loads((lab.root / HEAD / "state" / "nodes" / HEAD
                          / "drained.json").read_text())
    assert drained["nodes"] == [S1]
    assert since <= drained["at"] <= stopped[0]["at"], (drained, stopped[0])
    done = logged(lab, leader, "provider_stopped")
    assert done and done[-1]["at"] <= stopped[0]["at"]
    print(f"stop: controller drained {drained['at'] - since:.2f} s after the command, its "
          f"services stopped {stopped[0]['at'] - drained['at']:.2f} s after that")
