"""A pool host's `migration`: how the other hosts move guests to it live, checked as written,
with the host's address as the default stream address, and never in a node's view."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cloudd.config.manifest import load_cloud
from cloudd.config.model import Migration
from cloudd.config.portable import Recipient, text_for
from cloudd.errors import ConfigError
from cloudd.providers.catalog import CATALOG


def manifest(tmp_path: Path, pm1: str, pm2: str = "") -> Path:
    (tmp_path / "t.xml").write_text("<domain/>")
    path = tmp_path / "c1.yaml"
    path.write_text(f"""\
apiVersion: cloudd/v1
kind: Cloud
name: c1
type: web
domain_template: t.xml
pool:
  - {{name: pm1, address: 192.0.2.70{pm1}}}
  - {{name: pm2, address: 192.0.2.71{pm2}}}
roles:
  balancer: [{{address: 192.0.2.10, image: /i/b.qcow2}}]
  server: [{{address: 192.0.2.11, image: /i/s.qcow2}}]
  database: [{{address: 192.0.2.12, image: /i/d.qcow2}}]
""")
    return path


def test_each_host_says_how_it_takes_migrations(tmp_path: Path) -> None:
    cloud = load_cloud(manifest(
        tmp_path, ', migration: {uri: "qemu+tls://pm1.example/system", storage: san}',
        ', migration: {uri: "qemu+unix:///system?socket=/run/b/libvirt-sock", storage: san, '
        'address: 198.51.100.2, unsafe: true}'), CATALOG)
    assert [h.migration for h in cloud.pool] == [
        Migration("qemu+tls://pm1.example/system", "san", "192.0.2.70"),
        Migration("qemu+unix:///system?socket=/run/b/libvirt-sock", "san", "198.51.100.2",
                  unsafe=True)]


def test_two_hosts_cannot_take_migrations_at_one_uri(tmp_path: Path) -> None:
    both = ', migration: {uri: "qemu+tls://pm1.example/system", storage: san}'
    with pytest.raises(ConfigError) as info:
        load_cloud(manifest(tmp_path, both, both), CATALOG)
    [problem] = [str(p) for p in info.value.problems]
    assert problem.endswith("pool[1].migration.uri: migration URI "
                            "qemu+tls://pm1.example/system is already used by pool host pm1")


def test_a_node_s_view_has_no_migration_settings(tmp_path: Path) -> None:
    cloud = load_cloud(manifest(
        tmp_path, ', migration: {uri: "qemu+tls://pm1.example/system", storage: san}'), CATALOG)
    pool = yaml.safe_load(text_for(cloud, Recipient.NODE))["pool"]
    assert pool == [{"name": "pm1", "address": "192.0.2.70"},
                    {"name": "pm2", "address": "192.0.2.71"}]
    assert yaml.safe_load(text_for(cloud, Recipient.HOST))["pool"][0]["migration"] == {
        "uri": "qemu+tls://pm1.example/system", "storage": "san"}


@pytest.mark.parametrize(("written", "problem"), [
    ('{uri: "http://pm1/system", storage: san}', "is not a libvirt URI of a system QEMU driver"),
    ('{uri: "qemu+tls://pm1/session", storage: san}',
     "is not a libvirt URI of a system QEMU driver"),
    ('{uri: "qemu+tcp://pm1/system", storage: san}',  # no authentication
     "is not a libvirt URI of a system QEMU driver"),
    ('{uri: "qemu+ssh://pm1/system?command=/bin/sh", storage: san}',
     "is not a libvirt URI of a system QEMU driver"),
    ('{uri: "qemu+tls://pm1/system\\n", storage: san}',
     "is not a libvirt URI of a system QEMU driver"),
    ('{uri: "qemu+tls://pm1/system", storage: "San 1"}', "is not a DNS label"),
    ('{uri: "qemu+tls://pm1/system", storage: san, address: pm1.example}',
     "is not an IP address"),
    ('{uri: "qemu+tls://pm1/system"}', "pool[0].migration.storage: is required"),
    ('{uri: "qemu+tls://pm1/system", storage: san, shared: true}',
     "pool[0].migration.shared: unknown field"),
])
def test_a_bad_migration_setting_is_refused_with_where_it_is(tmp_path: Path, written: str,
                                                            problem: str) -> None:
    path = manifest(tmp_path, f", migration: {written}")
    with pytest.raises(ConfigError) as info:
        load_cloud(path, CATALOG)
    problems = [str(p) for p in info.value.problems]
    assert len(problems) == 1 and "pool[0].migration" in problems[0], problems
    assert problem in problems[0], problems
