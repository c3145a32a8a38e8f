"""What a seed sets up around the agent: chrony on the pool hosts only, and who may log in."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from shared.manifests import SHOP

from cloudd.commands.bootstrap.timeserver import drop_in
from cloudd.config.manifest import load_cloud
from cloudd.config.model import NodeAccess
from cloudd.pki import NodeIssuer, init_ca
from cloudd.providers.catalog import CATALOG
from cloudd.vmctl.domains import DomainRenderer
from cloudd.vmctl.identity import (
    CHRONY_CONF,
    ROOT_KEYS,
    GuestSetup,
    IdentityError,
    NodeIdentity,
    Pki,
    chrony_conf,
    seed_files,
)
from cloudd.vmctl.nodeseed import make_seed

IDENT = NodeIdentity(cloud="web1", node="server-0", role="server", address="10.9.0.5/24",
                     members=("pm1@10.9.0.1:7400", "pm2@10.9.0.2:7400"), term=3)
PKI = Pki(ca="CA\n", cert="CERT\n", key="KEY\n")
KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDrN4+XKFE7kFXRy1xJfg7A4ljxE+jpxHT2D8l0ofTXx "
       "alice@ops")


def user_data(setup: GuestSetup | None = None) -> dict[str, Any]:
    text = seed_files(IDENT, mac="52:54:00:aa:bb:cc", pki=PKI,
                      setup=setup or GuestSetup())["user-data"]
    assert text.startswith("#cloud-config\n")
    data: dict[str, Any] = json.loads(text.removeprefix("#cloud-config\n"))
    return data


def files_of(data: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {f["path"]: f for f in data["write_files"]}


def test_without_keys_no_user_is_made_and_root_gets_no_key() -> None:
    data = user_data()
    # root alone, locked: not even cloud-init's default `debian`
    assert data["users"] == [{"name": "root", "lock_passwd": True}]
    assert not any(key.startswith(("ssh", "disable_root", "chpasswd", "password"))
                   for key in data if key != "ssh_deletekeys")
    assert data["ssh_deletekeys"] is False  # the host keys the seed's bootcmd made: no way in
    # written empty: a key some earlier seed gave is gone too
    assert files_of(data)[ROOT_KEYS] == {"path": ROOT_KEYS, "permissions": "0600",
                                         "owner": "root:root", "content": ""}
    assert CHRONY_CONF not in files_of(data)


def test_keys_go_to_root_and_to_no_one_else() -> None:
    other = KEY.replace("alice@ops", "bob")
    data = user_data(GuestSetup(root_keys=(KEY, other)))
    assert data["users"] == [{"name": "root", "lock_passwd": True}]
    assert files_of(data)[ROOT_KEYS]["content"] == f"{KEY}\n{other}\n"
    assert not any(key.startswith(("ssh", "disable_root", "chpasswd", "password"))
                   for key in data if key != "ssh_deletekeys")
    assert data["ssh_deletekeys"] is False  # the host keys the seed's bootcmd made: no way in


def test_chrony_takes_the_pool_hosts_as_its_only_servers() -> None:
    data = user_data(GuestSetup(time_servers=("10.9.0.1", "10.9.0.2")))
    files = files_of(data)
    chrony = files[CHRONY_CONF]
    assert (chrony["permissions"], chrony["owner"]) == ("0644", "root:root")
    lines = [line for line in chrony["content"].splitlines() if not line.startswith("#")]
    assert [line for line in lines if line.split()[0] in ("server", "pool", "peer",
                                                          "sourcedir", "confdir")] == [
        "server 10.9.0.1 iburst", "server 10.9.0.2 iburst"]
    # stepped whenever a second off, not only in the first three updates as Debian's is
    assert [line for line in lines if line.startswith("makestep")] == ["makestep 1 -1"]
    # the agent's files stay private
    assert {f["permissions"] for p, f in files.items() if p != CHRONY_CONF} == {"0600"}


@pytest.mark.parametrize("server", ["10.9.0.1\npool evil.example", "pm1", ""])
def test_a_time_server_must_be_an_address(server: str) -> None:
    with pytest.raises(IdentityError, match="is not an IP address"):
        chrony_conf([server])


@pytest.mark.parametrize("key", ["", f"{KEY}\nssh-ed25519 AAAA other"])
def test_a_root_key_must_be_one_line(key: str) -> None:
    with pytest.raises(IdentityError, match="must be one non-empty line"):
        user_data(GuestSetup(root_keys=(key,)))


#: The shared web site with a second pool host: a seed names every pool host.
PM1 = "  - {name: pm1, address: 192.0.2.70}\n"
MANIFEST = SHOP.replace(PM1, PM1 + "  - {name: pm2, address: 192.0.2.71}\n")
SERVER = "shop-server-1"


@pytest.mark.parametrize("keys", [(), (KEY,)])
def test_a_hosts_seed_follows_the_manifest(tmp_path: Path, keys: tuple[str, ...]) -> None:
    extra = f"node_access: {{ssh_authorized_keys: {json.dumps(list(keys))}}}\n" if keys else ""
    (tmp_path / "web.xml").write_text("<domain/>")
    (tmp_path / "shop.yaml").write_text(MANIFEST + extra)
    cloud = load_cloud(tmp_path / "shop.yaml", CATALOG)
    assert [h.address for h in cloud.pool] == ["192.0.2.70", "192.0.2.71"]
    now = dt.datetime.now(dt.UTC)
    init_ca(tmp_path / "pki", now=now)
    iso = make_seed(cloud, cloud.node(SERVER), term=2, port=7400,
                    issuer=NodeIssuer.load(tmp_path / "pki"),
                    ca_pem=(tmp_path / "pki" / "ca.crt").read_text(), out=tmp_path / "s.iso",
                    now=now)
    text = subprocess.run(["isoinfo", "-i", str(iso), "-R", "-x", "/user-data"],
                          capture_output=True, text=True, check=True, timeout=30).stdout
    data = json.loads(text.removeprefix("#cloud-config\n"))
    assert [u["name"] for u in data["users"]] == ["root"]
    assert files_of(data)[ROOT_KEYS]["content"] == "".join(f"{k}\n" for k in keys)
    chrony = files_of(data)[CHRONY_CONF]["content"]
    assert "server 192.0.2.70 iburst\nserver 192.0.2.71 iburst\n" in chrony


def test_chrony_reads_the_guests_and_the_hosts_configuration(
        tmp_path: Path, have: Callable[[str], str]) -> None:
    """chronyd -p parses a configuration and prints it back, touching no clock."""
    chronyd = have("chronyd")
    for name, text in (("guest", chrony_conf(["10.9.0.1", "fd00::1"])),
                       ("host", drop_in(["10.9.0.0/24", "fd00::/64"]))):
        (tmp_path / name).write_text(text)
        done = subprocess.run([chronyd, "-p", "-f", str(tmp_path / name)], capture_output=True,
                              text=True, timeout=30, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [
            line for line in text.splitlines() if line and not line.startswith("#")]


def test_the_keys_are_part_of_what_hosts_check_a_define_against(tmp_path: Path) -> None:
    """Root's keys are part of the generation: a host holding another one than the leader's
    refuses the DEFINE of a seeded domain for now (tests/daemon/host/test_seeds.py), so
    leader and host never disagree on the seed."""
    (tmp_path / "web.xml").write_text("<domain/>")
    (tmp_path / "shop.yaml").write_text(MANIFEST)
    cloud = load_cloud(tmp_path / "shop.yaml", CATALOG)
    with_key = replace(cloud, node_access=NodeAccess((KEY,)))
    renderer = DomainRenderer(port=7400, pki_dir="")
    assert renderer.generation(with_key) != renderer.generation(cloud) != ""
