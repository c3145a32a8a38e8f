"""The four cloud types' settings read without pydantic accept and refuse exactly what the
pydantic models did (kept in tests/shared/settings_pydantic.py): thousands of generated
`settings:` mappings per type, valid and broken (wrong types, values out of range, text
that misses its pattern or is too long, lists too long or too short or with bad items, keys
that name nothing or are not text, a required field missing), each read both ways:

- as the manifest reads them (placed sentences, in the same order, or equal values);
- as a node's provider reads them again (`values.settings`: pydantic's own words for the
  first refusal);
- built in Python (ValueError where pydantic raised its ValidationError);
- and, once accepted, written as the same JSON bytes as `model_dump_json`, which the
  leader's hooks digest: other bytes would make every hook run again after an upgrade.
"""

from __future__ import annotations

import dataclasses
import datetime
import random
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
from shared import settings_pydantic as old
from shared.pydantic_problems import validate_model

from cloudd.config.catalog import settings_json
from cloudd.config.yamlsrc import parse_text
from cloudd.errors import ConfigError, PermanentError
from cloudd.providers import values
from cloudd.providers.catalog import CATALOG

#: type -> (the settings' plain dataclass, the old pydantic model)
TYPES: dict[str, tuple[type, type[BaseModel]]] = {
    "web": (CATALOG["web"].settings_model, old.WebSettings),
    "torque": (CATALOG["torque"].settings_model, old.TorqueSettings),
    "slurm": (CATALOG["slurm"].settings_model, old.SlurmSettings),
    "appscale": (CATALOG["appscale"].settings_model, old.AppScaleSettings),
}
#: Texts that JSON must write as pydantic did: quotes, escapes, control characters, DEL,
#: non-ASCII, the line separators JavaScript minds, a character beyond the BMP.
ODD_TEXT = ["", "x y", '"q"', "back\\slash", "tab\there", "nl\n", "\x00\x01\x1f\x7f",
            "ü", "\u2028\u2029", "😀", "\x85", "</script>", "a" * 100]
#: Valid values per field, so that many mappings are accepted.
VALID: dict[str, list[Any]] = {
    "app_port": [1, 80, 8080, 65535], "balancer_port": [1, 443, 65535],
    "database_name": ["app", "_x", "A" + "b" * 63, "a1_b"],
    "database_user": ["app", "u" * 32], "database_password_ref": [None, "db", *ODD_TEXT],
    "queue": ["batch", "q" * 15, "A_1"], "np": [None, 1, 8, 4096],
    "scheduler": [True, False],
    "shared_paths": [[], ["/home"], ["/a", "/b/c@d=e+f"], ["/" + "a" * 199], ["/x"] * 16],
    "cluster_name": [None, "c", "a" * 40, "a_1"], "partition": ["main", "P_1", "p" * 40],
    "max_time": ["INFINITE", "UNLIMITED", "60", "1-00:00"], "munge_key_ref": [None, "mk"],
    "slurmd_timeout": [10, 300, 86400], "max_nodes": [1, 1024, 65000],
    "admin_email": ["a@b.co", "ops@example.org", "x@[10.0.0.1]", "a.b@c-d.e.fgh"],
    "admin_password_ref": ["admin", *ODD_TEXT], "keyname": ["appscale", "a", "A-b_c"],
    "tools": ["/usr/local/bin/appscale", "/", "/x y"],
    "sshd_reload": [["x"], ["systemctl", "reload", "ssh"], ODD_TEXT],
    "replication": [None, 1, 3, 1 << 62, 10 ** 30],
}
#: Values any field may be set to: every type, and the edges of every limit.
ANY: list[Any] = [
    0, -1, 1, 9, 10, 15, 16, 17, 4096, 4097, 65000, 65001, 86400, 86401, 65535, 65536,
    1 << 63, 10 ** 30, -(10 ** 30), 0.0, 1.0, 0.5, float("nan"), float("inf"), True, False,
    None, "", "x", "80", "a b", "batch\nset server", "batch\n", "/x", "/x\n", "/x y", "rel",
    "INFINITE\n", "soon", "a" * 64, "a" * 65, "a" * 201, "/" + "a" * 199, "/" + "a" * 200,
    "/" + "a" * 300, "ü", "a@b", "a b@c.de", "a\x1cb@c.de", "a@b.c", "@b.co", "x@[1.2.3.4]",
    [], ["/x"], ["x"], [5], [None], ["/x", 5, "y"], ["/x"] * 16, ["/x"] * 17, ["x"] * 17,
    ["/" + "a" * 300, "b" * 300], [[]], {}, {"a": 1}, datetime.date(2001, 2, 3)]
#: Keys a mapping should not have.
ODD_KEYS: list[Any] = ["colour", "nodes", "Queue", "np ", 1, -5, 10 ** 30, None, True, 1.5,
                       datetime.date(2001, 2, 3)]


def fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def mapping(cls: type, rng: random.Random) -> dict[Any, Any]:
    """A `settings:` mapping of `cls`: some fields set to valid values, then 0-3 mutations."""
    data: dict[Any, Any] = {name: rng.choice(VALID[name]) for name in fields(cls)
                            if rng.random() < 0.4 or name == "admin_password_ref"}
    for _ in range(rng.choice([0, 0, 0, 1, 1, 2, 3])):
        kind = rng.randrange(6)
        if kind <= 2:  # a wrong or edge value
            data[rng.choice(fields(cls))] = rng.choice(ANY)
        elif kind == 3:  # a key that names nothing
            data[rng.choice(ODD_KEYS)] = rng.choice(ANY)
        elif kind == 4:  # a list with a bad item among good ones
            name = rng.choice(fields(cls))
            good = [v for v in VALID[name] if isinstance(v, list) and v]
            if good:
                items = list(rng.choice(good))
                items.insert(rng.randrange(len(items) + 1), rng.choice(ANY))
                data[name] = items
        else:
            data.pop(rng.choice(fields(cls)), None)
    return data


def read_old(model: type[BaseModel], data: Any, text: str) -> tuple[str, Any]:
    doc = parse_text(text, Path("c1.yaml"))
    got, problems = validate_model(doc, model, doc.data, ())
    if got is None:
        return "refused", [str(p) for p in problems]
    return "accepted", repr(got.model_dump())


def read_new(kind: str, data: Any, text: str) -> tuple[str, Any]:
    doc = parse_text(text, Path("c1.yaml"))
    got, problems = CATALOG[kind].read_settings(doc, doc.data, ())
    if got is None:
        return "refused", [str(p) for p in problems]
    return "accepted", repr(dataclasses.asdict(got))


def node_old(model: type[BaseModel], kind: str, data: dict[Any, Any]) -> str:
    """What a node's provider said of `data` when the settings were pydantic models."""
    try:
        return repr(model.model_validate(dict(data)).model_dump())
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "settings"
        return f"{kind} settings: {where}: {err['msg']}"


def node_new(cls: Any, kind: str, data: dict[Any, Any]) -> str:
    try:
        return repr(dataclasses.asdict(values.settings(cls, data, kind=kind)))
    except PermanentError as exc:
        return str(exc)


@pytest.mark.parametrize("kind", sorted(TYPES))
@pytest.mark.parametrize("seed", range(3))
def test_settings_are_read_as_the_pydantic_models_read_them(kind: str, seed: int) -> None:
    cls, model = TYPES[kind]
    rng = random.Random(f"{kind}{seed}")
    seen = {"accepted": 0, "refused": 0}
    for _ in range(500):
        data = mapping(cls, rng)
        text = yaml.safe_dump(data, sort_keys=False, width=1000, allow_unicode=True)
        try:
            parsed = parse_text(text, Path("c1.yaml")).data
        except ConfigError:
            continue  # refused before either reader runs (an integer too long for YAML)
        expected = read_old(model, data, text)
        assert read_new(kind, data, text) == expected, text
        assert node_new(cls, kind, parsed) == node_old(model, kind, parsed), text
        seen[expected[0]] += 1
        if expected[0] == "accepted":
            new, was = values.settings(cls, parsed, kind=kind), model.model_validate(parsed)
            assert settings_json(new) == was.model_dump_json().encode(), text
    assert seen["accepted"] > 100 and seen["refused"] > 100, seen  # both sides exercised


@pytest.mark.parametrize("kind", sorted(TYPES))
def test_settings_built_in_python_refuse_what_the_models_refused(kind: str) -> None:
    """Settings built by code (a test, a provider) are checked too: ValueError where
    pydantic raised its ValidationError, and the same values kept."""
    cls, model = TYPES[kind]
    rng = random.Random(kind)
    for _ in range(400):
        kwargs = {k: v for k, v in mapping(cls, rng).items()
                  if isinstance(k, str) and k in fields(cls)}
        try:
            want: Any = model(**kwargs).model_dump()
        except ValidationError:
            want = ValueError
        try:
            got: Any = dataclasses.asdict(cls(**kwargs))
        except (ValueError, TypeError):  # TypeError: the required field missing
            got = ValueError
        assert repr(got) == repr(want), kwargs


@pytest.mark.parametrize("kind", sorted(TYPES))
def test_the_old_models_are_a_faithful_copy(kind: str) -> None:
    """The oracle has every field the settings have, in their order, with their defaults."""
    cls, model = TYPES[kind]
    required = {"admin_password_ref": "admin"} if kind == "appscale" else {}
    assert list(model.model_fields) == fields(cls)
    assert repr(model(**required).model_dump()) == repr(dataclasses.asdict(cls(**required)))
    assert typing.get_type_hints(cls) == typing.get_type_hints(model)


@given(st.sampled_from(sorted(TYPES)), st.data())
def test_the_json_the_hooks_digest_is_pydantic_s(kind: str, data: st.DataObject) -> None:
    """Any accepted settings, free text included, are written as pydantic wrote them."""
    cls, model = TYPES[kind]
    text = st.text(max_size=30)
    draw: dict[str, Any] = {
        "database_password_ref": st.none() | text, "munge_key_ref": st.none() | text,
        "admin_password_ref": text, "sshd_reload": st.lists(text, min_size=1, max_size=4),
        "replication": st.none() | st.integers(min_value=1, max_value=10 ** 40),
        "np": st.none() | st.integers(min_value=1, max_value=4096),
        "scheduler": st.booleans(),
        "app_port": st.integers(min_value=1, max_value=65535)}
    given_values = {name: data.draw(draw[name]) for name in fields(cls) if name in draw}
    assert settings_json(cls(**given_values)) == model(**given_values).model_dump_json().encode()


@pytest.mark.parametrize(("kind", "settings"), [
    ("torque", {"shared_paths": ["x"] * 17}),  # too many: the items are not read
    ("torque", {"shared_paths": ["/" + "a" * 300, "b" * 300, 5]}),  # length before pattern
    ("appscale", {"admin_password_ref": "a", "sshd_reload": []}),
    ("appscale", {"admin_password_ref": "a", "sshd_reload": [1, "x", None]}),
    ("appscale", {"sshd_reload": "reload"}),
    ("appscale", {"admin_password_ref": "a", "admin_email": "a\x1cb@c.de"}),
    ("slurm", {"cluster_name": "Main", "max_time": "1:00\n", 7: 1}),
    ("web", {"app_port": True, "database_password_ref": 5, "colour": "red"}),
])
def test_edges_read_alike(kind: str, settings: dict[Any, Any]) -> None:
    cls, model = TYPES[kind]
    text = yaml.safe_dump(settings, sort_keys=False, width=1000, allow_unicode=True)
    assert read_new(kind, settings, text) == read_old(model, settings, text)
    assert node_new(cls, kind, settings) == node_old(model, kind, settings)


def test_the_providers_load_no_pydantic() -> None:
    """Every provider, its settings and the readers a node renders them with import with
    pydantic made unimportable (issue 18: a node agent's budget)."""
    script = ("import sys; sys.modules['pydantic'] = sys.modules['pydantic_core'] = None\n"
              "import cloudd.providers.catalog, cloudd.providers.web.common, "
              "cloudd.providers.torque.layout, cloudd.providers.slurm.conf, "
              "cloudd.providers.appscale.provider, cloudd.daemon.network.checks")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
