"""Node identity: kernel command line words and the cloud-init NoCloud seed ISO."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cloudd.vmctl.identity import (
    IdentityError,
    NodeIdentity,
    Pki,
    build_seed,
    cmdline_words,
    from_cmdline,
    from_identity_json,
    identity_json,
)

IDENT = NodeIdentity(cloud="web1", node="server-0", role="server", address="10.9.0.5/24",
                     members=("10.9.0.1:7400", "10.9.0.2:7400"), term=3,
                     pki="/var/lib/cloudd/pki/web1/server-0", gateway="10.9.0.1")
PKI = Pki(ca="-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n",
          cert="-----BEGIN CERTIFICATE-----\nME\n-----END CERTIFICATE-----\n",
          key="-----BEGIN PRIVATE KEY-----\nK\n-----END PRIVATE KEY-----\n")


def test_cmdline_round_trip_among_other_words() -> None:
    line = "console=ttyS0 panic=-1 " + " ".join(cmdline_words(IDENT)) + " quiet"
    assert from_cmdline(line) == IDENT
    assert "cloudd.members=10.9.0.1:7400,10.9.0.2:7400" in line


def test_address_can_be_left_to_the_guest_network_words() -> None:
    words = cmdline_words(IDENT, with_address=False)
    assert not any(w.startswith("cloudd.ip=") for w in words)


@pytest.mark.parametrize(("change", "message"), [
    ({"role": "a b"}, "identity role 'a b' must be non-empty"),
    ({"cloud": ""}, "identity cloud '' must be non-empty"),
    ({"address": "10.9.0.5"}, "needs a prefix length"),
    ({"members": ("10.9.0.1",)}, "must be host:port"),
    ({"term": -1}, "term must be >= 0"),
])
def test_bad_values_are_refused(change: dict[str, object], message: str) -> None:
    bad = NodeIdentity(**{**IDENT.__dict__, **change})  # type: ignore[arg-type]
    with pytest.raises(IdentityError, match=message):
        cmdline_words(bad)


def test_reading_a_cmdline_without_identity_names_what_lacks() -> None:
    with pytest.raises(IdentityError, match=r"lacks cloudd\.cloud, cloudd\.node, cloudd\.role"):
        from_cmdline("console=ttyS0 cloudd.ip=1.2.3.4/8 cloudd.term=1")
    with pytest.raises(IdentityError, match=r"cloudd\.term is not an integer"):
        from_cmdline("cloudd.cloud=a cloudd.node=b cloudd.role=c cloudd.ip=d/1 cloudd.term=x")


def isoinfo(iso: Path, *args: str) -> str:
    return subprocess.run(["isoinfo", "-i", str(iso), *args], capture_output=True,
                          text=True, check=True, timeout=30).stdout


def test_nocloud_seed_iso(tmp_path: Path) -> None:
    if shutil.which("genisoimage") is None:
        pytest.fail("genisoimage is not installed: apt-get install genisoimage")
    iso = build_seed(IDENT, mac="52:54:00:aa:bb:cc", pki=PKI, out=tmp_path / "seed.iso")
    assert iso.stat().st_mode & 0o777 == 0o600
    assert "Volume id: cidata" in isoinfo(iso, "-d")
    meta = yaml.safe_load(isoinfo(iso, "-J", "-x", "/meta-data"))
    cred = hashlib.sha256(PKI.cert.encode()).hexdigest()[:12]
    assert meta == {"instance-id": f"web1-server-0-t3-{cred}", "local-hostname": "server-0"}
    user_text = isoinfo(iso, "-J", "-x", "/user-data")
    assert user_text.startswith("#cloud-config\n")
    files = {f["path"]: f for f in yaml.safe_load(user_text)["write_files"]}
    assert sorted(files) == ["/etc/cloudd/identity.json", "/etc/cloudd/pki/ca.crt",
                             "/etc/cloudd/pki/server-0.crt", "/etc/cloudd/pki/server-0.key",
                             "/root/.ssh/authorized_keys"]
    assert files["/root/.ssh/authorized_keys"]["content"] == ""  # no way in
    assert {f["permissions"] for f in files.values()} == {"0600"}
    assert {f["owner"] for f in files.values()} == {"root:root"}
    identity = from_identity_json(files["/etc/cloudd/identity.json"]["content"], pki="/p")
    assert identity == NodeIdentity(**{**IDENT.__dict__, "pki": "/p"})
    assert files["/etc/cloudd/pki/server-0.key"]["content"] == PKI.key
    assert files["/etc/cloudd/pki/server-0.crt"]["content"] == PKI.cert
    assert files["/etc/cloudd/pki/ca.crt"]["content"] == PKI.ca
    # Rock Ridge keeps the files' own modes: nothing in the seed is readable by others
    listing = isoinfo(iso, "-R", "-l")
    modes = {line.split()[-1]: line.split()[0] for line in listing.splitlines()
             if line.startswith("-")}
    assert modes == dict.fromkeys(("meta-data", "network-config", "user-data"), "-rw-------")
    net = yaml.safe_load(isoinfo(iso, "-J", "-x", "/network-config"))
    eth = net["ethernets"]["eth0"]
    assert eth["match"]["macaddress"] == "52:54:00:aa:bb:cc"
    assert eth["addresses"] == ["10.9.0.5/24"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed.iso"]


def test_seed_with_a_bad_identity_writes_nothing(tmp_path: Path) -> None:
    bad = NodeIdentity(**{**IDENT.__dict__, "node": "a b"})
    with pytest.raises(IdentityError):
        build_seed(bad, mac="52:54:00:aa:bb:cc", pki=PKI, out=tmp_path / "seed.iso")
    assert list(tmp_path.iterdir()) == []


def test_identity_file_round_trip() -> None:
    assert from_identity_json(identity_json(IDENT), pki=IDENT.pki) == IDENT


@pytest.mark.parametrize(("text", "message"), [
    ("[1]", "the identity is not a JSON object"),
    ("{", "the identity is not JSON"),
    ('{"cloud": "a", "extra": 1}', "has unknown fields extra; lacks node, role, address, "
     "members, term"),
    ('{"cloud": "a", "node": "b", "role": "c", "address": "10.0.0.1/24", "members": [], '
     '"term": "3"}', "identity field term must be a int, got '3'"),
    ('{"cloud": "a", "node": "b", "role": "c", "address": "10.0.0.1/24", "members": [], '
     '"term": true}', "identity field term must be a int, got True"),
    ('{"cloud": "a", "node": "b", "role": "c", "address": "10.0.0.1/24", "members": [1], '
     '"term": 3}', "members must be a list of name@address:port"),
    ('{"cloud": "a", "node": "b c", "role": "c", "address": "10.0.0.1/24", "members": [], '
     '"term": 3}', "identity node 'b c' must be non-empty, without spaces"),
])
def test_a_bad_identity_file_is_refused_in_one_sentence(text: str, message: str) -> None:
    with pytest.raises(IdentityError, match=message):
        from_identity_json(text)


def test_a_lost_or_empty_host_key_is_made_anew_at_boot_and_good_ones_are_kept(
        tmp_path: Path) -> None:
    """The seed's bootcmd, run as cloud-init runs it (sh -c), on a folder where a killed
    guest's first boot left one key empty and one missing: those two are made, the third
    kept as it was; and the seed tells cloud-init's ssh module to keep them."""
    import subprocess

    from cloudd.vmctl.identity import HOST_KEYS, seed_files

    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f",
                    str(tmp_path / "ssh_host_rsa_key")], check=True)
    kept = (tmp_path / "ssh_host_rsa_key").read_bytes()
    (tmp_path / "ssh_host_ed25519_key").write_bytes(b"")  # written, never flushed
    (tmp_path / "ssh_host_ed25519_key.pub").write_bytes(b"")
    done = subprocess.run(["sh", "-c", HOST_KEYS], env={"SSH_DIR": str(tmp_path),
                                                        "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "ssh_host_rsa_key").read_bytes() == kept
    for t in ("ecdsa", "ed25519"):
        assert (tmp_path / f"ssh_host_{t}_key").stat().st_size > 0
        assert (tmp_path / f"ssh_host_{t}_key.pub").read_text().startswith(
            "ssh-ed25519" if t == "ed25519" else "ecdsa-sha2")
    user = yaml.safe_load(seed_files(IDENT, mac="52:54:00:aa:bb:cc", pki=PKI)["user-data"])
    assert user["bootcmd"] == [["sh", "-c", HOST_KEYS]] and user["ssh_deletekeys"] is False
