"""Turning validation failures into placed, one-sentence Problems.

pydantic reports an error as a `loc` tuple and an English message written for programmers
("Input should be a valid integer"); operators get the field path, the line and column where
they wrote it, and a sentence that names the value they gave. Also here: the scan that refuses
secrets written inline, which must run before the models so that the operator is told "this
is a secret" rather than "unknown field".
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from cloudd.config.yamlsrc import Document, Loc
from cloudd.errors import Problem

#: Keys whose string value is a credential. Keys ending in `_ref` name an entry of
#: `secrets` instead, and are allowed.
SECRET_KEY = re.compile(r"(password|passwd|secret|token|passphrase|private_key|api_key|"
                        r"credentials?)", re.IGNORECASE)

_SHOW_LIMIT = 60

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOW_LIMIT else text[: _SHOW_LIMIT - 3] + "..."


def sentence(error: Any) -> str:
    """One operator-facing sentence for one pydantic error dict."""
    kind = error["type"]
    msg: str = error["msg"]
    given = error.get("input")
    if isinstance(given, str) and len(given) > _SHOW_LIMIT:
        # a validator's own sentence quotes the value whole: a 200 KiB name made a 200 KiB
        # message; quoted cut, like every other value shown here
        msg = msg.replace(repr(given), _show(given))
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "is required"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    if kind == "assertion_error":
        return msg.removeprefix("Assertion failed, ")
    if msg.startswith("Input should be "):
        return f"should be {msg.removeprefix('Input should be ')}, not {_show(given)}"
    if msg.startswith("String should "):
        return f"{_show(given)} should {msg.removeprefix('String should ')}"
    if msg.startswith(("List should ", "Dictionary should ")):
        return "should " + msg.split(" should ", 1)[1]
    return msg[:1].lower() + msg[1:]


def from_validation(doc: Document, exc: ValidationError, prefix: Loc = ()) -> list[Problem]:
    """Problems for every error of `exc`, whose locs are relative to `prefix` in `doc`."""
    out = []
    for error in exc.errors():
        loc = (*prefix, *error["loc"])
        out.append(doc.place(loc, message=sentence(error),
                             at_key=error["type"] == "extra_forbidden"))
    return out


def validate_model(doc: Document, model: type[M], data: Any,
                   prefix: Loc = ()) -> tuple[M | None, list[Problem]]:
    """`model` validated from `data` (found at `prefix`), or None and the placed problems."""
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        return None, from_validation(doc, exc, prefix)


def validate_as(doc: Document, adapter: TypeAdapter[T], data: Any,
                prefix: Loc = ()) -> tuple[T, list[Problem]] | tuple[None, list[Problem]]:
    """Like validate_model, for any type through a TypeAdapter."""
    try:
        return adapter.validate_python(data), []
    except ValidationError as exc:
        return None, from_validation(doc, exc, prefix)


def walk(data: Any, loc: Loc) -> Iterator[tuple[Loc, Any, Any]]:
    """(loc, key, value) for every mapping entry, depth first, in file order."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield (*loc, key), key, value
            yield from walk(value, (*loc, key))
    elif isinstance(data, list):
        for i, item in enumerate(data):
            yield from walk(item, (*loc, i))


def _holds_text(value: Any) -> bool:
    if isinstance(value, str):
        return value != ""
    return isinstance(value, list) and any(isinstance(v, str) and v for v in value)


def inline_secrets(doc: Document, *, secrets_keys: Sequence[str] = ("secrets",)) -> list[Problem]:
    """A Problem for each credential written in the file itself rather than referenced.

    Refused: a string under a key that names a credential (password, token, ...) anywhere,
    and any string directly under a top-level `secrets` entry (those must be `{file: PATH}`).
    """
    problems = []
    hint = "put it in a file and reference it as secrets: {NAME: {file: PATH}}"
    for loc, key, value in walk(doc.data, ()):
        under_secrets = len(loc) == 2 and loc[0] in secrets_keys
        if under_secrets and _holds_text(value):
            problems.append(doc.place(loc, message=f"a secret written inline; {hint}"))
        elif (isinstance(key, str) and SECRET_KEY.search(key) and not key.endswith("_ref")
              and not under_secrets and _holds_text(value)):
            problems.append(doc.place(
                loc, message=f"looks like a secret written inline ({key!r}); {hint}"))
    return problems
