"""Pure rendering of the Slurm roles: slurm.conf, folders, services, and refused values."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudd.errors import PermanentError, TemporaryError
from cloudd.providers.base import Assignment, Peer
from cloudd.providers.slurm import spec
from cloudd.providers.slurm.conf import slurm_settings
from cloudd.providers.slurm.provider import PROVIDER

PEERS = (
    Peer("b-head", "head", "10.2.0.1", True),
    Peer("b-c1", "compute", "10.2.0.11", True),
    Peer("b-c2", "compute", "10.2.0.12", False),
)
PREFIX = ("nsenter", "--net=/run/netns/x", "--")


def _a(role: str, *, node: str | None = None, peers: tuple[Peer, ...] = PEERS,
       prefix: tuple[str, ...] = (), **settings: object) -> Assignment:
    name = node or {"head": "b-head", "compute": "b-c1"}[role]
    address = next((p.address for p in PEERS if p.node == name), "10.2.0.99")
    return Assignment(cloud="batch", node=name, role=role, address=address,
                      root=Path(f"/var/lib/cloudd/nodes/{name}"),
                      secrets_dir=Path(f"/var/lib/cloudd/nodes/{name}/secrets"),
                      settings=settings, peers=tuple(p for p in peers if p.node != name),
                      exec_prefix=prefix)


def _conf(a: Assignment) -> dict[str, str]:
    (f,) = PROVIDER.role(a.role).render(a, {}).files
    assert f.path == a.root / "slurm" / "slurm.conf"
    lines = [line for line in f.content.splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_head_and_compute_render_the_same_cluster_with_their_own_paths() -> None:
    head, compute = _conf(_a("head")), _conf(_a("compute"))
    for conf, node in ((head, "b-head"), (compute, "b-c1")):
        root = f"/var/lib/cloudd/nodes/{node}"
        assert conf["ClusterName"] == "batch"
        assert conf["SlurmctldHost"] == "b-head(10.2.0.1)"
        assert conf["AuthInfo"] == f"socket={root}/run/munge/munge.socket.2"
        assert conf["StateSaveLocation"] == f"{root}/slurm/state"
        assert conf["SlurmdSpoolDir"] == f"{root}/slurm/spool"
        assert conf["ProctrackType"] == "proctrack/linuxproc"
        assert conf["ReturnToService"] == "2"
        assert conf["SlurmdTimeout"] == "300"
        assert conf["MaxNodeCount"] == "1024"
        assert conf["PartitionName"] == "main Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
        assert "NodeName" not in conf  # compute nodes join as dynamic nodes
    different = {k for k in head if head[k] != compute[k]}
    assert different == {"AuthInfo", "StateSaveLocation", "SlurmdSpoolDir", "SlurmctldPidFile",
                         "SlurmdPidFile"}


def test_the_head_and_settings_change_only_what_they_name() -> None:
    conf = _conf(_a("compute", cluster_name="hpc", partition="batch", max_time="1-00:00",
                    max_nodes=64, slurmd_timeout=30))
    assert conf["ClusterName"] == "hpc"
    assert conf["SlurmdTimeout"] == "30"
    assert conf["MaxNodeCount"] == "64"
    assert conf["PartitionName"] == "batch Nodes=ALL Default=YES MaxTime=1-00:00 State=UP"
    moved = (Peer("b-head", "head", "10.2.0.7", True),)
    assert _conf(_a("compute", peers=moved))["SlurmctldHost"] == "b-head(10.2.0.7)"
    v6 = _conf(_a("compute", peers=(Peer("b-head", "head", "fd00::1", True),)))
    assert v6["SlurmctldHost"] == "b-head(fd00::1)"
    assert v6["CommunicationParameters"] == "EnableIPv6"


def test_a_compute_node_without_a_head_waits() -> None:
    with pytest.raises(TemporaryError, match="b-c1: no head node in the assignment yet"):
        PROVIDER.role("compute").render(_a("compute", peers=PEERS[1:]), {})


@pytest.mark.parametrize(("role", "dirs"), [
    ("head", {"": ("root", 0o755), "log": ("root", 0o755), "munge": ("munge", 0o700),
              "run": ("root", 0o755), "run/munge": ("munge", 0o755), "slurm": ("root", 0o755),
              "slurm/run": ("root", 0o755), "slurm/state": ("slurm", 0o700)}),
    ("compute", {"": ("root", 0o755), "log": ("root", 0o755), "munge": ("munge", 0o700),
                 "run": ("root", 0o755), "run/munge": ("munge", 0o755),
                 "slurm": ("root", 0o755), "slurm/run": ("root", 0o755),
                 "slurm/spool": ("root", 0o755)}),
])
def test_folders_belong_to_who_writes_them(role: str, dirs: dict[str, tuple[str, int]]) -> None:
    a = _a(role)
    rendered = PROVIDER.role(role).render(a, {})
    got = {"" if d.path == a.root else str(d.path.relative_to(a.root)): (d.owner, d.mode)
           for d in rendered.dirs}
    assert got == dirs
    assert all(d.owner == d.group for d in rendered.dirs)
    (f,) = rendered.files
    assert (f.mode, f.owner, f.reload) == (0o644, "root", ({"head": "slurmctld",
                                                            "compute": "slurmd"}[role],))


@pytest.mark.parametrize("role", ["head", "compute"])
def test_what_root_reads_is_in_root_s_folders_and_each_user_writes_only_its_own(
        role: str) -> None:
    # A pid file in a folder the daemon's user may write lets that user choose what root
    # kills: slurmctld and slurmd read theirs as root when they start.
    a = _a(role, prefix=PREFIX)
    rendered, conf = PROVIDER.role(role).render(a, {}), _conf(a)
    for key in ("SlurmctldPidFile", "SlurmdPidFile"):
        assert rendered.writers(Path(conf[key])) == frozenset(), key
    assert rendered.writers(Path(conf["SlurmdSpoolDir"]) / "x") == frozenset()  # slurmd: root
    assert rendered.writers(a.root / "slurm" / "slurm.conf") == frozenset()
    if role == "head":  # slurmctld, dropped to the slurm user, writes its state there alone
        (state,) = [d for d in rendered.dirs if d.path == Path(conf["StateSaveLocation"])]
        assert (state.owner, state.mode) == ("slurm", 0o700)
        assert rendered.writers(state.path / "job_state") == {"slurm"}
    # munged runs as munge from its first instruction (setpriv): its files are munge's alone.
    munged = {s.name: s for s in PROVIDER.role(role).services(a)}["munged"].argv
    flags = dict(arg[2:].split("=", 1) for arg in munged if arg.startswith("--") and "=" in arg)
    assert flags["reuid"] == "munge"
    for flag in ("key-file", "pid-file", "seed-file", "log-file", "socket"):
        assert rendered.writers(Path(flags[flag])) == {"munge"}, flag
    # No folder of the node is writable by a group or by everyone.
    assert all(d.mode & 0o022 == 0 for d in rendered.dirs)


def test_services_run_in_the_node_in_the_foreground_after_munged() -> None:
    head = {s.name: s for s in PROVIDER.role("head").services(_a("head", prefix=PREFIX))}
    compute = {s.name: s for s in PROVIDER.role("compute").services(_a("compute", prefix=PREFIX))}
    root = "/var/lib/cloudd/nodes/b-c1"
    assert list(head) == ["munged", "slurmctld"] and list(compute) == ["munged", "slurmd"]
    assert compute["slurmd"].argv == (*PREFIX, "slurmd", "-D", "-Z", "-N", "b-c1", "-f",
                                      f"{root}/slurm/slurm.conf")
    assert head["slurmctld"].argv[len(PREFIX):][:2] == ("slurmctld", "-D")
    munged = compute["munged"].argv
    assert munged[:len(PREFIX) + 6] == (*PREFIX, "setpriv", "--reuid=munge", "--regid=munge",
                                         "--init-groups", "munged", "--foreground")
    assert f"--key-file={root}/munge/munge.key" in munged
    for s in (*head.values(), *compute.values()):
        assert s.user == "root"  # nsenter needs it; munged drops to munge, slurmctld to slurm
        assert s.log_path == f"{Path(s.log_path).parent}/{s.name}.out"
        assert s.liveness is not None and s.liveness.argv[:len(PREFIX)] == PREFIX
        assert s.readiness is not None
        assert s.depends_on == (() if s.name == "munged" else ("munged",))
        # slurm.conf re-read on SIGHUP; munged restarts (its key is read at start).
        assert s.reload_argv == (None if s.name == "munged" else ())
    assert head["slurmctld"].liveness.argv[len(PREFIX):] == (
        "env", "SLURM_CONF=/var/lib/cloudd/nodes/b-head/slurm/slurm.conf", "scontrol", "ping")


def test_packages_and_secrets() -> None:
    assert PROVIDER.role("head").packages(_a("head")) == ("munge", "slurm-client", "slurmctld")
    assert PROVIDER.role("compute").packages(_a("compute")) == ("munge", "slurm-client",
                                                                "slurmd")
    # The key is binary: prepare copies its bytes, render never reads it as text.
    assert PROVIDER.role("head").secrets(_a("head")) == ()
    s = slurm_settings({})
    assert spec.role_secrets(s, "compute") == ("munge.key",)
    assert spec.role_secrets(slurm_settings({"munge_key_ref": "mk"}), "head") == ("mk",)
    assert PROVIDER.role_order == ("head", "compute")


@pytest.mark.parametrize(("a", "match"), [
    (_a("head", node="Bad_Name"), "head node name 'Bad_Name' into slurm.conf"),
    (_a("compute", peers=(Peer("b-head", "head", "10.2.0.1; x", True),)),
     "address of b-head '10.2.0.1; x' into slurm.conf: not an IP address"),
    (_a("compute", peers=(Peer("b-head\nNodeName=x", "head", "10.2.0.1", True),)),
     "head node name 'b-head\\\\nNodeName=x' into slurm.conf"),
])
def test_values_that_could_change_slurm_conf_are_refused(a: Assignment, match: str) -> None:
    with pytest.raises(PermanentError, match=match):
        PROVIDER.role(a.role).render(a, {})


def test_a_root_with_a_blank_is_refused_before_anything_is_written() -> None:
    a = _a("head")
    bad = Assignment(**{**a.__dict__, "root": Path("/srv/my nodes/x")})
    with pytest.raises(PermanentError, match="node root '/srv/my nodes/x'"):
        PROVIDER.role("head").render(bad, {})
    with pytest.raises(PermanentError, match="node root"):
        PROVIDER.role("head").services(bad)


@pytest.mark.parametrize(("settings", "match"), [
    ({"partition": "a b"}, "slurm settings: partition: String should match"),
    ({"max_time": "soon"}, "slurm settings: max_time: String should match"),
    ({"max_nodes": 0}, "slurm settings: max_nodes: Input should be greater than"),
    ({"slurmd_timeout": 1}, "slurm settings: slurmd_timeout: Input should be greater than"),
    ({"nodes": 3}, "slurm settings: nodes: Extra inputs are not permitted"),
])
def test_bad_settings_are_refused_with_the_field(settings: dict[str, object], match: str) -> None:
    with pytest.raises(PermanentError, match=match):
        PROVIDER.role("head").render(_a("head", **settings), {})
