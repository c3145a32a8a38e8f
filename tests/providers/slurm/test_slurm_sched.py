"""The scheduler's view: host lists, sinfo and squeue as Slurm prints them, the answer's
packing, and the leader's judgement of each node (the table of sched.py)."""

from __future__ import annotations

import re

import pytest

from cloudd.errors import PermanentError
from cloudd.providers import batchqueue
from cloudd.providers.base import Peer
from cloudd.providers.slurm import sched
from cloudd.providers.slurm.sched import SchedNode


@pytest.mark.parametrize(("text", "names"), [
    ("sl-c1", ("sl-c1",)),
    ("sl-c[1-3]", ("sl-c1", "sl-c2", "sl-c3")),
    ("sl-c[1,3],sl-head", ("sl-c1", "sl-c3", "sl-head")),
    ("n[08-10]", ("n08", "n09", "n10")),
    ("r[1-2]n[1-2]", ("r1n1", "r1n2", "r2n1", "r2n2")),
    ("c[1-2]-x,d", ("c1-x", "c2-x", "d")),
    ("", ()),
])
def test_host_lists_expand_as_slurm_compresses_them(text: str, names: tuple[str, ...]) -> None:
    assert sched.expand_hostlist(text) == names


@pytest.mark.parametrize(("text", "match"), [
    ("c[1-2", "unbalanced brackets"),
    ("c1-2]", "unbalanced brackets"),
    ("c[[1]]", "unbalanced brackets"),
    ("c[a-b]", "bad range in 'c\\[a-b\\]'"),
    ("c[3-1]", "bad range '3-1'"),
    ("c[1-99999999]", "names more than 65536 nodes"),
])
def test_malformed_host_lists_are_refused(text: str, match: str) -> None:
    with pytest.raises(PermanentError, match=match):
        sched.expand_hostlist(text)


#: What `sinfo -h -N -o SINFO_FORMAT` and `squeue -h -o SQUEUE_FORMAT` printed on Slurm 22.05.
SINFO = """sl-c1|idle|Unknown|none
sl-c2|down*|slurm|Not responding
sl-c3|drained|root|disk check | by hand
sl-c4|allocated|Unknown|none
"""
SQUEUE = "7|sl-c[3-4]\n8|sl-c4\n"


def test_sinfo_and_squeue_make_one_view() -> None:
    assert sched.view(SINFO, SQUEUE) == (
        SchedNode("sl-c1", "idle"),
        SchedNode("sl-c2", "down*", "slurm", "Not responding"),
        SchedNode("sl-c3", "drained", "root", "disk check | by hand", ("7",)),
        SchedNode("sl-c4", "allocated", jobs=("7", "8")),
    )
    assert sched.view("", "") == ()


@pytest.mark.parametrize(("sinfo", "squeue", "match"), [
    ("sl-c1 idle\n", "", "sinfo said 'sl-c1 idle', not node|state|user|reason"),
    ("|idle|x|y\n", "", "not node|state|user|reason"),
    ("", "7\n", "squeue said '7', not job|nodes"),
    ("", "7|c[1\n", "unbalanced brackets"),
])
def test_unexpected_output_is_refused(sinfo: str, squeue: str, match: str) -> None:
    with pytest.raises(PermanentError, match=match):
        sched.view(sinfo, squeue)


def test_the_answer_round_trips_within_its_bounds() -> None:
    nodes = sched.view(SINFO, SQUEUE)
    assert sched.decode(sched.encode(nodes)) == nodes
    busy = SchedNode("c", "mixed", "slurm", "a\tb\nc\x1b" + "x" * 200,
                     tuple(str(i) for i in range(20)))
    (back,) = sched.decode(sched.encode([busy]))
    assert back.jobs == (*(str(i) for i in range(16)), "+4")
    assert back.reason == ("a b c " + "x" * 200)[:80]


@pytest.mark.parametrize("value", ["idle", "idle\tx\t", "id le\t\t\t", "\t\t\t",
                                   "idle\t\t\tok\x1b[2J", "idle\tro\x00ot\t\t",
                                   "idle\t\t1\n2\t"])
def test_a_malformed_answer_is_refused(value: str) -> None:
    with pytest.raises(PermanentError, match="the head's answer for node 'c1' is not"):
        sched.decode({"c1": value})


@pytest.mark.parametrize("name", ["", "c 1", "c1\x1b[2J", "../c1", "c" * 65])
def test_an_answer_naming_no_node_is_refused(name: str) -> None:
    with pytest.raises(PermanentError, match=r"the head.s answer names node .*, not a name"):
        sched.decode({name: "idle\t\t\t"})


def _peers(**healthy: bool) -> tuple[Peer, ...]:
    return tuple(Peer(name.replace("_", "-"), "compute", "10.0.0.1", ok)
                 for name, ok in healthy.items())


@pytest.mark.parametrize(("node", "healthy", "ok", "message", "resume"), [
    (SchedNode("c1", "idle"), True, True, "idle in Slurm", False),
    (SchedNode("c1", "mixed", jobs=("3",)), False, True, "mixed in Slurm", False),
    (SchedNode("c1", "completing"), True, True, "completing in Slurm", False),
    (SchedNode("c1", "drained", "slurm", "Kill task failed"), True, False,
     "drained in Slurm (Kill task failed, set by slurm): resumed", True),
    (SchedNode("c1", "down", "slurm", "Node unexpectedly rebooted"), True, False,
     "down in Slurm (Node unexpectedly rebooted, set by slurm): resumed", True),
    (SchedNode("c1", "draining", "slurm", "batch job complete failure"), True, False,
     "draining in Slurm (batch job complete failure, set by slurm): resumed", True),
    # cloudd has not fixed it: not resumed.
    (SchedNode("c1", "drained", "slurm", "Kill task failed"), False, False,
     "drained in Slurm (Kill task failed, set by slurm)", False),
    # Not responding: it comes back by itself when its slurmd registers.
    (SchedNode("c1", "down*", "slurm", "Not responding"), True, False,
     "down* in Slurm (Not responding, set by slurm)", False),
    # An operator's drain is the operator's.
    (SchedNode("c1", "drained", "root", "maintenance"), True, False,
     "drained in Slurm (maintenance, set by root): left to its operator", False),
    (SchedNode("c1", "down"), True, False, "down in Slurm", False),
    (SchedNode("c1", "unknown"), True, False, "unknown in Slurm", False),
    # cloudd's reason is cloudd's, whatever the state: never an operator's.
    (SchedNode("c1", "down", "root", sched.ELASTIC_REASON), True, False,
     f"down in Slurm ({sched.ELASTIC_REASON}, set by root)", False),
])
def test_each_node_is_judged_by_both_views(node: SchedNode, healthy: bool, ok: bool,
                                           message: str, resume: bool) -> None:
    verdict = sched.judge([node], _peers(c1=healthy), slurm_user="slurm")
    (finding,) = verdict.findings
    assert (finding.check, finding.node, finding.ok, finding.message) == (
        "scheduler", "c1", ok, message)
    assert (finding.state, finding.jobs) == (node.state, node.jobs)
    assert verdict.resume == (("c1",) if resume else ())
    assert verdict.delete == ()


#: One node as the head reads it just before `resume_node` and `drain_node`.
_OPERATORS = [SchedNode("c1", "drained", "root", "bad disk"),
              SchedNode("c1", "draining", "alice", "bad disk", ("7",)),
              SchedNode("c1", "down", "root", "pulled"),
              SchedNode("c1", "drained*", "root", "bad disk"),
              SchedNode("c1", "fail", "root", "bad disk")]
_NOT_OPERATORS = [SchedNode("c1", "idle"), SchedNode("c1", "mixed", jobs=("3",)),
                  SchedNode("c1", "drained", "slurm", "Kill task failed"),
                  SchedNode("c1", "down*", "slurm", "Not responding"),
                  SchedNode("c1", "drained", "root", sched.ELASTIC_REASON),
                  SchedNode("c1", "draining", "root", sched.MOVING_REASON, ("3",)),
                  SchedNode("c1", "down"), SchedNode("c1", "unknown", "root", "bad disk")]


@pytest.mark.parametrize("node", _OPERATORS)
def test_an_operators_drain_or_down_is_neither_resumed_nor_drained_over(
        node: SchedNode) -> None:
    assert sched.operators(node, slurm_user="slurm")
    said = (f"{node.state} by its operator's word (reason {node.reason!r}, set by {node.by}): "
            "left as")
    with pytest.raises(PermanentError, match=f"^resume_node: c1 is {re.escape(said)} it is$"):
        sched.on_resume(node, slurm_user="slurm")
    with pytest.raises(PermanentError, match=f"^drain_node: c1 is {re.escape(said)} it is$"):
        sched.on_drain(node, sched.ELASTIC_REASON, slurm_user="slurm")


@pytest.mark.parametrize(("node", "resume", "leave", "move"), [
    (SchedNode("c1", "idle"), "serving", "drain", "drain"),
    (SchedNode("c1", "mixed", jobs=("3",)), "serving", "drain", "drain"),
    (SchedNode("c1", "completing"), "serving", "drain", "drain"),
    (SchedNode("c1", "drained", "slurm", "Kill task failed"), "resume", "drain", "drain"),
    (SchedNode("c1", "down*", "slurm", "Not responding"), "resume", "drain", "drain"),
    (SchedNode("c1", "drained", "root", sched.ELASTIC_REASON), "resume", "drained", "drain"),
    (SchedNode("c1", "draining", "root", sched.MOVING_REASON, ("3",)), "resume", "drain",
     "drained"),
    (SchedNode("c1", "drained*", "root", sched.MOVING_REASON), "resume", "drain", "drained"),
    # cloudd's reason on a node taken down (not drained): drained again with it.
    (SchedNode("c1", "down", "root", sched.ELASTIC_REASON), "resume", "drain", "drain"),
    # Nobody's reason, or a state cloudd has no rule for: scontrol is left to answer.
    (SchedNode("c1", "down"), "resume", "drain", "drain"),
    (SchedNode("c1", "unknown", "root", "bad disk"), "resume", "drain", "drain"),
])
def test_the_head_acts_on_what_it_reads_just_before(node: SchedNode, resume: str,
                                                    leave: str, move: str) -> None:
    assert not sched.operators(node, slurm_user="slurm")
    assert sched.on_resume(node, slurm_user="slurm") == resume
    assert sched.on_drain(node, sched.ELASTIC_REASON, slurm_user="slurm") == leave
    assert sched.on_drain(node, sched.MOVING_REASON, slurm_user="slurm") == move


def test_the_refusal_bounds_what_the_head_read() -> None:
    node = SchedNode("c1", "drained*", "root\x07" + "y" * 40,
                     "bad\x1b]0;owned\x07 disk" + "z" * 100)
    with pytest.raises(PermanentError) as refused:
        sched.on_resume(node, slurm_user="slurm")
    said = str(refused.value)
    assert not re.search(r"[\x00-\x1f\x7f]", said)
    assert said == ("resume_node: c1 is drained* by its operator's word (reason "
                    f"'bad ]0;owned  disk{'z' * 42}', set by root {'y' * 27}): left as it is")


def test_missing_nodes_are_reported_and_strangers_deleted() -> None:
    verdict = sched.judge([SchedNode("c1", "idle"), SchedNode("gone", "idle", jobs=("9",))],
                          _peers(c1=True, c2=True, c3=False), slurm_user="slurm")
    assert [(f.node, f.ok, f.message) for f in verdict.findings] == [
        ("c1", True, "idle in Slurm"),
        ("c2", False, "not registered with slurmctld"),
        ("c3", False, "not registered with slurmctld (its node is not healthy)"),
        ("gone", False, "known to Slurm but not a compute node of the cloud: deleted"),
    ]
    assert verdict.delete == ("gone",)
    assert verdict.findings[-1].jobs == ("9",)


def test_waiting_jobs_are_summed_with_their_most_frequent_reasons() -> None:
    text = "".join(f"{i}|1|2|{r}\n" for i, r in enumerate(
        ["Resources"] * 3 + ["Priority"] * 2 + ["Dependency", "JobHeldUser", "BeginTime"]))
    q = sched.parse_pending(text + "99|4|16|Resources\n\n")
    # Held, deferred or dependent jobs wait for no node: counted, their asks not summed.
    assert q == batchqueue.Queue(9, 9, 26, (("Resources", 4), ("Priority", 2),
                                            ("BeginTime", 1), ("Dependency", 1)), blocked=3)
    assert batchqueue.decode(batchqueue.encode(q)) == q
    assert sched.parse_pending("") == batchqueue.Queue()
    assert batchqueue.Queue().describe() == "no job waiting"
    assert batchqueue.finding(q).message == "jobs waiting"


@pytest.mark.parametrize("line", ["21|two|4|Resources", "21|2|4", "|1|1|Priority"])
def test_unexpected_pending_lines_are_refused(line: str) -> None:
    with pytest.raises(PermanentError, match="not job\\|nodes\\|cpus\\|reason"):
        sched.parse_pending(line)


@pytest.mark.parametrize(("answer", "match"), [
    ({"jobs": "1", "nodes": "1", "blocked": "0"}, "gives cpus '', not a count"),
    ({"jobs": "-1", "nodes": "1", "cpus": "1", "blocked": "0"}, "gives jobs '-1', not a count"),
    ({"jobs": "1", "nodes": "1", "cpus": "99999999999", "blocked": "0"},
     "gives cpus '99999999999'"),
    # "²" is a digit to str.isdigit, not to int: refused, not a crash of the monitor
    ({"jobs": "\u00b2", "nodes": "1", "cpus": "1", "blocked": "0"},
     "gives jobs '\u00b2', not a count"),
    ({"jobs": "1", "nodes": "1", "cpus": "1", "blocked": "0", "reasons": "Resources=\u00b9"},
     "not reason=jobs"),
    ({"jobs": "1", "nodes": "1", "cpus": "1", "blocked": "2"}, "2 jobs blocked of 1 waiting"),
    ({"jobs": "1", "nodes": "1", "cpus": "1", "blocked": "0", "reasons": "Resources"},
     "not reason=jobs"),
    ({"jobs": "1", "nodes": "1", "cpus": "1", "blocked": "0", "reasons": "\x1b[2J=1"},
     "not reason=jobs"),
    ({"jobs": "1", "nodes": "1", "cpus": "1", "blocked": "0", "reasons": "\x9b2J=1"},
     "not reason=jobs"),
    ({"jobs": "1", "nodes": "1", "cpus": "1", "blocked": "0",
      "reasons": "a=1\nb=1\nc=1\nd=1\ne=1"}, "more than 4 reasons"),
])
def test_a_malformed_queue_answer_is_refused(answer: dict[str, str], match: str) -> None:
    with pytest.raises(PermanentError, match=match):
        batchqueue.decode(answer)
