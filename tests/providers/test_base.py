"""The provider interface: dependency order, secrets, atomic idempotent writes, packages."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from cloudd.errors import PermanentError, TemporaryError
from cloudd.providers.base import (
    Assignment,
    Changes,
    DirSpec,
    FileSpec,
    Peer,
    Provider,
    Rendered,
    Role,
    apply_rendered,
    converge,
    dependency_order,
    ensure_packages,
    missing_packages,
    node_services,
    read_secret,
    read_secrets,
)
from cloudd.providers.registry import Registry, default_registry
from cloudd.providers.service import ServiceSpec


def _assignment(tmp_path: Path, **kw: object) -> Assignment:
    base = dict(cloud="c", node="c-server-1", role="server", address="10.0.0.2",
                root=tmp_path / "root", secrets_dir=tmp_path / "secrets")
    base.update(kw)
    return Assignment(**base)  # type: ignore[arg-type]


def test_dependency_order_puts_dependencies_first() -> None:
    assert dependency_order({"balancer": ["server"], "server": ["database"], "database": []}) \
        == ("database", "server", "balancer")
    # Independent roles come out by name, so the order is stable.
    assert dependency_order({"b": [], "a": [], "c": ["b"]}) == ("a", "b", "c")


def test_dependency_cycle_and_unknown_role_are_refused() -> None:
    with pytest.raises(PermanentError, match="cycle among \\['a', 'b'\\]"):
        dependency_order({"a": ["b"], "b": ["a"]})
    with pytest.raises(PermanentError, match="role 'a' depends on unknown role\\(s\\) \\['zz'\\]"):
        dependency_order({"a": ["zz"]})


def test_assignment_peers_by_role_and_health(tmp_path: Path) -> None:
    peers = (Peer("db", "database", "10.0.0.9", True), Peer("s1", "server", "10.0.0.2", True),
             Peer("s2", "server", "10.0.0.3", False))
    a = _assignment(tmp_path, peers=peers)
    assert [p.node for p in a.peers_of("server")] == ["s1", "s2"]
    assert [p.node for p in a.healthy("server")] == ["s1"]
    assert a.healthy("balancer") == ()


def test_read_secrets(tmp_path: Path) -> None:
    a = _assignment(tmp_path)
    a.secrets_dir.mkdir()
    (a.secrets_dir / "pw").write_text("s3cret\n")
    (a.secrets_dir / "empty").write_text("")
    assert read_secrets(a, ["pw"]) == {"pw": "s3cret"}
    (a.secrets_dir / "key").write_bytes(b"\xff\x00key\n")
    assert read_secret(a, "key") == b"\xff\x00key\n"  # bytes as they are, newline kept
    with pytest.raises(PermanentError, match=r"secret .nope. not found: .*/secrets/nope"):
        read_secrets(a, ["nope"])
    with pytest.raises(PermanentError, match="secret 'empty' is empty"):
        read_secrets(a, ["empty"])
    with pytest.raises(PermanentError, match=r"secret name '\.\./x' is not a plain file name"):
        read_secrets(a, ["../x"])


def test_apply_rendered_writes_once_and_reports_reloads(tmp_path: Path) -> None:
    conf = tmp_path / "etc" / "app.conf"
    secret = tmp_path / "etc" / "secret.conf"
    rendered = Rendered(
        dirs=(DirSpec(tmp_path / "etc", 0o750),),
        files=(FileSpec(conf, "a = 1\n", reload=("app",)),
               FileSpec(secret, "pw\n", 0o600, reload=("app", "db"))),
    )
    first = apply_rendered(rendered)
    assert first == Changes(changed=(conf, secret), reload=("app", "db"))
    assert conf.read_text() == "a = 1\n"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "etc").stat().st_mode) == 0o750
    # Same content again: nothing written, nothing to reload.
    inode = conf.stat().st_ino
    assert apply_rendered(rendered) == Changes()
    assert conf.stat().st_ino == inode
    # One file changes: only its services reload; no temporary file is left behind.
    changed = Rendered(files=(FileSpec(conf, "a = 2\n", reload=("app",)),))
    assert apply_rendered(changed) == Changes(changed=(conf,), reload=("app",))
    assert sorted(os.listdir(tmp_path / "etc")) == ["app.conf", "secret.conf"]
    # A mode change alone is applied too.
    assert apply_rendered(Rendered(files=(FileSpec(conf, "a = 2\n", 0o640),))).changed == (conf,)


def test_apply_rendered_unknown_owner_changes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "x.conf"
    with pytest.raises(PermanentError, match=r"no such user or group: .*no-such-user-h8"):
        apply_rendered(Rendered(files=(FileSpec(target, "x", owner="no-such-user-h8"),)))
    assert not target.exists()


class _Loop(Role):
    name = "a"
    depends_on = ("b",)


class _Back(Role):
    name = "b"
    depends_on = ("a",)


def test_writers_are_the_owners_and_writable_groups_of_a_path_and_of_what_holds_it() -> None:
    root = Path("/n")
    rendered = Rendered(dirs=(
        DirSpec(root), DirSpec(root / "run"), DirSpec(root / "run" / "munge", 0o755, "munge"),
        DirSpec(root / "state", 0o700, "slurm", "slurm"), DirSpec(root / "shared", 0o770,
                                                                  "root", "staff"),
        DirSpec(root / "tmp", 0o1777), DirSpec(root / "other", 0o775)))
    assert rendered.writers(root / "run" / "x.pid") == frozenset()
    assert rendered.writers(root / "run") == frozenset()
    assert rendered.writers(root / "run" / "munge" / "munge.pid") == {"munge"}
    # A folder inside another user's folder is that user's too: they may rename it away.
    assert rendered.writers(root / "state" / "sub" / "file") == {"slurm"}
    assert rendered.writers(root / "shared" / "a") == {"@staff"}
    assert rendered.writers(root / "tmp" / "x.pid") == {"@root", "*"}  # sticky: made first
    assert rendered.writers(root / "other") == {"@root"}
    assert rendered.writers(Path("/elsewhere/x")) == frozenset()  # not this rendering's
    assert rendered.writers(Path("/nx/run")) == frozenset()  # a prefix is not a parent


def test_registry() -> None:
    registry = default_registry()
    assert registry.types() == tuple(sorted(registry.types()))
    assert {"slurm", "torque", "web"} <= set(registry.types())
    assert "web" in registry
    assert registry.get("torque").role_order == ("head", "compute")
    assert registry.get("web").role_order == ("database", "server", "balancer")
    with pytest.raises(PermanentError,
                       match=r"no provider for cloud type 'pbs' \(known: .*slurm.*torque.*web\)"):
        registry.get("pbs")
    with pytest.raises(PermanentError, match="already registered"):
        registry.register(registry.get("web"))
    with pytest.raises(PermanentError, match="has no role 'compute' \\(roles: balancer, "):
        registry.get("web").role("compute")

    class Cyclic(Provider):
        cloud_type = "cyclic"
        roles = {"a": _Loop(), "b": _Back()}

    empty = Registry()
    with pytest.raises(PermanentError, match="cycle"):
        empty.register(Cyclic())
    assert empty.types() == ()


def test_every_type_the_validator_accepts_has_a_provider_whose_roles_it_knows() -> None:
    """The catalog (what `validate` accepts) and the registry (what agents run) name the
    same types, and each provider has a role for every role its type's manifest may list."""
    from cloudd.providers.catalog import CATALOG

    registry = default_registry()
    assert set(CATALOG) == set(registry.types()) == {"appscale", "slurm", "torque", "web"}
    for name, spec in CATALOG.items():
        provider = registry.get(name)
        assert provider.cloud_type == name
        assert {r.name for r in spec.roles} == set(provider.roles), name


async def test_packages_already_installed_run_no_apt() -> None:
    # nginx and mariadb-server are installed on this machine (make setup); `false` as apt-get
    # would fail the call if it were run.
    assert await missing_packages(["nginx", "mariadb-server"]) == ()
    assert await ensure_packages(["nginx", "mariadb-server"], apt_get=("false",)) == ()
    assert await missing_packages(["nginx", "cloudd-no-such-package"]) == (
        "cloudd-no-such-package",)


async def test_packages_install_failure_is_one_precise_error() -> None:
    with pytest.raises(PermanentError, match="cannot install cloudd-no-such-package: "):
        await ensure_packages(["cloudd-no-such-package"], apt_get=("false",))


async def test_an_install_cut_short_is_configured_and_tried_again(tmp_path: Path) -> None:
    # apt-get refuses everything after dpkg was killed mid-install (a stop kills apt's
    # session); the fake dpkg records that `dpkg --configure -a` ran.
    apt = tmp_path / "apt-get"
    apt.write_text("#!/bin/sh\necho \"E: dpkg was interrupted, you must manually run "
                   "'dpkg --configure -a' to correct the problem.\"\nexit 100\n")
    dpkg = tmp_path / "dpkg"
    dpkg.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'dpkg.args'}\n")
    for script in (apt, dpkg):
        script.chmod(0o755)
    with pytest.raises(TemporaryError, match=r"^dpkg was interrupted: `dpkg --configure -a` ran$"):
        await ensure_packages(["cloudd-no-such-package"], apt_get=(str(apt),),
                              dpkg=(str(dpkg),))
    assert (tmp_path / "dpkg.args").read_text() == "--configure -a\n"
    dpkg.write_text("#!/bin/sh\necho 'dpkg: error: cannot lock'\nexit 2\n")
    with pytest.raises(TemporaryError, match=r"`dpkg --configure -a` failed: dpkg: error: "):
        await ensure_packages(["cloudd-no-such-package"], apt_get=(str(apt),),
                              dpkg=(str(dpkg),))


class _Echo(Role):
    """A role whose file carries its secret and its healthy peers, to watch re-rendering."""

    name = "echo"
    prepared = 0

    def secrets(self, a: Assignment) -> tuple[str, ...]:
        return ("token",)

    def render(self, a: Assignment, secrets: Mapping[str, str]) -> Rendered:
        peers = ",".join(p.address for p in a.healthy("echo"))
        return Rendered(files=(FileSpec(a.root / "echo.conf", f"{secrets['token']} {peers}\n",
                                        0o600, reload=("echo",)),))

    def services(self, a: Assignment) -> tuple[ServiceSpec, ...]:
        return (ServiceSpec(name="echo", argv=("cat",)),)

    async def prepare(self, a: Assignment) -> None:
        type(self).prepared += 1


class _EchoProvider(Provider):
    cloud_type = "echo"
    roles = {"echo": _Echo()}


async def test_converge_writes_prepares_and_reports_reloads(tmp_path: Path) -> None:
    a = _assignment(tmp_path, role="echo", peers=(Peer("e2", "echo", "10.0.0.3", True),))
    a.secrets_dir.mkdir()
    (a.secrets_dir / "token").write_text("t0k\n")
    first = await converge(_EchoProvider(), a, apt_get=("false",))
    assert [s.name for s in first.services] == ["echo"]
    assert first.changes.reload == ("echo",) and first.installed == ()
    assert (a.root / "echo.conf").read_text() == "t0k 10.0.0.3\n"
    assert (await converge(_EchoProvider(), a)).changes == Changes()
    # A peer turns unhealthy: re-rendered, and the service is asked to reload.
    sick = replace(a, peers=(Peer("e2", "echo", "10.0.0.3", False),))
    assert (await converge(_EchoProvider(), sick)).changes.reload == ("echo",)
    assert (a.root / "echo.conf").read_text() == "t0k \n"
    assert _Echo.prepared == 3


class _Store(Role):
    """A role of the two-role provider below: one service, one file naming its role."""

    name = "store"
    order: list[str] = []

    def render(self, a: Assignment, secrets: Mapping[str, str]) -> Rendered:
        fronts = ",".join(p.node for p in a.peers_of("front"))
        return Rendered(files=(FileSpec(a.root / f"{self.name}.conf",
                                        f"{a.role} sees fronts {fronts}\n"),))

    def services(self, a: Assignment) -> tuple[ServiceSpec, ...]:
        return (ServiceSpec(name=f"{self.name}d", argv=("true",)),)

    async def prepare(self, a: Assignment) -> None:
        type(self).order.append(a.role)


class _Front(_Store):
    name = "front"
    depends_on = ("store",)

    def render(self, a: Assignment, secrets: Mapping[str, str]) -> Rendered:
        stores = ",".join(f"{p.node}:{p.healthy}" for p in a.peers_of("store"))
        return Rendered(files=(FileSpec(a.root / f"{self.name}.conf",
                                        f"{a.role} sees stores {stores}\n"),))

    def services(self, a: Assignment) -> tuple[ServiceSpec, ...]:
        return (ServiceSpec(name="frontd", argv=("true",), depends_on=("frontlog",)),
                ServiceSpec(name="frontlog", argv=("true",)))


class _TwoRoles(Provider):
    cloud_type = "two"
    roles = {"front": _Front(), "store": _Store()}


async def test_a_node_of_two_roles_renders_prepares_and_runs_both_in_order(
        tmp_path: Path) -> None:
    """Each role renders as itself, sees the node among the holders of the node's other
    role, prepares in dependency order; the services of both go to one supervisor, the
    front's after the store's."""
    _Store.order.clear()
    a = _assignment(tmp_path, node="n1", role="front", roles=("front", "store"),
                    peers=(Peer("n2", "store", "10.0.0.3", False),))
    done = await converge(_TwoRoles(), a, apt_get=("false",))
    assert (a.root / "store.conf").read_text() == "store sees fronts n1\n"
    assert (a.root / "front.conf").read_text() == "front sees stores n1:True,n2:False\n"
    assert _Store.order == ["store", "front"]
    assert [(s.name, s.depends_on) for s in done.services] == [
        ("stored", ()), ("frontd", ("frontlog", "stored")), ("frontlog", ("stored",))]


def test_two_roles_of_a_node_may_not_name_one_service(tmp_path: Path) -> None:
    class Clash(_Store):
        name = "front"
        depends_on = ("store",)

        def services(self, a: Assignment) -> tuple[ServiceSpec, ...]:
            return (ServiceSpec(name="stored", argv=("true",)),)

    class Both(Provider):
        cloud_type = "both"
        roles = {"front": Clash(), "store": _Store()}

    with pytest.raises(PermanentError, match="roles store and front of node n1 both run a "
                                             "service named 'stored'"):
        node_services(Both(), _assignment(tmp_path, node="n1", role="store",
                                          roles=("store", "front")))


def test_a_peer_of_several_roles_counts_for_each(tmp_path: Path) -> None:
    a = _assignment(tmp_path, peers=(Peer("x", "server", "10.0.0.7", True,
                                          ("server", "balancer")),))
    assert [p.node for p in a.peers_of("balancer")] == ["x"]
    assert [p.node for p in a.healthy("server")] == ["x"]
    assert a.peers_of("server") == a.peers  # a node of one role is not its own peer


def test_a_type_without_its_provider_is_named_at_the_agents_start() -> None:
    from cloudd.providers.registry import unprovided

    assert unprovided(["web", "slurm", "torque", "appscale"]) == []
    assert unprovided(["web", "pbs"], modules=["cloudd.providers.web.provider",
                                                "cloudd.providers.nowhere.provider"]) == [
        "provider module cloudd.providers.nowhere.provider cannot be imported: "
        "ModuleNotFoundError: No module named 'cloudd.providers.nowhere'",
        "cloud type 'pbs' is accepted by validation but has no provider here"]


async def test_a_command_past_its_bound_is_killed_with_its_session() -> None:
    from cloudd.providers.base import run_command

    assert await run_command(("sh", "-c", "echo out; echo err >&2")) == (0, "out\nerr\n")
    code, said = await run_command(("sh", "-c", "sleep 30 & sleep 30"), within=0.3)
    assert (code, said) == (-1, "sh ran past 0.3s")
