"""The manifest read without pydantic gives exactly what the pydantic models gave (kept in
tests/shared/manifest_pydantic.py with the parts of the loader that used them): thousands of
generated manifests, valid and broken (wrong types, unknown keys, keys that are not text,
bad addresses and labels, numbers at and past their limits, NaN, too many or too few items,
mistakes nested in the pool, the roles, an elastic role, the users, the timing), each loaded
by both from a file and as a received text. Both must build the same Cloud, or refuse it with
the same placed sentences (file:line:column: field: sentence) in the same order.
"""

from __future__ import annotations

import copy
import datetime
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from shared import manifest_pydantic as old
from shared.manifests import SHOP as SHOP_TEXT

from cloudd.config import manifest as new
from cloudd.config import yamlsrc
from cloudd.config.sources import Origin
from cloudd.errors import ConfigError
from cloudd.providers.catalog import CATALOG

REPO = Path(__file__).resolve().parents[2]
KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDrN4+XKFE7kFXRy1xJfg7A4ljxE+jpxHT2D8l0ofTXx "
       "alice@ops")

#: What a manifest may add to any of the shipped ones, so that every model is read.
EXTRAS: dict[str, Any] = {
    "network": {"prefix_length": 24, "gateway": "192.0.2.1"},
    "timing": {"unreachable_reset_after": 600, "monitor_interval": 10.5},
    "node_access": {"ssh_authorized_keys": [KEY]},
    "users": [{"name": "alice", "uid": 1001}, {"name": "bob", "uid": 1002, "gid": 2000,
                                               "groups": ["users", "video"]}],
    "two_host": {"fence_delay": 5, "wait_for_all": 60},
    "ensure": "stopped",
}
POOL_EXTRAS: dict[str, Any] = {
    "migration": {"uri": "qemu+tls://pm.example/system", "storage": "san",
                  "address": "198.51.100.9", "unsafe": True, "tls": True},
    "fence": ["ipmitool", "power", "off"],
    "libvirt_uri": "qemu+ssh://root@pm/system",
}
NODE_EXTRAS: dict[str, Any] = {
    "name": "nx-1", "memory_mib": 2048, "vcpus": 4, "host": "pm1", "source_host": "pm2",
    "run": "manual", "managed": False, "overlay": True, "base_image": "/img/base.qcow2",
}
ELASTIC = {
    "elastic": {"min": 1, "max": 3, "idle_after": 60, "cooldown": 30},
    "template": {"image": "/img/{name}.qcow2", "memory_mib": 768},
    "addresses": "192.0.2.230-192.0.2.233",
    "names": "c{index}",
}

#: Values anything may be set to: every type, and the edges of every bound.
ANY: list[Any] = [
    0, 1, -1, 9, 10, 24, 63, 64, 65, 128, 129, 512, 513, 999, 1000, 1001, 1024, 1025,
    59999, 60000, 1048576, 1048577, 1 << 63, 10 ** 30, 0.0, 0.5, 1.0, 9.5, 10.0, 3600,
    3600.5, 86400, 86401, 604800, 604801, float("nan"), float("inf"), float("-inf"), True,
    False, None, "", "a", "A", "-a", "a-", "a" * 63, "a" * 64, "pm1", "pm2", "x y",
    "192.0.2.99", "192.0.2.70", "::1", "::FFFF:1.2.3.4", "300.1.1.1", "192.0.2.5 ",
    "10.0.0.1/24", "/img/x.qcow2", "rel/x", "/img/{name}.qcow2", "qemu:///system",
    "qemu+tls://h/system", "xen:///system", "192.0.2.30-192.0.2.33", "192.0.2.33-192.0.2.30",
    "x-y", "::1-::5", "10.0.0.0-10.0.8.0", "running", "stopped", "always", "manual",
    "rerun-on-failure", "cloudd/v1", "Cloud", "web", "c{index}", "{index}" * 20, "x" * 100,
    "1.2.3.4" + " " * 70, KEY, "ssh-ed25519 AAAA", "alice", "-o", "users", "1001", [], [1],
    ["a"], ["192.0.2.99"], ["a", "a"], [None], ["x"] * 65, [{"name": "a", "uid": 1001}],
    [{"address": "192.0.2.99", "image": "/img/y.qcow2"}], {}, {"a": 1}, {"min": 0, "max": 2},
    {"address": "192.0.2.99"}, datetime.date(2001, 2, 3)]
#: Keys a mapping should not have (the fields of other models among them).
ODD_KEYS: list[Any] = ["zz", "Name", "addres", "gateway", "uid", "elastic", "template",
                       "migration", "addresses_file", 1, -5, 10 ** 30, None, True, 1.5,
                       datetime.date(2001, 2, 3)]


#: Fields of the models and values at or past their limits, tried where they belong.
EDGES: list[tuple[tuple[Any, ...], list[Any]]] = [
    (("node_access", "ssh_authorized_keys"), [[KEY] * 64, [KEY] * 65, ["x"] * 66, [KEY, 5]]),
    (("users",), [[{"name": f"u{i}", "uid": 1000 + i} for i in range(n)] for n in (256, 257)]
     + [[5] * 300, [{"name": "a", "uid": 1001, "zz": 1}] * 2]),
    (("users", 0, "groups"), [[f"g{i}" for i in range(n)] for n in (32, 33)] + [["A", 5]]),
    (("users", 0, "gid"), [999, 1000, 59999, 60000, None, True, 1000.0]),
    (("pool", 0, "fence"), [[], ["x"], [1, "x"], "x"]),
    (("pool", 0, "migration", "uri"), ["qemu+tls://h/system", "qemu+tls://h/system\n",
                                       "qemu+ssh://h/system?x=1", "qemu:///session"]),
    (("pool", 0, "name"), ["a" * 63, "a" * 64, "pm1\n", "a-", "-a"]),
    (("roles", "compute", "addresses"), [[], "", 5, None, ["192.0.2.240", "x", 5],
                                         "192.0.2.240", "192.0.2.240-192.0.2.239"]),
    (("roles", "compute", "names"), ["", "n{index}" + "a" * 56, "n{index}" + "a" * 55, 5]),
    (("roles", "compute", "elastic", "max"), [0, 1, 1024, 1025, 2.0]),
    (("roles", "compute", "elastic", "idle_after"), [9.99, 10, 604800, 604801, float("nan")]),
    (("roles", "compute", "template", "vcpus"), [0, 1, 512, 513, None]),
    (("timing", "monitor_interval"), [0.99, 1, 3600, 3600.01, float("nan"), float("inf")]),
    (("timing", "unreachable_reset_after"), [9.99, 10, float("nan"), 10 ** 400]),
    (("two_host", "wait_for_all"), [0, 0.0001, 86400, 86400.5, None]),
    (("network", "prefix_length"), [0, 1, 128, 129, 24.0]),
    (("resources", "memory_mib"), [63, 64, 1048576, 1048577]),
    (("roles",), [{}, {1: []}, []]),
    (("pool",), [[], [{}]]),
]


def edge(doc: dict[Any, Any], rng: random.Random) -> None:
    """One field of a model set to a value at or past its limits (where the text has room)."""
    where, values = rng.choice(EDGES)
    target = doc
    for key in where[:-1]:
        if isinstance(target, dict) and isinstance(key, str):
            target = target.setdefault(key, {})
        elif isinstance(target, list) and isinstance(key, int) and len(target) > key:
            target = target[key]
        else:
            return
    if isinstance(target, dict):
        target[where[-1]] = copy.deepcopy(rng.choice(values))


def paths(data: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in `data` that holds a value, the top excepted."""
    out = []
    items = (data.items() if isinstance(data, dict)
             else enumerate(data) if isinstance(data, list) else ())
    for key, value in items:
        out.append((*at, key))
        out += paths(value, (*at, key))
    return out


def at(data: Any, where: tuple[Any, ...]) -> Any:
    for key in where:
        data = data[key]
    return data


def mutate(doc: dict[Any, Any], rng: random.Random) -> None:
    places = paths(doc)
    where = rng.choice(places)
    parent = at(doc, where[:-1])
    kind = rng.randrange(6)
    if kind <= 1:  # a wrong or edge value anywhere
        parent[where[-1]] = copy.deepcopy(rng.choice(ANY))
    elif kind == 2:  # a key that names nothing, in some mapping
        mappings = [p for p in places if isinstance(at(doc, p), dict)] + [()]
        target = at(doc, rng.choice(mappings))
        target[rng.choice(ODD_KEYS)] = copy.deepcopy(rng.choice(ANY))
    elif kind == 3:  # a key or an item removed
        del parent[where[-1]]
    elif kind == 4:  # an item repeated (the same node, host, user twice)
        lists = [p for p in places if isinstance(at(doc, p), list) and at(doc, p)]
        if lists:
            items = at(doc, rng.choice(lists))
            items.append(copy.deepcopy(rng.choice(items)))
    else:  # a valid value of another field written here
        fields = {**EXTRAS, **POOL_EXTRAS, **NODE_EXTRAS, **ELASTIC}
        name = rng.choice(list(fields))
        target = parent if isinstance(parent, dict) else doc
        target[name if rng.random() < 0.5 else where[-1]] = copy.deepcopy(fields[name])


def enrich(doc: dict[str, Any], rng: random.Random) -> None:
    """Some of the fields the shipped manifests leave out, so that every model is read."""
    for name, value in EXTRAS.items():
        if rng.random() < (0.1 if name == "two_host" else 0.3):  # it needs fences
            doc[name] = copy.deepcopy(value)
    for host in doc["pool"]:
        for name, value in POOL_EXTRAS.items():
            if rng.random() < 0.3:
                host[name] = copy.deepcopy(value)
    for entries in doc["roles"].values():
        if isinstance(entries, list) and entries and rng.random() < 0.2:
            name = rng.choice(list(NODE_EXTRAS))
            rng.choice(entries)[name] = NODE_EXTRAS[name]
    if doc["type"] in ("slurm", "torque") and rng.random() < 0.4:
        doc["roles"]["compute"] = copy.deepcopy(ELASTIC)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of manifests/ (templates and list files included) to write the manifests into."""
    d = tmp_path_factory.mktemp("manifests")
    shutil.copytree(REPO / "manifests", d, dirs_exist_ok=True)
    return d


BASES = {p.name: yaml.safe_load(p.read_text()) for p in sorted((REPO / "manifests").glob("*.yaml"))}


def outcome(build: Any, doc: yamlsrc.Document, origin: Origin) -> tuple[str, Any]:
    try:
        cloud = build(doc, CATALOG, with_secrets=False, origin=origin)
    except ConfigError as exc:
        return "refused", [str(p) for p in exc.problems]
    except Exception as exc:  # neither may fail otherwise; if one does, both must alike
        return "failed", f"{type(exc).__name__}: {exc}"
    # repr tells 2 from 2.0 and shows NaN as itself; == compares what repr leaves out
    return "accepted", (repr(cloud), cloud.text, cloud.template_text, cloud)


def generated(rng: random.Random) -> dict[Any, Any]:
    doc = copy.deepcopy(BASES[rng.choice(sorted(BASES))])
    enrich(doc, rng)
    for _ in range(rng.choice([0, 0, 1, 1, 1, 2, 3])):
        mutate(doc, rng)
    if rng.random() < 0.3:
        edge(doc, rng)
    return doc


@pytest.mark.parametrize("seed", range(8))
def test_manifests_are_read_as_the_pydantic_models_read_them(seed: int, folder: Path) -> None:
    rng = random.Random(seed)
    seen = {"accepted": 0, "refused": 0, "failed": 0}
    for i in range(400):
        doc = generated(rng)
        if rng.random() < 0.3:  # a received text: nothing it names is read
            doc.pop("domain_template", None)
            doc["self_contained"] = True
            doc["domain_template_text"] = "<domain><name>${name}</name></domain>"
            if isinstance(doc.get("secrets"), dict):  # withheld from this receiver
                doc["secrets"] = {name: {} for name in doc["secrets"]}
            origin = Origin.WIRE
        else:
            origin = Origin.FILE
        text = yaml.safe_dump(doc, sort_keys=False, width=1000)
        try:
            parsed = yamlsrc.parse_text(text, folder / f"m{seed}-{i}.yaml")
        except ConfigError:
            continue  # refused before either reader runs (an integer too long for YAML)
        expected = outcome(old.build_cloud, parsed, origin)
        assert outcome(new.build_cloud, parsed, origin) == expected, text
        seen[expected[0]] += 1
    assert seen["accepted"] > 40 and seen["refused"] > 150, seen  # both sides exercised
    assert seen["failed"] == 0, seen


#: The web example, its template where the copy of manifests/ has it, its settings left out.
SHOP = SHOP_TEXT.replace("web.xml", "templates/web.xml").replace("settings: {app_port: 8080}\n",
                                                                  "")
HPC = """\
apiVersion: cloudd/v1
kind: Cloud
name: hpc
type: slurm
domain_template: templates/slurm.xml
pool:
  - {name: pm1, address: 192.0.2.70}
settings: {partition: main}
roles:
  head: [{address: 192.0.2.20, image: /img/head.qcow2}]
  compute:
"""


@pytest.mark.parametrize("text", [
    SHOP,
    SHOP.split("roles:")[0] + "roles: {1: 2, null: [], 1.5: x}\n",
    SHOP.replace("roles:", "roles: {}\nx:") + "template_values: {a: 1, 2: b, 3: 4, c: null}\n",
    SHOP.replace("pool:\n  - {name: pm1, address: 192.0.2.70}", "pool: []"),
    SHOP.replace("pool:\n  - {name: pm1, address: 192.0.2.70}",
                 "pool: [5, {name: A}, {name: pm3, address: 192.0.2.71, fence: []}]"),
    SHOP.replace("192.0.2.70}", "192.0.2.70, fence: [1, x], migration: {uri: 'xen:///', "
                                "storage: San, address: 1.2.3.4 , unsafe: 1, zz: 0}}"),
    SHOP + "node_access: {ssh_authorized_keys: [" + ", ".join(["x"] * 65) + "]}\n",
    SHOP + "users: [" + ", ".join(["5"] * 257) + "]\n",
    SHOP + "users: [{name: A, uid: 5, gid: true, groups: [" + ", ".join(["a"] * 33) + "]}]\n",
    SHOP + "users: [{name: a, uid: 1000, gid: null, groups: [A, 5, a, a]}, "
           "{name: a, uid: 1000}]\n",
    SHOP + "timing: {monitor_interval: .nan, unreachable_reset_after: .nan}\n",
    SHOP + "two_host: {fence_delay: 100000000000000000000000000000, wait_for_all: 0}\n",
    SHOP + "network: {prefix_length: 1.0, gateway: '1.2.3.4 '}\n",
    SHOP.replace("apiVersion: cloudd/v1\nkind: Cloud", "apiVersion: []\nkind: {}")
    + "ensure: x\nresources: null\nnetwork: null\n",
    SHOP + "settings: null\nsecrets: []\ntemplate_values: 5\ntiming: []\nnode_access: null\n",
    SHOP.replace("    - {address: 192.0.2.176, image: /img/web1.qcow2}",
                 "    - 5\n    - {}\n    - {address: x, name: A, run: 1, vcpus: true, "
                 "memory_mib: 1.0e+30, image: rel, base_image: 5}"),
    SHOP.replace("/img/web1.qcow2}", "/img/web1.qcow2, name: '" + "a" * 80 + "'}"),
    HPC + "    elastic: {min: 0, max: 1}\n    template: {}\n    addresses: 5\n",
    HPC + "    elastic: {min: 0, max: 1}\n    template: {}\n    addresses: []\n",
    HPC + "    elastic: {min: 0, max: 1}\n    template: {}\n    addresses: ''\n",
    HPC + "    elastic: {min: 0, max: 1}\n    template: {}\n    addresses: [x, 5, null]\n",
    HPC + "    elastic: {min: 0, max: 1}\n    template: {}\n    addresses: [192.0.2.9]\n"
          f"    names: {'x' * 64}\n",
    HPC + "    elastic: {min: 0, max: 1}\n    template: {}\n    addresses: [192.0.2.9]\n"
          "    names: ''\n",
    HPC + "    elastic: 5\n    template: 5\n    addresses: x\n",
    HPC + "    elastic: {}\n",
    HPC + "    elastic: {min: 2, max: 1, idle_after: 1, cooldown: -1, zz: 1}\n"
          "    template: {image: rel, run: sometimes, address: 192.0.2.9}\n"
          "    addresses: 192.0.2.30-192.0.2.31\n",
    HPC + "    elastic: {min: 1, max: 2}\n    template: {vcpus: 2, image: '/i/{name}'}\n"
          "    addresses: ['192.0.2.30', '::ffff:192.0.2.31']\n    names: 'n{index}'\n",
    HPC + "    elastic: {min: 1, max: 2}\n    template: {}\n    addresses: 192.0.2.30-192.0.2.31\n"
          "    names: 'n{index}-" + "a" * 60 + "'\n",
    HPC + "    addresses_file: 5\n    images_file: [x]\n    zz: 1\n",
])
def test_edges_read_alike(text: str, folder: Path) -> None:
    doc = yamlsrc.parse_text(text, folder / "edge.yaml")
    for origin in (Origin.FILE, Origin.WIRE):
        assert outcome(new.build_cloud, doc, origin) == outcome(old.build_cloud, doc, origin)


def test_shared_addresses_and_elastic_templates_read_alike(folder: Path) -> None:
    """What a node's entry gave (not only its values) decides which entry declares a node
    shared by several roles, and what an elastic role's template gives its candidates."""
    text = (REPO / "manifests" / "appscale.yaml").read_text()
    for edit in ["", "  zookeeper: [{address: 192.0.2.30, vcpus: 1}]\n",
                 "  zookeeper: [{address: 192.0.2.30, name: gae-head, managed: true}]\n"]:
        changed = text.replace("  zookeeper: [{address: 192.0.2.30}]\n", edit or
                               "  zookeeper: [{address: 192.0.2.30}]\n")
        doc = yamlsrc.parse_text(changed, folder / "appscale.yaml")
        got = outcome(new.build_cloud, doc, Origin.FILE)
        assert got == outcome(old.build_cloud, doc, Origin.FILE)
    assert got[0] == "refused" and "names it by address (and name) only" in got[1][0]


def test_the_manifest_s_models_load_no_pydantic() -> None:
    """Only a type's settings model (a provider's, still pydantic's) loads it now."""
    code = ("import sys\n"
            "import cloudd.config.manifest, cloudd.config.portable\n"
            "import cloudd.providers.appscale.layout\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('pydantic', 'pydantic_core')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
