"""Fuzzing the manifest loader: whatever an operator's file or a received text holds, loading
it gives a valid `Cloud` or a `ConfigError` whose problems each name the place (the file, and
the line or the field) in one line; never another exception, never a hang, and an alias bomb
is refused before it expands.

Inputs start from the shipped manifests (manifests/*.yaml, read as files from a copy of that
folder, and their self-contained form as a member receives it) and are mutated: keys deleted
or added, values replaced by random scalars, lists, mappings, deep nesting and huge strings,
lines deleted or duplicated (duplicate keys), and raw YAML written in: tags such as
!!python/object, anchors and aliases, bad dates and numbers, tabs, control characters and
invalid UTF-8.
"""

from __future__ import annotations

import re
import shutil
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from cloudd.config import yamlsrc
from cloudd.config.manifest import load_cloud, load_cloud_text
from cloudd.config.model import Cloud
from cloudd.config.portable import portable_text
from cloudd.errors import ConfigError, Problem
from cloudd.providers.catalog import CATALOG
from tests.fuzz.mutate import change, places
from tests.fuzz.profile import fuzz, timeout

pytestmark = timeout

REPO = Path(__file__).resolve().parents[2]
SOURCES = sorted(p.name for p in (REPO / "manifests").glob("*.yaml"))


def wire_text(name: str) -> str:
    """The self-contained text a pool host receives for the shipped manifest `name` (with a
    short template, so that each example stays cheap)."""
    cloud = load_cloud(REPO / "manifests" / name, CATALOG, with_secrets=False)
    data = yaml.safe_load(portable_text(cloud, cloud.text))
    data["domain_template_text"] = "<domain type='qemu'><name>${name}</name></domain>\n"
    return yaml.safe_dump(data, sort_keys=False)


WIRE = {name: wire_text(name) for name in SOURCES}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of manifests/ (templates and list files included) to write mutants into."""
    d = tmp_path_factory.mktemp("manifests")
    shutil.copytree(REPO / "manifests", d, dirs_exist_ok=True)
    return d


def check_problem(p: Problem, file: str) -> None:
    """One problem: the file named, a field or a line when there is one, one line of text."""
    assert p.file == file, p
    assert p.message and "\n" not in p.message and len(p.message) <= 1000, repr(p.message)
    assert "\n" not in p.field and len(p.field) <= 1000, repr(p.field)
    assert str(p).startswith(file)


def judge(load: Callable[[], Cloud], file: str) -> Cloud | list[Problem]:
    """A Cloud, or the problems of the ConfigError; any other exception fails the test."""
    try:
        cloud = load()
    except ConfigError as exc:
        assert exc.problems
        for p in exc.problems:
            check_problem(p, file)
        return exc.problems
    assert isinstance(cloud, Cloud) and cloud.pool and cloud.nodes
    return cloud


# -- mutations ----------------------------------------------------------------------------

#: YAML written as is in place of a value: tags, anchors, aliases, bad dates and numbers...
RAW = [
    "!!python/object:os.system {a: 1}", "!!python/object/apply:os.system ['id']",
    "!!python/name:os.system", "&a [1, 2]", "*a", "!!int abc", "!!bool maybe", "!!float abc",
    "!!timestamp 2001-02-30", "!!timestamp nope", "2001-13-45", "!!binary '@@'",
    "!!binary aGk=", "!!set {a, b}", "!!omap [a: 1]", "!!pairs [a: 1]", "!custom x",
    "!<tag:example.com,2000:x> 1", "!!str {a: 1}", "!!map x", "!!seq x", "!!null x",
    "{a: 1, a: 2}", "[" * 40 + "]" * 40, "1" + "0" * 5000, ".nan", ".inf", "-.inf", "0x1F",
    "0o17", "1_000", "'unterminated", '"\\ud800"', '"\\x07"', "<<: {a: 1}", "? [a]", "~",
    "yes", "on", "1e999", "12:30:00", "2001-12-14t21:59:43.10-05:00", "\t1", "|\n  block",
    "- - - deep", '"' + "é" * 2000 + '"',
]
#: Bytes written in anywhere: tabs, controls, invalid UTF-8, a BOM, YAML indicators.
NOISE = [b"\t", b"\x00", b"\x07", b"\x1b", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xef\xbb\xbf",
         b"\r", b"\n", b": ", b"- ", b"&x ", b"*x", b"!!", b"%YAML 1.1\n", b"---\n", b"...\n",
         b"\xe2\x80\xa8", b"{", b"]", b"'", b'"', b"#"]

scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
           | st.sampled_from(["", " ", "x" * 100_000, "2001-13-45", "0.0.0.0", "::",
                              "/etc/shadow", "../../etc/passwd", "a" * 64, "-a-", "UPPER"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=10) | st.integers() | st.none() | st.booleans(), inner, max_size=4),
    max_leaves=10)


def deep(levels: int, *, kind: str) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = [value] if kind == "list" else {"k": value}
    return value


any_value = values | st.builds(deep, st.integers(1, 60), kind=st.sampled_from(["list", "map"]))


@st.composite
def data_mutant(draw: st.DrawFn, text: str) -> str:
    """The text's data with a few places changed, written back as YAML."""
    data = yaml.safe_load(text)
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(places(data)[1:]))
        data = change(data, where, draw(st.sampled_from(["replace", "replace", "delete",
                                                         "add"])), draw(any_value))
        if not isinstance(data, dict | list) or not places(data)[1:]:
            break
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


_VALUE = re.compile(rb"^(\s*(?:- )?[\w.-]+:)[ ]+(\S.*)$")


@st.composite
def text_mutant(draw: st.DrawFn, text: str) -> bytes:
    """The text with lines deleted, duplicated or swapped, raw YAML put in place of values,
    and noise bytes inserted anywhere."""
    lines = text.encode().split(b"\n")
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        how = draw(st.sampled_from(["raw", "raw", "delete", "duplicate", "swap", "noise"]))
        if how == "raw":
            m = _VALUE.match(lines[i])
            raw = draw(st.sampled_from(RAW)).encode("utf-8", "surrogatepass")
            lines[i] = m.group(1) + b" " + raw if m else raw
        elif how == "delete" and len(lines) > 1:
            del lines[i]
        elif how == "duplicate":
            lines.insert(i, lines[i])
        elif how == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        else:
            at = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:at] + draw(st.sampled_from(NOISE)) + lines[i][at:]
    return b"\n".join(lines)


def mutant(text: str) -> st.SearchStrategy[bytes]:
    return data_mutant(text).map(lambda t: t.encode()) | text_mutant(text)


def as_received(raw: bytes) -> str:
    """Bytes as the text a member receives: invalid UTF-8 kept as surrogate escapes."""
    return raw.decode("utf-8", errors="surrogateescape")


# -- the properties -------------------------------------------------------------------------


@pytest.mark.parametrize("name", SOURCES)
def test_the_sources_load_in_both_forms(folder: Path, name: str) -> None:
    assert isinstance(judge(lambda: load_cloud(folder / name, CATALOG, with_secrets=False),
                            str(folder / name)), Cloud)
    assert isinstance(judge(lambda: load_cloud_text(WIRE[name], CATALOG), "<received manifest>"),
                      Cloud)


@fuzz(300)
@given(data=st.data(), name=st.sampled_from(SOURCES))
def test_mutated_manifest_files(folder: Path, data: st.DataObject, name: str) -> None:
    raw = data.draw(mutant((REPO / "manifests" / name).read_text()), label="text")
    path = folder / f"mutant-{name}"
    path.write_bytes(raw)
    judge(lambda: load_cloud(path, CATALOG, with_secrets=False), str(path))


@fuzz(300)
@given(data=st.data(), name=st.sampled_from(SOURCES))
def test_mutated_received_manifests(data: st.DataObject, name: str) -> None:
    raw = data.draw(mutant(WIRE[name]), label="text")
    judge(lambda: load_cloud_text(as_received(raw), CATALOG), "<received manifest>")


@fuzz(100)
@given(raw=st.binary(max_size=2048))
def test_random_bytes(raw: bytes) -> None:
    judge(lambda: load_cloud_text(as_received(raw), CATALOG), "<received manifest>")


# -- what the fuzzing found, and the bombs, kept as they were -------------------------------

BILLION_LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{c}: &{c} [{','.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi",
                                                                  strict=True)]) + "\n"


@pytest.mark.parametrize("where", ["file", "received"])
def test_a_billion_laughs_is_refused_in_bounded_time_and_memory(folder: Path,
                                                                where: str) -> None:
    """9^9 strings once expanded; refused at its first anchor, before composing anything."""
    path = folder / "laughs.yaml"
    path.write_text(BILLION_LAUGHS)
    tracemalloc.start()
    started = time.monotonic()
    try:
        if where == "file":
            problems = judge(lambda: load_cloud(path, CATALOG), str(path))
        else:
            problems = judge(lambda: load_cloud_text(BILLION_LAUGHS, CATALOG),
                             "<received manifest>")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    elapsed = time.monotonic() - started
    assert isinstance(problems, list)
    assert [(p.line, p.column, p.message) for p in problems] == [
        (1, 4, "YAML anchors and aliases (&name, *name) are not allowed")]
    # Expanded, it would take gigabytes and minutes; the bounds are a hundred times loose.
    assert peak < 20 * 1024 * 1024 and elapsed < 30, (peak, elapsed)


REFUSED = [
    ("name: 2001-13-45\n", 1, 7, "not valid YAML: '2001-13-45' is not a valid timestamp"),
    ("name: !!timestamp 2001-02-30\n", 1, 7,
     "not valid YAML: '2001-02-30' is not a valid timestamp"),
    ("name: !!timestamp nope\n", 1, 7, "not valid YAML: 'nope' is not a valid timestamp"),
    ("name: !!int abc\n", 1, 7, "not valid YAML: 'abc' is not a valid int"),
    ("name: !!float abc\n", 1, 7, "not valid YAML: 'abc' is not a valid float"),
    ("name: !!bool maybe\n", 1, 7, "not valid YAML: 'maybe' is not a valid bool"),
    ("name: 1" + "0" * 5000 + "\n", 1, 7,
     "not valid YAML: '1000000000000000000000000000000000000000...' is not a valid int"),
    ("name: !!python/object:os.system {a: 1}\n", 1, 7,
     "YAML tag '!!python/object:os.system' is not allowed: a manifest holds mappings, lists, "
     "text, numbers, booleans and null"),
    ("name: !!set {a, b}\n", 1, 7, "YAML tag '!!set' is not allowed: a manifest holds "
     "mappings, lists, text, numbers, booleans and null"),
    ("name: !!binary aGk=\n", 1, 7, "YAML tag '!!binary' is not allowed: a manifest holds "
     "mappings, lists, text, numbers, booleans and null"),
    ("name: !custom [1]\n", 1, 7, "YAML tag '!custom' is not allowed: a manifest holds "
     "mappings, lists, text, numbers, booleans and null"),
    ('name: "a\\ud800"\n', 1, 7,
     "not valid YAML: 'a\\ud800' holds a lone surrogate ('\\ud800')"),
    ("name: a\x07b\n", 1, 8, "not valid YAML: unacceptable character #x0007: special "
     "characters are not allowed"),
    ("kind: Cloud\nname: a\x00b\n", 2, 8, "not valid YAML: unacceptable character #x0000: "
     "special characters are not allowed"),
]


@pytest.mark.parametrize(("text", "line", "column", "message"), REFUSED)
def test_inputs_that_once_crashed_or_slipped_through_are_refused(text: str, line: int, column: int,
                                               message: str) -> None:
    """Bad dates, numbers and booleans raised ValueError, KeyError or AttributeError from
    PyYAML's constructors; tags on mappings were ignored (a !!python/object came back as a
    plain mapping); a lone surrogate written as an escape raised UnicodeEncodeError once used
    as a file name; control characters gave a message of two lines."""
    problems = judge(lambda: load_cloud_text(text, CATALOG), "<received manifest>")
    assert isinstance(problems, list)
    assert [(p.line, p.column, p.message) for p in problems] == [(line, column, message)]


def test_a_received_text_with_a_lone_surrogate_is_refused() -> None:
    """The local API's JSON may carry one; encoding it for the parser raised
    UnicodeEncodeError."""
    problems = judge(lambda: load_cloud_text("name: \ud800\n", CATALOG), "<received manifest>")
    assert isinstance(problems, list)
    assert [p.message for p in problems] == [
        "not a UTF-8 text (character 6 is a lone surrogate)"]


def test_the_standard_scalars_still_load() -> None:
    doc = yamlsrc.parse(b"a: !!str 1\nb: 2001-12-14\nc: .inf\nd: ~\ne: 0x1F\nf: !!int '7'\n",
                        Path("<t>"))
    assert doc.data == {"a": "1", "b": doc.data["b"], "c": float("inf"), "d": None, "e": 31,
                        "f": 7}
    assert str(doc.data["b"]) == "2001-12-14"


def test_a_long_value_is_quoted_cut() -> None:
    """A validator's sentence quoted the value whole: a name of 2,000 characters made a
    message of 2,110."""
    text = WIRE["web.yaml"].replace("name: shop", 'name: "' + "é" * 2000 + '"', 1)
    problems = judge(lambda: load_cloud_text(text, CATALOG), "<received manifest>")
    assert isinstance(problems, list)
    assert [(p.field, p.message) for p in problems] == [("name", (
        "'" + "é" * 56 + "... is not a DNS label (lowercase letters, digits and '-', 1 to 63 "
        "characters, not starting or ending with '-')"))]


def test_a_value_of_any_length_in_any_check_is_cut_and_a_key_is_one_line() -> None:
    """The cloud-wide checks quote values too: a source_host of 100,000 characters made a
    message of 100,051; a key holding a newline made a field of two lines."""
    text = WIRE["web.yaml"].replace("source_host: pm1", 'source_host: "' + "x" * 100_000 + '"')
    problems = judge(lambda: load_cloud_text(text, CATALOG), "<received manifest>")
    assert isinstance(problems, list)
    assert [(p.field, p.message) for p in problems] == [("roles.server[1].source_host", (
        "names '" + "x" * 195 + "...', which is not a pool host (pool: pm1, pm2)"))]
    text = WIRE["web.yaml"].replace("resources:\n", 'resources:\n  "a\\nb": 1\n')
    problems = judge(lambda: load_cloud_text(text, CATALOG), "<received manifest>")
    assert isinstance(problems, list)
    assert [(p.field, p.message) for p in problems] == [("resources.a\\nb", "unknown field")]
