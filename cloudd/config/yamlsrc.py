"""Reading an operator's YAML file safely, and remembering where every value was written.

Every later check (the models, cross-field rules) reports a path such as
`roles.server[1].address`; `Document.place` turns that path back into the file's line and
column, so that each refusal reads `file:line:column: field: what is wrong`.

The file is refused, before anything is built from it, when it is not a regular file, is
larger than `MAX_BYTES` (checked with stat, before reading), is not UTF-8, holds no document
or several, uses anchors/aliases (the "billion laughs" expansion bomb, and nothing a manifest
needs), repeats a mapping key (YAML would silently keep the last one), carries a tag beyond
YAML's plain types (`!!python/object`, `!!set`, `!!binary`, `!custom`...: a manifest holds
mappings, lists, text, numbers, booleans and null, and a tag on a mapping would otherwise be
dropped without a word), or a value its own type refuses (a date such as 2001-13-45, an
integer of thousands of digits, `!!bool maybe`). A text that did not come from a file here
(`parse`: a manifest received over the network or through the local API) gets the same
checks, with its own, smaller bound: `MAX_MANIFEST_BYTES`.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cloudd.errors import ConfigError, Problem

#: The largest file accepted, in bytes: manifests are a few KiB; 1 MiB leaves room for a
#: thousand nodes and refuses a stray log or disk image before reading it.
MAX_BYTES = 1024 * 1024
#: The largest manifest text accepted from outside this agent's own folder (an operator's
#: apply, through the local API or the wire, and a member's offer), in bytes: 256 KiB. A
#: cloud of a few thousand nodes fits (one line each), so no real manifest comes near it;
#: what it bounds is one request's cost: the pure-Python YAML reader takes about a second of
#: CPU for a text this large. And JSON's escaping, applied twice on the wire (the text in an
#: operator request's arguments, inside the frame), makes at most 4 bytes of one: 256 KiB
#: is what a 1 MiB frame can carry whatever the text holds.
MAX_MANIFEST_BYTES = 256 * 1024
#: The deepest nesting of mappings and sequences accepted: a manifest needs 5; composing
#: thousands of levels would exhaust Python's recursion limit.
MAX_DEPTH = 32

Loc = tuple[str | int, ...]

_CORE = "tag:yaml.org,2002:"
#: The tags a scalar may carry, written or resolved: YAML's plain types.
_SCALAR_TAGS = frozenset(f"{_CORE}{t}" for t in ("str", "int", "float", "bool", "null",
                                                   "timestamp"))
_COLLECTION_TAGS: dict[type[yaml.Node], str] = {yaml.MappingNode: f"{_CORE}map",
                                                 yaml.SequenceNode: f"{_CORE}seq"}
#: Longest value or tag quoted back in a problem, in characters.
_SHOW = 40
#: A placed problem's message longer than this has its long quoted values cut, and a field
#: path longer than `_QUOTE_LIMIT` is cut too: a problem is one line an operator reads,
#: whatever the file holds (a check may quote a value of 100,000 characters).
_MESSAGE_LIMIT = 1000
_QUOTE_LIMIT = 200
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'" + r'|"(?:[^"\\]|\\.)*"')


@dataclass(frozen=True)
class Document:
    """One parsed YAML document: plain data plus the position of every key and value."""

    path: Path
    data: Any
    raw: bytes
    #: path -> (line, column), 1-based, of the value at that path.
    value_marks: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    #: path -> (line, column), 1-based, of the mapping key that names that path.
    key_marks: dict[Loc, tuple[int, int]] = field(default_factory=dict)

    def place(self, loc: Sequence[str | int], *, field_name: str | None = None,
              message: str, at_key: bool = False) -> Problem:
        """A Problem placed at `loc` (or at its nearest written ancestor)."""
        loc = tuple(loc)
        line = column = None
        for end in range(len(loc), -1, -1):
            prefix = loc[:end]
            marks = self.key_marks if at_key and end == len(loc) else self.value_marks
            mark = marks.get(prefix) or (self.value_marks.get(prefix) if end < len(loc) else None)
            if mark is not None:
                line, column = mark
                break
        name = _one_line(field_name if field_name is not None else render_loc(loc))
        if len(name) > _QUOTE_LIMIT:
            name = name[:_QUOTE_LIMIT - 3] + "..."
        return Problem(str(self.path), line, column, name, _bounded(message))

    def problem(self, message: str) -> Problem:
        """A problem with the document as a whole."""
        return Problem(str(self.path), None, None, "", message)


def _one_line(text: str) -> str:
    """`text` with its control characters escaped (a key may hold a newline)."""
    return text if text.isprintable() else "".join(
        c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _bounded(message: str) -> str:
    """`message` as one line, its quoted values cut when it is too long to read."""
    message = _one_line(message)
    if len(message) <= _MESSAGE_LIMIT:
        return message
    return _QUOTED.sub(lambda m: m[0] if len(m[0]) <= _QUOTE_LIMIT
                       else m[0][:_QUOTE_LIMIT - 4] + "..." + m[0][0], message)


def render_loc(loc: Sequence[str | int]) -> str:
    """`("roles", "server", 1, "address")` -> `roles.server[1].address`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _fail(path: Path, message: str, mark: Any = None) -> ConfigError:
    line = mark.line + 1 if mark is not None else None
    column = mark.column + 1 if mark is not None else None
    return ConfigError([Problem(str(path), line, column, "", " ".join(message.split()))])


def _show(text: str) -> str:
    """`text` quoted, cut to `_SHOW` characters."""
    return repr(text if len(text) <= _SHOW else text[:_SHOW] + "...")


def _unreadable(path: Path, text: str, exc: yaml.reader.ReaderError) -> ConfigError:
    """A character YAML refuses (a control character), placed by line and column."""
    line = text.count("\n", 0, exc.position) + 1
    column = exc.position - text.rfind("\n", 0, exc.position)
    return ConfigError([Problem(str(path), line, column, "", (
        f"not valid YAML: unacceptable character #x{exc.character:04x}: {exc.reason}"))])


def read_bounded(path: Path, *, limit: int = MAX_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, or a ConfigError saying why not."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _fail(path, "no such file") from None
    except OSError as exc:
        raise _fail(path, f"cannot read: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise _fail(path, "is a directory, not a file") from None
    if not stat.S_ISREG(st.st_mode):
        raise _fail(path, "is not a regular file")
    if st.st_size > limit:
        raise _fail(path, f"file is {st.st_size} bytes; the limit is {limit} bytes")
    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except OSError as exc:
        raise _fail(path, f"cannot read: {exc.strerror}") from None
    if len(raw) > limit:  # grew between stat and read
        raise _fail(path, f"file is larger than the limit of {limit} bytes")
    return raw


def mode_of(path: Path) -> int:
    """The permission bits of the file at `path` now, or a ConfigError saying why not (the
    file may be removed or replaced at any time: an operator's folder)."""
    try:
        return os.stat(path).st_mode
    except FileNotFoundError:
        raise _fail(path, "no such file (removed while it was read)") from None
    except OSError as exc:
        raise _fail(path, f"cannot read: {exc.strerror}") from None


def load(path: str | os.PathLike[str], *, limit: int = MAX_BYTES) -> Document:
    """Read and parse one YAML file into a Document; ConfigError with one Problem otherwise."""
    p = Path(path)
    return parse(read_bounded(p, limit=limit), p)


def received_too_large(size: int, p: Path, *,
                       limit: int = MAX_MANIFEST_BYTES) -> ConfigError | None:
    """The refusal of a received text of `size` bytes, if it is larger than `limit`: checked
    before anything parses it (`p` names the text in the problem)."""
    if size <= limit:
        return None
    return _fail(p, f"the manifest is {size} bytes; a manifest received from outside this "
                    f"agent's folder may hold at most {limit} bytes ({limit // 1024} KiB)")


def parse_text(text: str, p: Path, *, limit: int = MAX_MANIFEST_BYTES) -> Document:
    """`parse` for a text received as a string: bytes that were not UTF-8 come as surrogate
    escapes and are refused as such; a lone surrogate (JSON can carry one) is refused here."""
    try:
        raw = text.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError as exc:
        raise _fail(p, f"not a UTF-8 text (character {exc.start} is a lone surrogate)") from None
    return parse(raw, p, limit=limit)


def parse(raw: bytes, p: Path, *, limit: int = MAX_MANIFEST_BYTES) -> Document:
    """Parse a YAML text that did not come from a file here (a manifest received over the
    network or through the local API); `p` only names it in problems. The same checks as
    `load`, with the size bounded by `limit` (`MAX_MANIFEST_BYTES`)."""
    too_large = received_too_large(len(raw), p, limit=limit)
    if too_large is not None:
        raise too_large
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(p, f"not a UTF-8 text file (byte {exc.start} is invalid)") from None
    if not text.strip():
        raise _fail(p, "file is empty")
    # Refuse anchors and aliases from the event stream, before any node is composed: an
    # alias bomb is cheap to parse as events and only explodes when built.
    try:
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise _fail(p, "YAML anchors and aliases (&name, *name) are not allowed",
                            event.start_mark)
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise _fail(p, f"nested more than {MAX_DEPTH} levels deep",
                                event.start_mark)
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.reader.ReaderError as exc:
        raise _unreadable(p, text, exc) from None
    except yaml.MarkedYAMLError as exc:
        problem = (exc.problem or "invalid YAML").strip()
        if problem.startswith("but ") and exc.context:  # "expected X" / "but found Y"
            problem = f"{exc.context.strip()} {problem}"
        raise _fail(p, f"not valid YAML: {problem}", exc.problem_mark) from None
    except yaml.YAMLError as exc:
        raise _fail(p, f"not valid YAML: {exc}") from None
    if node is None:
        raise _fail(p, "file is empty")
    builder = _Builder(p)
    data = builder.build(node, ())
    return Document(p, data, raw, builder.value_marks, builder.key_marks)


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Builder:
    """Plain data from a composed node tree, recording each key's and value's position."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.value_marks: dict[Loc, tuple[int, int]] = {}
        self.key_marks: dict[Loc, tuple[int, int]] = {}
        self._constructor = yaml.constructor.SafeConstructor()

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self.value_marks[loc] = _mark(node)
        if not isinstance(node, yaml.ScalarNode):
            self._check_tag(node)  # a scalar's tag is checked where it is made (`scalar`)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise _fail(self.path, "mapping keys must be plain scalars",
                                key_node.start_mark)
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise _fail(self.path, "YAML merge keys (<<) are not allowed",
                                key_node.start_mark)
                key = self.scalar(key_node)
                if key in out:
                    raise _fail(self.path, f"duplicate key {key!r}", key_node.start_mark)
                self.key_marks[(*loc, key)] = _mark(key_node)
                out[key] = self.build(value_node, (*loc, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*loc, i)) for i, item in enumerate(node.value)]
        return self.scalar(node)

    def scalar(self, node: yaml.Node) -> Any:
        self._check_tag(node)
        try:
            value = self._constructor.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            raise _fail(self.path, f"not valid YAML: {exc.problem}", node.start_mark) from None
        except (ValueError, KeyError, AttributeError, TypeError, OverflowError):
            # PyYAML's constructors trust the resolver's patterns: a date that matches but
            # does not exist, an integer past Python's digit limit, or a value written with
            # an explicit tag it does not fit (`!!bool maybe`, `!!timestamp nope`).
            kind = str(node.tag).removeprefix(_CORE)
            raise _fail(self.path, f"not valid YAML: {_show(str(node.value))} is not a valid "
                                   f"{kind}", node.start_mark) from None
        if isinstance(value, str) and not value.isascii():
            # A double-quoted "\ud800" makes a lone surrogate, which no file name, digest
            # or JSON text can encode: refused here, so that nothing after has to.
            lone = next((c for c in value if "\ud800" <= c <= "\udfff"), None)
            if lone is not None:
                raise _fail(self.path, f"not valid YAML: {_show(value)} holds a lone "
                                       f"surrogate ({lone!a})", node.start_mark)
        return value

    def _check_tag(self, node: yaml.Node) -> None:
        expected = _COLLECTION_TAGS.get(type(node))
        if node.tag == expected or (expected is None and node.tag in _SCALAR_TAGS):
            return
        tag = str(node.tag)
        shown = "!!" + tag.removeprefix(_CORE) if tag.startswith(_CORE) else tag
        raise _fail(self.path, f"YAML tag {_show(shown)} is not allowed: a manifest holds "
                               "mappings, lists, text, numbers, booleans and null",
                    node.start_mark)
