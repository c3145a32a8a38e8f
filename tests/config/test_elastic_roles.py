"""An elastic role in a manifest: bounds, a node template and its addresses, the candidate
nodes they make, and each mistake refused with one sentence in place."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cloudd.config.manifest import load_cloud, load_cloud_text
from cloudd.config.model import ElasticSpec
from cloudd.config.portable import Recipient, text_for
from cloudd.errors import ConfigError
from cloudd.providers.catalog import CATALOG

HEAD = "    - {address: 192.0.2.20, image: /var/lib/cloudd/images/head.qcow2}\n"
COMPUTE = """\
    elastic: {min: 1, max: 3, idle_after: 60, cooldown: 30}
    template: {image: "/var/lib/cloudd/images/{name}.qcow2", overlay: true,
               base_image: /var/lib/cloudd/images/node.qcow2, memory_mib: 768}
    addresses: 192.0.2.30-192.0.2.33
"""


def write(tmp_path: Path, compute: str = COMPUTE) -> Path:
    (tmp_path / "t.xml").write_text("<domain/>")
    path = tmp_path / "hpc.yaml"
    path.write_text(
        "apiVersion: cloudd/v1\nkind: Cloud\nname: hpc\ntype: slurm\n"
        "domain_template: t.xml\npool:\n  - {name: pm1, address: 192.0.2.70}\n"
        f"roles:\n  head:\n{HEAD}  compute:\n{compute}settings: {{partition: main}}\n")
    return path


def test_the_candidates_are_named_and_imaged_from_the_template(tmp_path: Path) -> None:
    cloud = load_cloud(write(tmp_path), CATALOG)
    assert cloud.elastic == {"compute": ElasticSpec(1, 3, 60.0, 30.0)}
    computes = cloud.candidates("compute")
    assert [(n.name, n.address, n.image, n.memory_mib, n.overlay) for n in computes] == [
        (f"hpc-compute-{i}", f"192.0.2.{29 + i}", f"/var/lib/cloudd/images/hpc-compute-{i}.qcow2",
         768, True) for i in range(1, 5)]
    # The leader's cloud: the candidates in use only, the other roles whole.
    assert [n.name for n in cloud.in_use({"hpc-compute-2"}).nodes] == [
        "hpc-head-1", "hpc-compute-2"]
    assert cloud.candidates("head") == ()


def test_an_elastic_role_travels_as_written(tmp_path: Path) -> None:
    cloud = load_cloud(write(tmp_path), CATALOG)
    for recipient in Recipient:
        text = text_for(cloud, recipient)
        assert yaml.safe_load(text)["roles"]["compute"]["elastic"]["max"] == 3
        again = load_cloud_text(text, CATALOG)
        assert again.elastic == cloud.elastic
        assert [n.name for n in again.nodes] == [n.name for n in cloud.nodes]


def test_the_candidates_may_be_named_by_a_pattern(tmp_path: Path) -> None:
    cloud = load_cloud(write(tmp_path, COMPUTE + '    names: "cn{index}"\n'), CATALOG)
    assert [(n.name, n.image) for n in cloud.candidates("compute")][:2] == [
        ("cn1", "/var/lib/cloudd/images/cn1.qcow2"), ("cn2", "/var/lib/cloudd/images/cn2.qcow2")]


def test_a_list_of_addresses_makes_the_candidates_too(tmp_path: Path) -> None:
    compute = COMPUTE.replace("192.0.2.30-192.0.2.33", "[192.0.2.41, 192.0.2.40, 192.0.2.44]")
    cloud = load_cloud(write(tmp_path, compute), CATALOG)
    assert [n.address for n in cloud.candidates("compute")] == [
        "192.0.2.41", "192.0.2.40", "192.0.2.44"]


@pytest.mark.parametrize(("compute", "words"), [
    (COMPUTE.replace("max: 3", "max: 5"), "gives 4 address(es), fewer than max (5)"),
    (COMPUTE.replace("max: 3", "max: 0"), "greater than or equal to 1"),
    (COMPUTE.replace("min: 1, max: 3", "min: 3, max: 2"), "is 2, below min (3)"),
    (COMPUTE.replace("min: 1", "min: 0"), "allows 0 to 3 nodes; type slurm needs at least 1"),
    (COMPUTE.replace("{name}.qcow2", "compute.qcow2"), "put {name} in its path"),
    (COMPUTE.replace("192.0.2.30-192.0.2.33", "192.0.2.33-192.0.2.30"),
     "not a range FIRST-LAST, FIRST not above LAST"),
    (COMPUTE.replace("192.0.2.30-192.0.2.33", "192.0.2.30-2001:db8::1"), "not a range"),
    (COMPUTE.replace("192.0.2.30-192.0.2.33", "10.0.0.0-10.1.0.0"),
     "spans more than 1024 addresses"),
    (COMPUTE.replace("192.0.2.30-192.0.2.33", "compute-nodes"),
     "neither a list of addresses nor a range"),
    (COMPUTE.replace("memory_mib: 768", "memory_mib: 768, address: 192.0.2.9"), "address"),
    (COMPUTE.replace("idle_after: 60", "idle_after: 1"), "greater than or equal to 10"),
    (COMPUTE + "    spare: 2\n", "spare"),
    (COMPUTE + "    names: cn\n", "put {index} in it"),
    (COMPUTE + '    names: "CN{index}"\n', "is not a DNS label"),
])
def test_mistakes_are_refused_with_one_sentence(tmp_path: Path, compute: str,
                                                words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_cloud(write(tmp_path, compute), CATALOG)
    [problem] = [str(p) for p in info.value.problems]
    assert words in problem and "compute" in problem, problem


def test_only_a_role_its_type_lets_follow_the_queue_may_be_elastic(tmp_path: Path) -> None:
    path = write(tmp_path)
    path.write_text(
        "apiVersion: cloudd/v1\nkind: Cloud\nname: shop\ntype: web\n"
        "domain_template: t.xml\npool:\n  - {name: pm1, address: 192.0.2.70}\n"
        f"roles:\n  balancer:\n{HEAD}  database:\n{HEAD.replace('20', '21')}"
        f"  server:\n{COMPUTE}")
    with pytest.raises(ConfigError) as info:
        load_cloud(path, CATALOG)
    [problem] = [str(p) for p in info.value.problems]
    assert "role server of type web cannot be elastic (elastic roles: none)" in problem


def test_a_candidate_holds_no_other_role(tmp_path: Path) -> None:
    path = write(tmp_path)
    path.write_text(path.read_text().replace("192.0.2.20,", "192.0.2.31,"))
    with pytest.raises(ConfigError) as info:
        load_cloud(path, CATALOG)
    [problem] = [str(p) for p in info.value.problems]
    assert ("address 192.0.2.31 is a candidate node of elastic role compute, which holds "
            "no other role") in problem
