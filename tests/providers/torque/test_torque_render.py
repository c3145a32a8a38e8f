"""Pure rendering of the TORQUE roles: homes, pbs_mom's config, services, server settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudd.errors import PermanentError, TemporaryError
from cloudd.providers.base import Assignment, Peer
from cloudd.providers.torque import layout
from cloudd.providers.torque.provider import PROVIDER

PEERS = (Peer("hpc-head", "head", "10.2.0.10", True),
         Peer("hpc-c1", "compute", "10.2.0.11", True),
         Peer("hpc-c2", "compute", "10.2.0.12", False))


def _a(role: str, *, node: str = "", peers: tuple[Peer, ...] = PEERS,
       prefix: tuple[str, ...] = (), **settings: object) -> Assignment:
    node = node or {"head": "hpc-head", "compute": "hpc-c1"}[role]
    address = next((p.address for p in PEERS if p.node == node), "10.2.0.99")
    return Assignment(cloud="hpc", node=node, role=role, address=address,
                      root=Path(f"/srv/{node}"), secrets_dir=Path("/etc/cloudd/secrets"),
                      settings=settings, peers=tuple(p for p in peers if p.node != node),
                      exec_prefix=prefix)


def _files(a: Assignment) -> dict[str, str]:
    rendered = PROVIDER.role(a.role).render(a, {})
    return {str(f.path): f.content for f in rendered.files}


def test_the_head_names_itself_the_server() -> None:
    files = _files(_a("head"))
    assert files == {"/srv/hpc-head/torque/server_name": "hpc-head\n",
                     "/srv/hpc-head/torque/pbs_environment": "PATH=/bin:/usr/bin\nLANG=C\n"}


def test_a_compute_node_reports_to_the_head_and_copies_into_shared_folders() -> None:
    files = _files(_a("compute", shared_paths=["/home", "/var/tmp/lab/shared"]))
    assert files["/srv/hpc-c1/torque/server_name"] == "hpc-head\n"
    assert files["/srv/hpc-c1/torque/mom_priv/config"] == (
        "# pbs_mom of hpc-c1, written by cloudd from the cloud's manifest.\n"
        "$pbsserver hpc-head\n"
        "$logevent 0x1ff\n"
        "$status_update_time 10\n"
        "$usecp *:/home /home\n"
        "$usecp *:/var/tmp/lab/shared /var/tmp/lab/shared\n")
    (config,) = [f for f in PROVIDER.role("compute").render(_a("compute"), {}).files
                 if f.path.name == "config"]
    assert config.reload == ("pbs_mom",)


def test_a_compute_node_without_a_head_waits() -> None:
    with pytest.raises(TemporaryError, match="hpc-c1 has no TORQUE head to report to yet"):
        _files(_a("compute", peers=PEERS[1:]))


@pytest.mark.parametrize(("settings", "error"), [
    ({"shared_paths": ["/home /etc"]}, "torque settings: shared_paths.0: String should match"),
    ({"shared_paths": ["relative"]}, "torque settings: shared_paths.0: String should match"),
    ({"queue": "batch\nset server"}, "torque settings: queue: String should match"),
    ({"np": 0}, "torque settings: np: Input should be greater than or equal to 1"),
    ({"qeue": "batch"}, "torque settings: qeue: Extra inputs are not permitted"),
])
def test_bad_settings_are_refused_before_anything_is_written(settings: dict[str, object],
                                                             error: str) -> None:
    with pytest.raises(PermanentError, match=error):
        _files(_a("compute", **settings))


def test_a_hostile_peer_name_is_refused() -> None:
    peers = (Peer("head\n$usecp *:/ /", "head", "10.2.0.10", True), *PEERS[1:])
    with pytest.raises(PermanentError, match="refusing to render head name"):
        _files(_a("compute", peers=peers))


@pytest.mark.parametrize(("role", "locks"), [
    ("head", ("server_priv/server.lock", "sched_priv/sched.lock")),
    ("compute", ("mom_priv/mom.lock",)),
])
def test_every_folder_is_root_s_alone(role: str, locks: tuple[str, ...]) -> None:
    # TORQUE's daemons all run as root and keep their pid in a lock file of their home: no
    # folder cloudd makes on the way there may be written by anyone else.
    a = _a(role)
    rendered = PROVIDER.role(role).render(a, {})
    assert all((d.owner, d.group) == ("root", "root") and d.mode & 0o022 == 0
               for d in rendered.dirs)
    for lock in locks:
        assert rendered.writers(a.root / "torque" / lock) == frozenset()
    assert rendered.writers(a.root / "log" / "pbs_server.out") == frozenset()


def test_head_services_in_order_with_their_home_and_server() -> None:
    prefix = ("nsenter", "--net=/run/netns/x")
    specs = PROVIDER.role("head").services(_a("head", prefix=prefix))
    assert [s.name for s in specs] == ["trqauthd", "pbs_server", "pbs_sched"]
    trqauthd, server, sched = specs
    assert server.argv == (*prefix, "/opt/torque/sbin/pbs_server", "-F",
                           "-d", "/srv/hpc-head/torque", "-H", "hpc-head")
    assert sched.argv == (*prefix, "/opt/torque/sbin/pbs_sched", "-d", "/srv/hpc-head/torque")
    assert ("PBSDEBUG", "1") in sched.env  # keeps pbs_sched in the foreground
    assert trqauthd.argv[:len(prefix) + 2] == (*prefix, "/opt/torque/sbin/trqauthd", "-F")
    assert all(("PBS_DEFAULT", "hpc-head") in s.env for s in specs)
    assert (server.depends_on, sched.depends_on) == (("trqauthd",), ("pbs_server",))
    assert server.readiness is not None and server.readiness.port == layout.SERVER_PORT
    assert str(server.readiness.host) == "10.2.0.10"
    assert all(s.log_path and s.log_path.startswith("/srv/hpc-head/log/") for s in specs)


def test_no_scheduler_no_pbs_sched() -> None:
    specs = PROVIDER.role("head").services(_a("head", scheduler=False))
    assert [s.name for s in specs] == ["trqauthd", "pbs_server"]


def test_compute_services() -> None:
    trqauthd, mom = PROVIDER.role("compute").services(_a("compute"))
    assert trqauthd.name == "trqauthd"
    assert mom.argv == ("/opt/torque/sbin/pbs_mom", "-F", "-d", "/srv/hpc-c1/torque",
                        "-H", "hpc-c1")
    assert mom.env == (("PBS_DEFAULT", "hpc-head"),)
    assert mom.reload_argv == ()  # SIGHUP re-reads mom_priv/config


@pytest.mark.parametrize(("settings", "queues", "expected"), [
    ({}, (), ("create queue batch queue_type=execution", "set queue batch enabled = True",
              "set queue batch started = True", "set server default_queue = batch",
              "set server scheduling = True", "set server allow_node_submit = True",
              "set server auto_node_np = True", "set server node_check_rate = 30",
              "set server scheduler_iteration = 10")),
    ({"queue": "long", "np": 4, "scheduler": False}, ("long",),
     ("set queue long enabled = True", "set queue long started = True",
      "set server default_queue = long", "set server scheduling = False",
      "set server allow_node_submit = True", "set server auto_node_np = False",
      "set server node_check_rate = 30", "set server scheduler_iteration = 10")),
])
def test_server_setup(settings: dict[str, object], queues: tuple[str, ...],
                      expected: tuple[str, ...]) -> None:
    assert layout.server_setup(layout.torque_settings(settings), queues=queues) == expected


@pytest.mark.parametrize(("np", "created"), [(None, 1), (8, 8)])
def test_node_np(np: int | None, created: int) -> None:
    assert layout.node_np(layout.torque_settings({"np": np})) == created
