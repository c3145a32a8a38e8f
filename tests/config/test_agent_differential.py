"""The agent's settings read without pydantic refuse and accept exactly what the pydantic
models did (kept in tests/shared/agent_pydantic.py): thousands of generated settings files,
valid and broken (wrong types, unknown keys, keys that are not text, numbers out of range,
NaN, errors nested in groups, groups that are not mappings, a missing name), each read by
both. Both must accept it with equal values, or refuse it with the same placed sentences
(file:line:column: field: sentence), in the same order.
"""

from __future__ import annotations

import dataclasses
import datetime
import random
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError
from shared import agent_pydantic as old

from cloudd.config import agent as new
from cloudd.config import yamlsrc
from cloudd.errors import ConfigError

GROUPS = {f.name: getattr(new, str(f.type)) for f in dataclasses.fields(new.AgentSettings)
          if dataclasses.is_dataclass(getattr(new, str(f.type), None))}
TOP = [f.name for f in dataclasses.fields(new.AgentSettings) if f.name not in GROUPS]

#: Values anything may be set to: every type, and the edges of every bound.
ANY: list[Any] = [
    0, 1, -1, 2, 7, 16, 17, 32, 33, 22, 65535, 65536, 1 << 63, 10 ** 30, -(10 ** 30),
    10 ** 400, 0.0, -0.0, 0.04, 0.2, 0.5, 1.0, 1.5, 2.0, 604800, 604799.5, 1e300,
    float("nan"), float("inf"), float("-inf"), True, False, None, "", "x", "1", "0.5", "pm1",
    "PM1", "pm1\n", "-a", "a" * 63, "a" * 64, "a" * 100, "0.0.0.0", "::FFFF:1.2.3.4",
    "localhost", "10.0.0.1", "1.2.3.4" + " " * 70, "/abs", "rel/p", "", "info", "nope",
    "local", "production", "freeze", "Agent", "cloudd/v1", [], ["/x"], ["/x", 5], [None],
    {}, {"a": 1}, {"port": 1}, datetime.date(2001, 2, 3)]
#: Keys a mapping should not have.
ODD_KEYS: list[Any] = ["membrship", "zz", "port ", "Name", 1, -5, 10 ** 30, None, True, 1.5,
                       datetime.date(2001, 2, 3)]
#: Values valid for a field (by name first, else by type), so that many files are accepted.
BY_NAME: dict[str, list[Any]] = {
    "name": ["pm1", "a", "a" * 63, "n-1", "0"],
    "address": ["0.0.0.0", "10.0.0.1", "::FFFF:1.2.3.4", "::", "127.0.0.1:9760"],
    "system_root": ["/", "/srv/n1", "//x/"],
    "retention": [604800, 864000.0, 1e9, float("inf")],
}
BY_TYPE: dict[Any, list[Any]] = {
    int: [1, 2, 3, 16, 22, 1000, 65535, 10 ** 30],
    float: [0.05, 0.1, 0.2, 0.5, 1, 2.0, 5, 30.0, 300, 1e6, float("inf")],
    bool: [True, False],
    str: ["x", "root", "127.0.0.1:9760", "qemu:///system"],
    str | None: ["qemu:///system", None, ""],
    Path: ["/x", "rel", "", "/a//b/"],
    list[Path]: [[], ["/x"], ["/a", "b"]],
}


def valid(name: str, hint: Any) -> Any:
    return random.choice(BY_NAME.get(name) or BY_TYPE.get(hint) or list(typing.get_args(hint)))


def group(cls: type, rng: random.Random) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: valid(f.name, hints[f.name]) for f in dataclasses.fields(cls)
            if rng.random() < 0.3}


def mutate(doc: dict[Any, Any], rng: random.Random) -> None:
    kind = rng.randrange(5)
    if kind == 0:  # a wrong or edge value in a group
        name = rng.choice(list(GROUPS))
        target = doc.setdefault(name, {}) if isinstance(doc.get(name), dict) else doc
        fld = rng.choice(dataclasses.fields(GROUPS[name])).name if target is not doc else name
        target[fld] = rng.choice(ANY)
    elif kind == 1:  # a wrong or edge value at the top
        doc[rng.choice(TOP)] = rng.choice(ANY)
    elif kind == 2:  # a key that names nothing, at the top or in a group
        name = rng.choice(list(GROUPS))
        target = doc if rng.random() < 0.5 or not isinstance(doc.get(name), dict) else doc[name]
        target[rng.choice(ODD_KEYS)] = rng.choice(ANY)
    elif kind == 3:  # a group that is not a mapping
        doc[rng.choice(list(GROUPS))] = rng.choice(ANY)
    else:
        doc.pop("name", None)


def document(rng: random.Random) -> dict[Any, Any]:
    random.seed(rng.random())  # `valid` draws from the module's generator, seeded from ours
    doc: dict[Any, Any] = {"name": valid("name", str)}
    for name in TOP:
        if name != "name" and rng.random() < 0.15:
            doc[name] = valid(name, typing.get_type_hints(new.AgentSettings)[name])
    for name, cls in GROUPS.items():
        if rng.random() < 0.4:
            doc[name] = group(cls, rng)
    for _ in range(rng.choice([0, 0, 0, 1, 1, 2, 3])):
        mutate(doc, rng)
    return doc


def outcome(build: Any, doc: yamlsrc.Document) -> tuple[str, Any]:
    try:
        settings = build(doc)
    except ConfigError as exc:
        return "refused", [str(p) for p in exc.problems]
    # repr tells 2 from 2.0 and shows NaN as itself; field order is the declared order in both
    values = (settings.model_dump() if isinstance(settings, BaseModel)
              else dataclasses.asdict(settings))
    return "accepted", repr(values)


@pytest.mark.parametrize("seed", range(8))
def test_files_are_read_as_the_pydantic_models_read_them(seed: int) -> None:
    rng = random.Random(seed)
    seen = {"accepted": 0, "refused": 0}
    for _ in range(600):
        text = yaml.safe_dump(document(rng), sort_keys=False, width=1000)
        try:
            doc = yamlsrc.parse_text(text, Path("agent.yaml"))
        except ConfigError:
            continue  # refused before either reader runs (an integer too long for YAML)
        expected = outcome(old.build_agent, doc)
        assert outcome(new.build_agent, doc) == expected, text
        seen[expected[0]] += 1
    assert seen["accepted"] > 100 and seen["refused"] > 200, seen  # both sides exercised


@pytest.mark.parametrize("seed", range(4))
def test_groups_built_in_python_refuse_what_the_models_refused(seed: int) -> None:
    """Settings built by code (a test, a node's boot) are checked too: the same values are
    refused (ValueError instead of pydantic's ValidationError) and the same ones kept."""
    rng = random.Random(seed)
    random.seed(seed)
    for _ in range(400):
        name = rng.choice(list(GROUPS))
        kwargs = group(GROUPS[name], rng)
        if kwargs and rng.random() < 0.5:
            kwargs[rng.choice(list(kwargs))] = rng.choice(ANY)
        try:
            want: Any = getattr(old, GROUPS[name].__name__)(**kwargs).model_dump()
        except ValidationError:
            want = ValueError
        try:
            got: Any = dataclasses.asdict(GROUPS[name](**kwargs))
        except ValueError:
            got = ValueError
        assert repr(got) == repr(want), (name, kwargs)


def test_the_old_models_are_a_faithful_copy() -> None:
    """The oracle has every group and field the settings have, with the same defaults."""
    assert repr(old.AgentSettings(name="pm1").model_dump()) == repr(
        dataclasses.asdict(new.AgentSettings(name="pm1")))


@pytest.mark.parametrize("text", [
    "name: pm1\nimages: {ssh_user: ''}\n",
    "name: \"pm1\\n\"\n",  # Python's `$` would match before the newline; pydantic's does not
    f"name: {'a' * 70}\n",
    f"name: pm1\nlisten: {{address: {'a' * 100}}}\n",  # the sentence quotes it cut
    f"name: pm1\nnode: {{system_root: {'a' * 100}}}\n",
    "name: pm1\nnode: {system_root: srv//n1}\n",
    "name: pm1\nevents: {retention: .nan}\n",  # NaN passes a check written as `<`
    "name: pm1\nmembership: {suspicion_mult: .nan, probe_interval: .nan}\n",
    "name: pm1\ntransport: {max_buffer: 100000000000000000000000000000}\n",
    "name: pm1\nlisten: {port: 1.0e+0}\n",
    "name: pm1\n1: x\nnull: y\n2001-02-03: z\nzz: 1\nlisten: {q: 1, port: 0}\n",
    "listen: 5\nname: 5\nprofile: local\nreconcile: [1]\n",
    "name: pm1\nprofile: local\nreconcile: {backoff_base: 9}\n",
    "name: pm1\nlibvirt: {image_dirs: [/a, 5, null, [x]], uri: 5}\n",
    "name: pm1\nlog: {level: INFO}\nelection: {no_quorum: 1}\napiVersion: cloudd/v2\n",
    "name: pm1\nmetrics: {enabled: 1, address: 1}\n",
])
def test_edges_read_alike(text: str) -> None:
    doc = yamlsrc.parse_text(text, Path("agent.yaml"))
    assert outcome(new.build_agent, doc) == outcome(old.build_agent, doc)
