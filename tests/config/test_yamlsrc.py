"""Reading YAML safely, with the position of every value."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cloudd.config import yamlsrc
from cloudd.errors import ConfigError


def problem(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        yamlsrc.load(path)
    assert len(info.value.problems) == 1
    return str(info.value.problems[0])


def test_values_keep_their_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("top:\n  list:\n    - {x: 1}\n    - y: two\n")
    doc = yamlsrc.load(path)
    assert doc.data == {"top": {"list": [{"x": 1}, {"y": "two"}]}}
    assert doc.value_marks[("top", "list", 1, "y")] == (4, 10)
    assert doc.key_marks[("top", "list", 1, "y")] == (4, 7)
    assert doc.raw == path.read_bytes()


def test_place_falls_back_to_the_nearest_written_ancestor(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("top:\n  x: 1\n")
    doc = yamlsrc.load(path)
    p = doc.place(("top", "missing"), message="is required")
    assert str(p) == f"{path}:2:3: top.missing: is required"


def test_render_loc() -> None:
    assert yamlsrc.render_loc(("roles", "server", 1, "address")) == "roles.server[1].address"


def test_billion_laughs_is_refused_without_expanding(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i-1}'] * 10)}]" for i in range(1, 12)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    start = time.process_time()
    assert problem(path) == (f"{path}:1:5: (document): YAML anchors and aliases "
                             "(&name, *name) are not allowed")
    # 10**11 nodes if expanded; refused from the event stream instead. Not a timing assert on
    # speed, only a guard that the expansion never happened (it would take hours).
    assert time.process_time() - start < 60


def test_merge_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("a:\n  <<: {b: 1}\n")
    assert problem(path) == f"{path}:2:3: (document): YAML merge keys (<<) are not allowed"


def test_several_documents_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text("a: 1\n---\nb: 2\n")
    assert "expected a single document" in problem(path)


def test_size_limit_is_checked_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("a: " + "x" * 2000 + "\n")
    assert problem_with_limit(path, 1000) == (
        f"{path}: (document): file is 2004 bytes; the limit is 1000 bytes")


def problem_with_limit(path: Path, limit: int) -> str:
    with pytest.raises(ConfigError) as info:
        yamlsrc.load(path, limit=limit)
    return str(info.value.problems[0])


def test_special_files_are_refused(tmp_path: Path) -> None:
    assert problem(Path("/dev/null")) == "/dev/null: (document): is not a regular file"


def test_comment_only_file_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("# nothing here\n")
    assert problem(path) == f"{path}: (document): file is empty"


def test_deep_nesting_is_refused_before_composing(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("a: " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert problem(path) == f"{path}:1:35: (document): nested more than 32 levels deep"


def test_a_received_text_over_the_manifest_limit_is_refused_before_parsing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_parsing(*args: object, **kw: object) -> None:
        raise AssertionError("the text was parsed")
    monkeypatch.setattr(yamlsrc.yaml, "parse", no_parsing)
    size = yamlsrc.MAX_MANIFEST_BYTES + 1
    with pytest.raises(ConfigError) as info:
        yamlsrc.parse(b"a: " + b"x" * (size - 3), Path("<received manifest>"))
    assert [str(p) for p in info.value.problems] == [
        f"<received manifest>: (document): the manifest is {size} bytes; a manifest received "
        "from outside this agent's folder may hold at most 262144 bytes (256 KiB)"]


def test_a_received_text_at_the_limit_is_parsed() -> None:
    text = b"a: " + b"x" * (yamlsrc.MAX_MANIFEST_BYTES - 4) + b"\n"
    assert len(text) == yamlsrc.MAX_MANIFEST_BYTES
    assert yamlsrc.parse(text, Path("<received manifest>")).data == {
        "a": "x" * (yamlsrc.MAX_MANIFEST_BYTES - 4)}


def test_a_received_billion_laughs_is_refused_without_expanding() -> None:
    lines = ['a0: &a0 ["lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i-1}'] * 10)}]" for i in range(1, 12)]
    with pytest.raises(ConfigError) as info:
        yamlsrc.parse("\n".join(lines).encode(), Path("<received manifest>"))
    assert [str(p) for p in info.value.problems] == [
        "<received manifest>:1:5: (document): YAML anchors and aliases (&name, *name) are not "
        "allowed"]
