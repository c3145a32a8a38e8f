"""What every node gets, with real programs and real agents.

- the manifest's users made by shadow's own tools, in a root of their own (`useradd
  --prefix`), once: the second converge runs nothing, and a user of another uid is refused;
- a hosts file that is a mount point (a container's, a test node's) is rewritten in place;
- a secret the leader makes (an AppScale deployment's secret key, its manifest declaring
  none): three pool hosts in network namespaces, the database node's agent (no AppScale
  provider runs it: its converge stops after what every node gets); the key reaches the
  node's secrets folder (0600), every pool host's record holds it, no log and no `inspect` or
  `history` shows it, and after the leader is killed the new leader hands out the same one.
"""

from __future__ import annotations

import base64
import json
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cloudd_lab.agentlab import AgentLab

from cloudd.config.users import User
from cloudd.daemon.member.keeper import FILE as RECORD_FILE
from cloudd.daemon.node.saved_assignment import ASSIGNMENT_FILE
from cloudd.daemon.node.users import ensure_users
from cloudd.errors import PermanentError

pytestmark = pytest.mark.netns

PREFIX, SUBNET = "h22n", "10.239.41.0/24"
HOSTS = ["pm1", "pm2", "pm3"]
NODE = "lab-database-1"
SECRET = "secret.key"
#: generous bound on every wait (the machine is shared)
BOUND = 90.0


# -- users, with shadow's tools -------------------------------------------------------------
@pytest.fixture
def root(tmp_path: Path) -> Path:
    if shutil.which("useradd") is None:
        pytest.skip("shadow's useradd is not installed")
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n"
                                "carol:x:1003:1003::/home/carol:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\nusers:x:100:\ncarol:x:1003:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\ncarol:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\nusers:*::\ncarol:!::\n")
    for name in ("shadow", "gshadow"):
        (etc / name).chmod(0o640)
    return tmp_path


async def test_users_are_made_once_with_their_ids(root: Path) -> None:
    users = (User("alice", 1001, 1001, ("users",)), User("bob", 1002, 3000),
             User("carol", 1003, 1003, ("users",)))
    done = await ensure_users(users, root=root)
    assert done == ("group alice made with gid 1001", "user alice made with uid 1001",
                    "group bob made with gid 3000", "user bob made with uid 1002",
                    "user carol given groups users")
    passwd = (root / "etc" / "passwd").read_text().splitlines()
    assert [line.split(":")[:4] for line in passwd[2:]] == [
        ["alice", "x", "1001", "1001"], ["bob", "x", "1002", "3000"]]
    assert "users:x:100:carol,alice" in (root / "etc" / "group").read_text() or (
        "users:x:100:alice,carol" in (root / "etc" / "group").read_text())
    home = root / "home" / "alice"
    assert (home.stat().st_uid, home.stat().st_gid) == (1001, 1001)
    assert await ensure_users(users, root=root) == ()  # the second time: nothing to do
    with pytest.raises(PermanentError, match="user bob exists on this node with uid 1002"):
        await ensure_users((User("bob", 1010, 1010),), root=root)


# -- a hosts file that is a mount point -----------------------------------------------------
WRITE = """\
import sys
from pathlib import Path
from cloudd.daemon.node.hostsfile import write_hosts
write_hosts(Path(sys.argv[1]), "batch", [("batch-head-1", "10.0.0.1")])
"""


def test_a_bind_mounted_hosts_file_is_rewritten_in_place(tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("util-linux's unshare is not installed")
    source, target = tmp_path / "node-hosts", tmp_path / "hosts"
    source.write_text("127.0.0.1\tlocalhost\n")
    target.write_text("")
    (tmp_path / "write.py").write_text(WRITE)
    # In a mount namespace of its own, `target` is `source` bind-mounted (as a container's
    # /etc/hosts is): a rename onto it fails with EBUSY, so the writer writes the inode.
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount --bind "$1" "$2" && exec "$3" "$4" "$2"', "sh", str(source), str(target),
         sys.executable, str(tmp_path / "write.py")],
        capture_output=True, text=True, timeout=60, check=False,
        env={"PYTHONPATH": ":".join(sys.path)})
    assert done.returncode == 0, done.stderr
    assert source.read_text() == ("# BEGIN cloudd batch\n10.0.0.1\tbatch-head-1\n"
                                  "# END cloudd batch\n127.0.0.1\tlocalhost\n")
    assert target.read_text() == ""  # outside that namespace, nothing was mounted there


# -- a secret the leader makes, through real agents -----------------------------------------
class AppScaleLab(AgentLab):
    """The administrator's password the appscale type asks for, as a secret file of the lab."""

    def manifest_extra(self) -> str:
        return ("settings: {admin_password_ref: admin}\n"
                f"secrets: {{admin: {{file: {self.root / 'admin'}}}}}\n")


@pytest.fixture
def lab() -> Iterator[AgentLab]:
    # The database is the first role of this layout: its node is assigned as soon as its agent
    # is alive and the leader has made the key it needs (only the master's node would also
    # get the administrator's password).
    with AppScaleLab(PREFIX, hosts=3, subnet=SUBNET, cloud_type="appscale",
                     nodes={"database": 1, "master": 1, "compute": 1},
                     agent_nodes=(NODE,)) as lab:
        (lab.root / "admin").write_text("lab-admin-password\n")
        (lab.root / "admin").chmod(0o600)
        yield lab


def events_of(lab: AgentLab, agent: str, event: str) -> list[dict[str, Any]]:
    out = []
    for line in lab.log_text(agent).splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if isinstance(e, dict) and e.get("event") == event:
            out.append(e)
    return out


def secret_file(lab: AgentLab) -> Path:
    return lab.agents[NODE].folder / "state" / "nodes" / NODE / "secrets" / SECRET


def saved(lab: AgentLab) -> dict[str, Any]:
    path = lab.agents[NODE].folder / "state" / "nodes" / NODE / ASSIGNMENT_FILE
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data


def test_a_secret_the_leader_makes_reaches_its_node_and_outlives_its_leader(
        lab: AgentLab) -> None:
    for host in HOSTS:
        lab.start(host)
    leader, term = lab.wait_for("a leader", lambda: lab.one_leader(HOSTS), timeout=BOUND)
    [made] = lab.wait_for("the key made", lambda: events_of(
        lab, leader, "secrets_generated"), timeout=BOUND)
    # the deployment's secret key, and the seeds of the master's and the hosts' SSH keys
    assert made["names"] == [SECRET, "ssh-client.seed", "ssh-host.seed"]
    lab.start(NODE)
    path = lab.wait_for("the key on the node", lambda: (
        p if (p := secret_file(lab)).exists() else None), timeout=BOUND)
    value = path.read_bytes()
    assert len(value) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    held = base64.b64encode(value).decode()
    for host in HOSTS:  # a majority persisted it; the leader catches the rest up
        record = lab.agents[host].folder / "state" / "clouds" / "lab" / RECORD_FILE
        lab.wait_for(f"{host}'s record", lambda r=record: held in r.read_text(), timeout=BOUND)
        assert stat.S_IMODE(record.stat().st_mode) == 0o600
    for verb in (("inspect", "--json"), ("inspect",), ("history", "lab")):
        shown = lab.cli(leader, *verb)
        assert shown.returncode == 0, shown.stderr
        assert value.decode() not in shown.stdout and held not in shown.stdout

    lab.kill(leader)
    rest = [h for h in HOSTS if h != leader]
    new, new_term = lab.wait_for("a new leader", lambda: lab.one_leader(rest), timeout=BOUND)
    assert new_term > term
    # the node takes the new leader's assignment: the same key, the file as it was
    lab.wait_for(f"{NODE} assigned in term {new_term}", lambda: saved(lab).get("term") == new_term,
                 timeout=BOUND)
    assert [s for s in saved(lab)["secrets"] if s[0] == SECRET] == [[SECRET, held]]
    assert secret_file(lab).read_bytes() == value
    assert events_of(lab, new, "secrets_generated") == []
    assert events_of(lab, new, "record_recovered")
    for agent in [*HOSTS, NODE]:
        text = lab.log_text(agent)
        assert value.decode() not in text and held not in text
