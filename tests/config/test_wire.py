"""Manifests by origin: a text from the network names no file and makes the agent read none;
a pool host's text carries the template and the secrets; a node's view carries neither."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
import yaml

from cloudd.config import sources, yamlsrc
from cloudd.config.manifest import load_cloud, load_cloud_text
from cloudd.config.portable import Recipient, portable_text, recipient_of, text_for
from cloudd.config.registry import Change, ManifestRegistry
from cloudd.config.sources import SELF_CONTAINED
from cloudd.errors import ConfigError
from cloudd.providers.catalog import CATALOG

TEMPLATE = "<domain type='qemu'><name>${name}</name></domain>"
PASSWORD = b"correct horse 'battery'\n"

FILE_FORM = """\
apiVersion: cloudd/v1
kind: Cloud
name: shop
type: web
domain_template: web.xml
pool:
  - {name: pm1, address: 192.0.2.70, fence: [ipmitool, -H, 10.0.0.1, power, "off"]}
  - {name: pm2, address: 192.0.2.71}
roles:
  balancer: [{address: 192.0.2.175, image: /img/lb.qcow2}]
  server: {addresses_file: servers.addresses, images_file: servers.images}
  database: [{address: 192.0.2.177, image: /img/db.qcow2}]
settings: {app_port: 8080, database_password_ref: db}
secrets: {db: {file: db.password}}
template_values: {kernel: /boot/vmlinuz}
"""

#: A text as it may come over the network: self-contained, every node inline.
WIRE_FORM = """\
apiVersion: cloudd/v1
kind: Cloud
name: shop
type: web
pool:
  - {name: pm1, address: 192.0.2.70}
roles:
  balancer: [{address: 192.0.2.175, image: /img/lb.qcow2}]
  server: [{address: 192.0.2.176, image: /img/web1.qcow2}]
  database: [{address: 192.0.2.177, image: /img/db.qcow2}]
settings: {app_port: 8080}
self_contained: true
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """An operator's manifest folder: the manifest, its template, list files and secret."""
    (tmp_path / "web.xml").write_text(TEMPLATE)
    (tmp_path / "servers.addresses").write_text("192.0.2.176\n192.0.2.178\n")
    (tmp_path / "servers.images").write_text("/img/web1.qcow2\n/img/web2.qcow2\n")
    (tmp_path / "db.password").write_bytes(PASSWORD)
    (tmp_path / "shop.yaml").write_text(FILE_FORM)
    return tmp_path


def forbid_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, fail the test if the loader reads or even looks at any file."""
    def refuse(*args: object, **kw: object) -> None:
        raise AssertionError(f"a file was read: {args}")
    monkeypatch.setattr(yamlsrc, "read_bounded", refuse)
    monkeypatch.setattr(Path, "is_file", refuse)


@pytest.fixture
def no_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_reads(monkeypatch)


def refusal(text: str, **kw: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_cloud_text(text, CATALOG, **kw)  # type: ignore[arg-type]
    return [f"{p.field}: {p.message}" for p in info.value.problems]


@pytest.mark.parametrize(("change", "field", "key"), [
    (("  server: [{address: 192.0.2.176, image: /img/web1.qcow2}]",
      "  server: {addresses_file: /root/hosts, images_file: /root/images}"),
     "roles.server.addresses_file", "addresses_file"),
    (("self_contained: true", "secrets: {db: {file: /etc/cloudd/pki/ca.key}}\n"
      "self_contained: true"), "secrets.db.file", "file"),
    (("self_contained: true", "domain_template: /etc/shadow\nself_contained: true"),
     "domain_template", "domain_template"),
    (("settings: {app_port: 8080}", "settings: {app_port: 8080, tls_key_file: /root/k}"),
     "settings.tls_key_file", "tls_key_file"),
])
def test_a_text_from_the_network_names_no_file(no_reads: None, change: tuple[str, str],
                                               field: str, key: str) -> None:
    text = WIRE_FORM.replace(*change)
    assert text != WIRE_FORM
    first = refusal(text)[0]
    assert first == (f"{field}: {SELF_CONTAINED}: {key!r} names a file of the receiving "
                     "machine; list files, templates and secrets are inlined by cloudd-cli "
                     "apply")


def test_a_text_from_the_network_must_say_it_is_self_contained(no_reads: None) -> None:
    assert refusal(WIRE_FORM.replace("self_contained: true\n", "")) == [
        f"self_contained: {SELF_CONTAINED}: it does not say self_contained: true; list files, "
        "templates and secrets are inlined by cloudd-cli apply"]
    assert load_cloud_text(WIRE_FORM, CATALOG).name == "shop"


def test_validation_never_quotes_a_file_the_sender_did_not_send(folder: Path) -> None:
    """The issue's exploit: a role reading its addresses from a root-only file used to come
    back with the file's first line in the error."""
    private = folder / "id_ed25519"
    private.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAB3Nza\n")
    text = WIRE_FORM.replace("  server: [{address: 192.0.2.176, image: /img/web1.qcow2}]",
                             f"  server: {{addresses_file: {private}, images_file: {private}}}")
    with pytest.raises(ConfigError) as info:
        load_cloud_text(text, CATALOG)
    assert "PRIVATE KEY" not in str(info.value) and "AAAAB3" not in str(info.value)
    # the same manifest as the operator's own file may read it (and tell the operator)
    (folder / "mine.yaml").write_text(text.replace("self_contained: true\n",
                                                   "domain_template: web.xml\n"))
    with pytest.raises(ConfigError) as info:
        load_cloud(folder / "mine.yaml", CATALOG)
    assert "PRIVATE KEY" in str(info.value)


@pytest.mark.parametrize(("change", "message"), [
    (("secrets: {db: {file: db.password}}", "secrets: {db: {value_b64: aHVudGVyMg==}}"),
     "secrets.db.value_b64: a secret's contents are written by cloudd only, in the manifests "
     "it sends; put it in a file and reference it as secrets: {NAME: {file: PATH}}"),
    (("domain_template: web.xml", "domain_template_text: '<domain/>'"),
     "domain_template_text: is written by cloudd only, in the manifests it sends; name the "
     "template's file with domain_template"),
])
def test_an_operators_file_may_not_carry_what_only_cloudd_writes(
        folder: Path, change: tuple[str, str], message: str) -> None:
    (folder / "shop.yaml").write_text(FILE_FORM.replace(*change))
    with pytest.raises(ConfigError) as info:
        load_cloud(folder / "shop.yaml", CATALOG)
    assert [f"{p.field}: {p.message}" for p in info.value.problems] == [message]


def test_secrets_in_a_text_are_checked_without_quoting_them(no_reads: None) -> None:
    def with_secret(entry: str) -> str:
        return WIRE_FORM.replace("self_contained: true", f"secrets: {{db: {entry}}}\n"
                                 "self_contained: true")
    assert refusal(with_secret("{value_b64: 'hunter2 is not base64!'}")) == [
        "secrets.db.value_b64: is not base64 text"]
    assert refusal(with_secret("{value_b64: 12345}")) == ["secrets.db.value_b64: must be base64 "
                                                          "text"]
    assert refusal(with_secret("{value_b64: x, extra: 1}")) == [
        "secrets.db: must be {value_b64: BASE64} or {}"]
    assert refusal(WIRE_FORM.replace("self_contained: true", "secrets: {../x: {}}\n"
                                     "self_contained: true"))[0].startswith(
        "secrets.../x: secret name '../x' is not a plain name")
    held = load_cloud_text(with_secret("{value_b64: aHVudGVyMg==}"), CATALOG)
    assert held.secrets["db"].value == b"hunter2" and "hunter2" not in repr(held)


def test_a_pool_hosts_text_round_trips_template_secrets_and_fence(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cloud = load_cloud(folder / "shop.yaml", CATALOG)
    forbid_reads(monkeypatch)
    assert cloud.template_text == TEMPLATE and cloud.secrets["db"].value == PASSWORD
    text = text_for(cloud, Recipient.HOST)
    assert text == portable_text(cloud, cloud.text)
    data = yaml.safe_load(text)
    assert data["self_contained"] is True and "domain_template" not in data
    assert data["secrets"] == {"db": {"value_b64": base64.b64encode(PASSWORD).decode()}}
    again = load_cloud_text(text, CATALOG)  # reads nothing
    assert again.template_text == TEMPLATE and again.secrets == cloud.secrets
    assert again.nodes == cloud.nodes and again.pool == cloud.pool
    assert again.host("pm1").fence == ("ipmitool", "-H", "10.0.0.1", "power", "off")
    assert again.template_values == cloud.template_values
    assert again.role_secrets == {"database": ("db",), "server": ("db",), "balancer": ()}
    # whichever host leads next hands on the same cloud
    assert load_cloud_text(text_for(again, Recipient.HOST), CATALOG).secrets == cloud.secrets


def test_a_nodes_view_has_no_secret_no_template_no_fence(folder: Path) -> None:
    cloud = load_cloud(folder / "shop.yaml", CATALOG)
    text = text_for(cloud, Recipient.NODE)
    for leak in (base64.b64encode(PASSWORD).decode(), "value_b64", "<domain", "ipmitool",
                 "vmlinuz", "fence", "domain_template"):
        assert leak not in text
    view = load_cloud_text(text, CATALOG, with_template=False)
    assert view.nodes == cloud.nodes and view.settings == cloud.settings
    assert list(view.secrets) == ["db"] and not view.secrets["db"].held
    assert view.template_text is None and all(h.fence == () for h in view.pool)
    # what a node holds it passes on as it is: never more than a view
    assert "value_b64" not in text_for(view, Recipient.HOST)


def test_recipients_are_the_pool_hosts_and_everyone_else(folder: Path) -> None:
    cloud = load_cloud(folder / "shop.yaml", CATALOG)
    assert [recipient_of(cloud, m) for m in ("pm1", "pm2", "shop-database-1", "laptop")] == [
        Recipient.HOST, Recipient.HOST, Recipient.NODE, Recipient.NODE]


def test_an_installed_generation_is_read_as_received_and_must_be_private(
        folder: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    cloud = load_cloud(folder / "shop.yaml", CATALOG)
    other = tmp_path_factory.mktemp("installed")
    path = other / "shop.yaml"
    path.write_text(text_for(cloud, Recipient.HOST))
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="holds secrets' contents but other users may read it "
                                          r"\(mode 0644\); cloudd writes these files with mode "
                                          "0600"):
        load_cloud(path, CATALOG)
    path.chmod(0o600)
    installed = load_cloud(path, CATALOG)
    assert installed.secrets == cloud.secrets and installed.inputs == ()
    # a node's view holds no secret: its mode does not matter
    path.write_text(text_for(cloud, Recipient.NODE))
    path.chmod(0o644)
    assert load_cloud(path, CATALOG, with_template=False).name == "shop"
    # and a generation written by cloudd never names a file, even on disk
    path.write_text(text_for(cloud, Recipient.NODE).replace(
        "self_contained: true", "domain_template: /etc/shadow\nself_contained: true"))
    with pytest.raises(ConfigError, match="'domain_template' names a file"):
        load_cloud(path, CATALOG)


def test_a_node_agent_reads_neither_template_nor_secrets(folder: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[Path] = []
    real = yamlsrc.read_bounded
    monkeypatch.setattr(yamlsrc, "read_bounded",
                        lambda p, **kw: read.append(Path(p)) or real(p, **kw))
    cloud = load_cloud(folder / "shop.yaml", CATALOG, with_template=False)
    assert sorted(p.name for p in read) == ["servers.addresses", "servers.images", "shop.yaml"]
    assert not cloud.secrets["db"].held


def test_the_digest_follows_the_secrets_through_a_key_of_this_process(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_cloud(folder / "shop.yaml", CATALOG)
    text = text_for(first, Recipient.HOST)
    assert load_cloud(folder / "shop.yaml", CATALOG).digest == first.digest
    assert load_cloud_text(text, CATALOG).digest == load_cloud_text(text, CATALOG).digest
    (folder / "db.password").write_bytes(b"rotated\n")
    assert load_cloud(folder / "shop.yaml", CATALOG).digest != first.digest
    # the secret enters keyed: nobody without this process's key can test a guess against
    # a digest (nodes see it as their assignment's generation)
    view = text_for(first, Recipient.NODE)
    before = load_cloud_text(text, CATALOG).digest, load_cloud_text(view, CATALOG).digest
    monkeypatch.setattr(sources, "_KEY", b"another process's key")
    after = load_cloud_text(text, CATALOG).digest, load_cloud_text(view, CATALOG).digest
    assert after[0] != before[0]
    assert after[1] == before[1]  # a node's view holds no secret: the key plays no part


def test_a_rotated_secret_file_is_a_new_generation(folder: Path) -> None:
    reg = ManifestRegistry(folder, CATALOG)
    [event] = reg.scan()
    assert event.change is Change.LOADED and event.cloud is not None
    secret = folder / "db.password"
    st = secret.stat()
    secret.write_bytes(b"rotated\n")
    os.utime(secret, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    [event] = reg.scan()
    assert event.change is Change.LOADED and event.cloud is not None
    assert event.cloud.secrets["db"].value == b"rotated\n"


def test_a_missing_secret_is_refused_by_name_not_content(folder: Path) -> None:
    (folder / "db.password").unlink()
    with pytest.raises(ConfigError) as info:
        load_cloud(folder / "shop.yaml", CATALOG)
    assert [str(p).split(": ", 1)[1] for p in info.value.problems] == [
        f"secrets.db.file: '{folder / 'db.password'}': no such file"]
    # a machine that does not hold the secrets may still check the rest
    assert load_cloud(folder / "shop.yaml", CATALOG, with_secrets=False).name == "shop"
