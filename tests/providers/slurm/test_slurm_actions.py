"""The head's actions against a stand-in for Slurm's commands, and the munge key's install."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

from cloudd.errors import PermanentError, TemporaryError
from cloudd.providers.base import Assignment
from cloudd.providers.slurm import roles
from cloudd.providers.slurm.provider import PROVIDER

#: Stands in for the node's exec prefix: logs each command with SLURM_CONF and its pid in
#: `pid-<cmd>`, answers from files beside it (`out-<cmd>`, `fail-<cmd>` with the error,
#: `slow` or `slow-<cmd>`, `after-<cmd>` naming a file to wait for, at most 5 s).
FAKE = """#!/bin/sh
here=$(dirname "$0")
echo "$SLURM_CONF: $*" >> "$here/log"
echo $$ > "$here/.pid-$1" && mv "$here/.pid-$1" "$here/pid-$1"
if [ -e "$here/after-$1" ]; then
  for i in $(seq 100); do [ -e "$here/$(cat "$here/after-$1")" ] && break; sleep 0.05; done
fi
if [ -e "$here/slow" ] || [ -e "$here/slow-$1" ]; then sleep 30; fi
if [ -e "$here/fail-$1" ]; then cat "$here/fail-$1"; exit 1; fi
[ -e "$here/out-$1" ] && cat "$here/out-$1"
exit 0
"""


@pytest.fixture
def head(tmp_path: Path) -> Assignment:
    fake = tmp_path / "fake"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    return Assignment(cloud="batch", node="b-head", role="head", address="10.2.0.1",
                      root=tmp_path / "node", secrets_dir=tmp_path / "secrets",
                      exec_prefix=(str(fake),))


def _log(a: Assignment) -> list[str]:
    return (Path(a.exec_prefix[0]).parent / "log").read_text().splitlines()


def _set(a: Assignment, name: str, text: str) -> None:
    (Path(a.exec_prefix[0]).parent / name).write_text(text)


async def test_nodes_answers_the_scheduler_view(head: Assignment) -> None:
    _set(head, "out-sinfo", "b-c1|idle|Unknown|none\nb-c2|mixed|Unknown|none\n")
    _set(head, "out-squeue", "12|b-c[1-2]\n")
    role = PROVIDER.role("head")
    assert role.actions["nodes"] == ()
    answer = await role.act(head, "nodes", {})
    assert answer == {"b-c1": "idle\t\t12\t", "b-c2": "mixed\t\t12\t"}
    conf = head.root / "slurm" / "slurm.conf"
    assert sorted(_log(head)) == [f"{conf}: sinfo -h -N -o %N|%T|%u|%E",
                                  f"{conf}: squeue -h -t RUNNING,COMPLETING -o %i|%N"]


async def test_queue_answers_the_waiting_jobs_summed(head: Assignment) -> None:
    _set(head, "out-squeue", "21|2|4|Resources\n22|1|1|Priority\n23|1|2|Resources\n")
    assert PROVIDER.role("head").actions["queue"] == ()
    answer = await PROVIDER.role("head").act(head, "queue", {})
    assert answer == {"jobs": "3", "nodes": "4", "cpus": "7", "blocked": "0",
                      "reasons": "Resources=2\nPriority=1"}
    conf = head.root / "slurm" / "slurm.conf"
    assert _log(head) == [f"{conf}: squeue -h -t PENDING -o %i|%D|%C|%r"]


#: What the stand-in's sinfo says of every node (the head's `-n NODE` reads one of them).
_SINFO = ("b-c1|drained|root|cloudd: idle, leaving the cloud\n"
          "b-c2|mixed|Unknown|none\n"
          "b-c3|idle|Unknown|none\n"
          "b-c4|drained|slurm|Kill task failed\n"
          "b-c5|drained|root|bad disk\n")


def _commands(a: Assignment) -> list[str]:
    return [line.split(": ", 1)[1] for line in _log(a)]


def _read(node: str) -> str:
    return f"sinfo -h -N -n {node} -o %N|%T|%u|%E"


async def test_drain_reads_the_node_and_gives_cloudds_own_reason(head: Assignment) -> None:
    _set(head, "out-sinfo", _SINFO)
    role = PROVIDER.role("head")
    assert await role.act(head, "drain_node", {"node": "b-c3", "why": "leave"}) == {
        "node": "b-c3", "state": "draining"}
    assert await role.act(head, "drain_node", {"node": "b-c2", "why": "move"}) == {
        "node": "b-c2", "state": "draining"}
    # Drained already with cloudd's reason for this why: nothing to do; for the other: drained
    # again with it.
    assert await role.act(head, "drain_node", {"node": "b-c1", "why": "leave"}) == {
        "node": "b-c1", "state": "draining"}
    assert await role.act(head, "drain_node", {"node": "b-c1", "why": "move"}) == {
        "node": "b-c1", "state": "draining"}
    assert _commands(head) == [
        _read("b-c3"),
        "scontrol update nodename=b-c3 state=drain reason=cloudd: idle, leaving the cloud",
        _read("b-c2"),
        "scontrol update nodename=b-c2 state=drain reason=cloudd: moving off a drained host",
        _read("b-c1"), _read("b-c1"),
        "scontrol update nodename=b-c1 state=drain reason=cloudd: moving off a drained host"]
    with pytest.raises(PermanentError, match="drain_node: why 'because' is not one of leave, "
                                             "move"):
        await role.act(head, "drain_node", {"node": "b-c2", "why": "because"})


async def test_resume_reads_the_node_and_undoes_slurms_or_cloudds_drain(
        head: Assignment) -> None:
    _set(head, "out-sinfo", _SINFO)
    role = PROVIDER.role("head")
    for node in ("b-c1", "b-c4", "b-c3"):
        assert await role.act(head, "resume_node", {"node": node}) == {
            "node": node, "state": "resumed"}
    assert _commands(head) == [
        _read("b-c1"), "scontrol update nodename=b-c1 state=resume",
        _read("b-c4"), "scontrol update nodename=b-c4 state=resume",
        _read("b-c3")]  # it serves: nothing to do


@pytest.mark.parametrize("action", ["resume_node", "drain_node"])
async def test_an_operators_drain_is_refused_and_left_as_it_is(head: Assignment,
                                                               action: str) -> None:
    _set(head, "out-sinfo", _SINFO)
    with pytest.raises(PermanentError, match=f"^{action}: b-c5 is drained by its operator's "
                                             r"word \(reason 'bad disk', set by root\): left "
                                             "as it is$"):
        await PROVIDER.role("head").act(head, action, {"node": "b-c5", "why": "leave"})
    assert _commands(head) == [_read("b-c5")]


@pytest.mark.parametrize("action", ["resume_node", "drain_node"])
async def test_a_node_slurm_does_not_know_is_not_acted_on(head: Assignment,
                                                          action: str) -> None:
    _set(head, "out-sinfo", _SINFO)
    with pytest.raises(TemporaryError, match=f"^{action}: b-c9 is not registered with "
                                             "slurmctld$"):
        await PROVIDER.role("head").act(head, action, {"node": "b-c9", "why": "leave"})
    assert _commands(head) == [_read("b-c9")]


async def test_delete_runs_scontrol_on_the_named_node(head: Assignment) -> None:
    assert await PROVIDER.role("head").act(head, "delete_node", {"node": "b-c2"}) == {
        "node": "b-c2", "deleted": "yes"}
    assert _commands(head) == [
        "scontrol -o show node b-c2",
        "scontrol update nodename=b-c2 state=down reason=left cloud batch",
        "scontrol delete nodename=b-c2"]


async def test_deleting_a_node_slurm_does_not_know_is_done(head: Assignment) -> None:
    _set(head, "fail-scontrol", "Node b-c2 not found\n")
    assert await PROVIDER.role("head").act(head, "delete_node", {"node": "b-c2"}) == {
        "node": "b-c2", "deleted": "already absent"}
    assert len(_log(head)) == 1


async def test_a_failed_command_is_one_temporary_sentence(head: Assignment) -> None:
    _set(head, "out-sinfo", _SINFO)
    _set(head, "fail-scontrol", "\nslurm_update error: Invalid node state specified\n")
    with pytest.raises(TemporaryError, match=r"^`scontrol update` on b-head failed: "
                                             "slurm_update error: Invalid node state"):
        await PROVIDER.role("head").act(head, "resume_node", {"node": "b-c1"})


async def test_a_hung_command_is_killed_within_its_bound(head: Assignment,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(roles, "ACTION_WITHIN", 0.3)
    _set(head, "slow", "")
    with pytest.raises(TemporaryError, match=r"`s(info|queue) -h` on b-head did not finish "
                                             r"within the action's 0\.3s"):
        await PROVIDER.role("head").act(head, "nodes", {})


async def test_a_failed_command_kills_the_other_before_the_answer(head: Assignment) -> None:
    _set(head, "fail-sinfo", "sinfo: error: Unable to contact slurm controller\n")
    _set(head, "slow-squeue", "")
    _set(head, "after-sinfo", "pid-squeue")  # squeue runs by the time sinfo fails
    with pytest.raises(TemporaryError, match=r"^`sinfo -h` on b-head failed: sinfo: error"):
        await PROVIDER.role("head").act(head, "nodes", {})
    pid = int((Path(head.exec_prefix[0]).parent / "pid-squeue").read_text())
    with pytest.raises(ProcessLookupError):  # squeue was not left running
        os.kill(pid, 0)


@pytest.mark.parametrize("node", ["b-c[1-9]", "b-c1 state=down", "", "B_C1"])
async def test_a_node_argument_that_is_not_one_node_is_refused(head: Assignment,
                                                               node: str) -> None:
    with pytest.raises(PermanentError, match="refusing to render node name"):
        await PROVIDER.role("head").act(head, "resume_node", {"node": node})
    assert not (Path(head.exec_prefix[0]).parent / "log").exists()


async def test_compute_nodes_have_no_actions(head: Assignment) -> None:
    assert PROVIDER.role("compute").actions == {}
    with pytest.raises(PermanentError, match="role 'compute' has no action 'nodes'"):
        await PROVIDER.role("compute").act(head, "nodes", {})
    with pytest.raises(PermanentError, match="role 'head' has no action 'reboot'"):
        await PROVIDER.role("head").act(head, "reboot", {})


def _munge_ids() -> tuple[int, int]:
    try:
        pw = pwd.getpwnam("munge")
    except KeyError:
        pytest.skip("the munge package is not installed (make setup installs it)")
    if os.geteuid() != 0:
        pytest.skip("giving the key to munge needs root")
    return pw.pw_uid, pw.pw_gid


async def test_prepare_installs_the_binary_key_for_munge_alone(head: Assignment) -> None:
    uid, gid = _munge_ids()
    key = bytes(range(256)) * 4  # not text
    head.secrets_dir.mkdir()
    (head.secrets_dir / "munge.key").write_bytes(key)
    role = PROVIDER.role("head")
    with pytest.raises(OSError):  # the folders come from render + apply_rendered first
        await role.prepare(head)
    (head.root / "munge").mkdir(parents=True)
    await role.prepare(head)
    installed = head.root / "munge" / "munge.key"
    st = installed.stat()
    assert installed.read_bytes() == key
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o400, uid, gid)
    inode = st.st_ino
    await role.prepare(head)  # idempotent: the same key is not rewritten
    assert installed.stat().st_ino == inode
    (head.secrets_dir / "munge.key").write_bytes(key[::-1])
    await role.prepare(head)
    assert installed.read_bytes() == key[::-1]


@pytest.mark.parametrize(("content", "match"), [
    (None, "^secret 'munge.key' not found: .*/secrets/munge.key does not exist$"),
    (b"short", "munge key secret 'munge.key' holds 5 bytes; munged needs at least 32"),
])
async def test_a_missing_or_short_key_is_refused(head: Assignment, content: bytes | None,
                                                 match: str) -> None:
    head.secrets_dir.mkdir()
    if content is not None:
        (head.secrets_dir / "munge.key").write_bytes(content)
    with pytest.raises(PermanentError, match=match):
        await PROVIDER.role("head").prepare(head)
