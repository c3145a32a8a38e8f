"""`node_access`: root's SSH keys on the nodes, public keys only, carried to the pool hosts
(who write them into the seeds) and to no node."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import yaml
from shared.manifests import SHOP

from cloudd.config.manifest import load_cloud, load_cloud_text
from cloudd.config.portable import Recipient, text_for
from cloudd.config.sshkeys import check_public_key
from cloudd.errors import ConfigError
from cloudd.providers.catalog import CATALOG

ED25519 = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDrN4+XKFE7kFXRy1xJfg7A4ljxE+jpxHT2D8l0ofTXx "
           "alice@ops")
ECDSA = ("ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBOJz6mu0RH0Fy2Mt"
         "fWgpF+P1QGqA3m1PZ3twq4ffzGEJLFGvcMdplzud6fTjO0bGXccnpTckjmcqFhBACNugMX0=")
#: A FIDO security key's public line (sshd takes these too).
SECURITY_KEY = ("sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIDrN4+XK"
                "FE7kFXRy1xJfg7A4ljxE+jpxHT2D8l0ofTXxAAAABHNzaDo= bob@yubikey")


def _last_bit_flipped(line: str) -> str:
    kind, data = line.split()
    raw = bytearray(base64.b64decode(data))
    raw[-1] ^= 1
    return f"{kind} {base64.b64encode(bytes(raw)).decode()}"


#: ECDSA's key data with its point moved off the curve.
OFF_CURVE = _last_bit_flipped(ECDSA)
#: What an operator might paste by mistake (not a real key: its body is a marker to look for).
PRIVATE = ("-----BEGIN OPENSSH PRIVATE KEY-----\n"
           "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABMARKERmarker\n"
           "-----END OPENSSH PRIVATE KEY-----\n")


def write(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "web.xml").write_text("<domain/>")
    path = tmp_path / "shop.yaml"
    path.write_text(SHOP + extra)
    return path


def access(*keys: str) -> str:
    return "node_access:\n  ssh_authorized_keys:\n" + "".join(
        f"    - {json.dumps(k)}\n" for k in keys)


def refusal(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_cloud(path, CATALOG)
    return [str(p).removeprefix(f"{path}:") for p in info.value.problems]


def test_without_the_field_no_one_gets_in(tmp_path: Path) -> None:
    assert load_cloud(write(tmp_path), CATALOG).node_access.ssh_authorized_keys == ()


def test_public_keys_are_taken_as_one_line_each(tmp_path: Path) -> None:
    cloud = load_cloud(write(tmp_path, access(ED25519, f"  {ECDSA}  ")), CATALOG)
    assert cloud.node_access.ssh_authorized_keys == (ED25519, ECDSA)


def test_a_security_keys_line_is_taken() -> None:
    assert check_public_key(SECURITY_KEY) == SECURITY_KEY


@pytest.mark.parametrize(("value", "message"), [
    (ED25519.replace("ssh-ed25519", "ssh-dss"), "does not start with an OpenSSH key type"),
    (f'from="10.0.0.0/8" {ED25519}', "options before the key are not accepted"),
    (f'command="/bin/sh" {ED25519}', "options before the key are not accepted"),
    (ED25519.replace("ssh-ed25519", "ssh-rsa"),
     "its key data is not the base64 of a key of type ssh-rsa"),
    ("ssh-ed25519 not-base64!", "its key data is not the base64 of a key of type ssh-ed25519"),
    ("ssh-ed25519", "its key data is not the base64"),
    # the key type alone, without the key that should follow it
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA==",
     "its key data is not the base64 of a key of type ssh-ed25519"),
    (OFF_CURVE, "its key data is not the base64 of a key of type ecdsa-sha2-nistp256"),
    (f"{ED25519}\n{ECDSA}", "must be one line without control characters"),
    (f"{ED25519}\rx", "must be one line without control characters"),
    ("   ", "is empty"),
    ("x" * 20000, "is longer than 16384 characters"),
    (PRIVATE, "is a private key: give the public key instead"),
    ("PuTTY-User-Key-File-3: ssh-ed25519\nPrivate-Lines: 1\n", "is a private key"),
    ("---- BEGIN SSH2 PUBLIC KEY ----\nAAAA\n---- END SSH2 PUBLIC KEY ----\n",
     "is an RFC 4716 public key"),
])
def test_anything_but_one_public_key_line_is_refused(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        check_public_key(value)
    assert "AAAA" not in str(info.value) and "marker" not in str(info.value)


def test_a_bad_key_is_placed_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, access(ED25519, "ssh-ed25519 AAAA"))
    assert refusal(path) == [
        "18:7: node_access.ssh_authorized_keys[1]: its key data is not the base64 of a key of "
        "type ssh-ed25519; give an OpenSSH public key line: TYPE BASE64 [COMMENT], as in a "
        ".pub file"]


def test_a_private_key_pasted_by_mistake_is_refused_and_never_quoted(tmp_path: Path) -> None:
    block = "".join(f"      {line}\n" for line in PRIVATE.splitlines())
    path = write(tmp_path, "node_access:\n  ssh_authorized_keys:\n    - |\n" + block)
    problems = refusal(path)
    assert problems == [
        "17:7: node_access.ssh_authorized_keys[0]: is a private key: give the public key "
        "instead (the one line of its .pub file), and keep the private key where it was"]
    assert not any("marker" in p or "PRIVATE" in p for p in problems)


@pytest.mark.parametrize(("extra", "message"), [
    ("node_access: {ssh_authorized_keys: " + json.dumps(ED25519) + "}",
     "node_access.ssh_authorized_keys: should be a valid list"),
    ("node_access: {keys: []}", "node_access.keys: unknown field"),
    ("node_access: {ssh_authorized_keys: [" + ", ".join([json.dumps(ED25519)] * 65) + "]}",
     "node_access.ssh_authorized_keys: should have at most 64 items"),
])
def test_the_fields_shape_is_checked(tmp_path: Path, extra: str, message: str) -> None:
    problems = refusal(write(tmp_path, extra + "\n"))
    assert len(problems) == 1 and message in problems[0], problems


def test_the_pool_hosts_get_the_keys_and_the_nodes_do_not(tmp_path: Path) -> None:
    cloud = load_cloud(write(tmp_path, access(ED25519, ECDSA)), CATALOG)
    host_text = text_for(cloud, Recipient.HOST)
    assert yaml.safe_load(host_text)["node_access"] == {"ssh_authorized_keys": [ED25519, ECDSA]}
    on_host = load_cloud_text(host_text, CATALOG)
    assert on_host.node_access == cloud.node_access
    # whichever host leads next hands the keys on, and the digest covers them
    assert load_cloud_text(text_for(on_host, Recipient.HOST),
                           CATALOG).node_access == cloud.node_access
    without = load_cloud_text(text_for(load_cloud(write(tmp_path), CATALOG), Recipient.HOST),
                              CATALOG)
    assert without.digest != on_host.digest
    node_text = text_for(cloud, Recipient.NODE)
    assert "node_access" not in node_text and "AAAAC3Nz" not in node_text
    view = load_cloud_text(node_text, CATALOG, with_template=False)
    assert view.node_access.ssh_authorized_keys == () and view.nodes == cloud.nodes
