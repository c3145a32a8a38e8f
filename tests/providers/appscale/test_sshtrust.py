"""The AppScale deployment's SSH trust: keys from seeds, the lines and files built from them."""

from __future__ import annotations

import subprocess
from pathlib import Path, PurePosixPath

import pytest
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_ssh_private_key,
    load_ssh_public_key,
)

from cloudd.providers.appscale import sshtrust as t

SEED_A = bytes(range(32))
SEED_B = bytes(range(100, 132))
NODES = (t.TrustNode("10.0.0.30", "as-head"), t.TrustNode("10.0.0.33", "as-w1"),
         t.TrustNode("10.0.0.34"))


def test_a_seed_gives_one_key_byte_for_byte() -> None:
    one, two = t.client_key(SEED_A, cloud="as1"), t.client_key(SEED_A, cloud="as1")
    assert one == two
    assert one != t.client_key(SEED_B, cloud="as1")


def test_the_private_text_is_an_openssh_key_whose_public_half_is_the_line() -> None:
    pair = t.client_key(SEED_A, cloud="as1")
    key = load_ssh_private_key(pair.private_text.encode(), None)
    line = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    assert pair.public_line == f"{line} cloudd-appscale-as1"
    assert pair.private_text.startswith("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    assert all(len(ln) <= 70 for ln in pair.private_text.splitlines())


def test_ssh_keygen_reads_the_private_key(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pair = t.host_key(SEED_B, cloud="as1")
    path = tmp_path / "key"
    path.write_text(pair.private_text)
    path.chmod(0o600)
    done = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == pair.public_line


@pytest.mark.parametrize("seed", [b"", bytes(31), bytes(33), "x" * 32])
def test_a_seed_of_another_size_is_refused(seed) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="seed must be 32 bytes"):
        t.client_key(seed, cloud="as1")


def test_authorized_keys_line_is_the_masters_only_without_forwarding() -> None:
    pair = t.client_key(SEED_A, cloud="as1")
    line = t.authorized_keys_line(pair.public_line, master="10.0.0.30")
    options, rest = line.split(" ", 1)
    assert rest == pair.public_line
    assert options.split(",") == ['from="10.0.0.30"', "no-agent-forwarding",
                                  "no-port-forwarding", "no-X11-forwarding"]


@pytest.mark.parametrize("master", ["10.0.0.30,0.0.0.0/0", '10.0.0.30" command="sh', "*"])
def test_a_master_that_is_not_one_address_is_refused(master: str) -> None:
    pair = t.client_key(SEED_A, cloud="as1")
    with pytest.raises(ValueError, match="not an IP address"):
        t.authorized_keys_line(pair.public_line, master=master)


def test_a_public_line_with_options_is_refused() -> None:
    with pytest.raises(ValueError, match="not one ssh-ed25519 key"):
        t.authorized_keys_line('command="sh" ssh-ed25519 AAAA x', master="10.0.0.30")


def test_merging_replaces_the_clouds_earlier_line_and_keeps_the_rest() -> None:
    old = t.authorized_keys_line(t.client_key(SEED_B, cloud="as1").public_line,
                                 master="10.0.0.30")
    other = "ssh-ed25519 AAAAC3Nza operator@desk"
    new = t.authorized_keys_line(t.client_key(SEED_A, cloud="as1").public_line,
                                 master="10.0.0.30")
    merged = t.merge_authorized_keys(f"{other}\n{old}\n", new)
    assert merged == f"{other}\n{new}\n"
    assert t.merge_authorized_keys(merged, new) == merged
    assert t.merge_authorized_keys("", new) == f"{new}\n"


def test_known_hosts_pins_the_host_key_for_each_address_and_name() -> None:
    pair = t.host_key(SEED_B, cloud="as1")
    text = t.known_hosts(pair.public_line, NODES)
    key = " ".join(pair.public_line.split()[:2])
    assert text.splitlines() == [f"10.0.0.30,as-head {key}", f"10.0.0.33,as-w1 {key}",
                                 f"10.0.0.34 {key}"]
    load_ssh_public_key(key.encode())


@pytest.mark.parametrize("node", [t.TrustNode("10.0.0.1", "a b"), t.TrustNode("a.example"),
                                  t.TrustNode("10.0.0.1", "*")])
def test_known_hosts_refuses_what_is_not_an_address_or_a_host_name(node: t.TrustNode) -> None:
    with pytest.raises(ValueError):
        t.known_hosts(t.host_key(SEED_B, cloud="as1").public_line, [node])


def test_the_sshd_dropin_offers_the_deployments_key_and_no_password() -> None:
    lines = [ln for ln in t.sshd_dropin().splitlines() if not ln.startswith("#")]
    assert lines == [f"HostKey {t.HOST_KEY_PATH}", "PermitRootLogin prohibit-password",
                     "PasswordAuthentication no", "KbdInteractiveAuthentication no"]


def test_the_master_and_node_files_with_their_modes() -> None:
    home = PurePosixPath("/root")
    master = t.master_files(SEED_A, SEED_B, cloud="as1", keyname="as1", home=home, nodes=NODES)
    assert [(f.path, f.mode) for f in master] == [
        (PurePosixPath("/root/.appscale/as1.key"), 0o600),
        (PurePosixPath("/root/.appscale/as1.known_hosts"), 0o644)]
    assert master[0].text == t.client_key(SEED_A, cloud="as1").private_text
    nodes = t.node_files(SEED_B, cloud="as1")
    assert [(f.path, f.mode) for f in nodes] == [(t.HOST_KEY_PATH, 0o600),
                                                 (t.SSHD_DROPIN_PATH, 0o644)]
    assert nodes[0].text == t.host_key(SEED_B, cloud="as1").private_text


@pytest.mark.parametrize("keyname", ["../x", "a/b", "", "-x"])
def test_a_keyname_that_is_not_a_file_name_is_refused(keyname: str) -> None:
    with pytest.raises(ValueError, match="keyname"):
        t.key_path(PurePosixPath("/root"), keyname)


def test_ssh_options_require_the_pinned_key() -> None:
    opts = t.ssh_options(home=PurePosixPath("/root"), keyname="as1")
    pairs = dict(zip(opts[::2], opts[1::2], strict=True))
    assert pairs["-F"] == "/dev/null" and pairs["-i"] == "/root/.appscale/as1.key"
    settings = [v for k, v in zip(opts[::2], opts[1::2], strict=True) if k == "-o"]
    assert "StrictHostKeyChecking=yes" in settings and "BatchMode=yes" in settings
    assert "UserKnownHostsFile=/root/.appscale/as1.known_hosts" in settings


def test_the_tools_find_wrappers_that_put_the_pin_first() -> None:
    from cloudd.providers.appscale import tools as tl

    ssh, scp = t.tools_wrappers(home=PurePosixPath("/srv/as/home"), keyname="as1")
    assert (ssh.path, scp.path) == (PurePosixPath("/srv/as/home/.cloudd-bin/ssh"),
                                    PurePosixPath("/srv/as/home/.cloudd-bin/scp"))
    assert ssh.mode == 0o755
    assert ssh.text.splitlines()[-1] == (
        "exec /usr/bin/ssh -o StrictHostKeyChecking=yes -o "
        "UserKnownHostsFile=/srv/as/home/.appscale/as1.known_hosts "
        '-o GlobalKnownHostsFile=/dev/null -o LogLevel=ERROR "$@"')
    env = tl.environment(tl.ToolsSettings(appscale=Path("/x"), folder=Path("/f"),
                                          home=Path("/srv/as/home")))
    assert env["PATH"].split(":")[0] == "/srv/as/home/.cloudd-bin"
