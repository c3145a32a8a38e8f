"""Turning validation failures into placed, one-sentence Problems.

pydantic reports an error as a `loc` tuple and an English message written for programmers
("Input should be a valid integer"); operators get the field path, the line and column where
they wrote it, and a sentence that names the value they gave. The manifest's own models are
read without pydantic (`cloudd.config.plain`), in the same sentences; pydantic is imported
only to validate a model of its own (a cloud type's `settings`), so that reading a manifest
loads it only where such a model is. The scan for secrets written inline is
`cloudd.config.secretscan` (imported from here as well).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from cloudd.config.plain import FieldRefusal, read_model, read_value
from cloudd.config.plain import show as _show
from cloudd.config.secretscan import inline_secrets as inline_secrets
from cloudd.config.secretscan import walk as walk
from cloudd.config.yamlsrc import Document, Loc
from cloudd.errors import Problem

if TYPE_CHECKING:
    from collections.abc import Iterable

    from pydantic import BaseModel, ValidationError

_SHOW_LIMIT = 60

M = TypeVar("M", bound="BaseModel")
T = TypeVar("T")


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
    """pydantic's `model` validated from `data` (found at `prefix`), or None and the placed
    problems."""
    from pydantic import ValidationError  # here: only where a model is pydantic's

    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        return None, from_validation(doc, exc, prefix)


def placed(doc: Document, refused: Iterable[FieldRefusal]) -> list[Problem]:
    """The placed problems of the plain reader's refusals (their locs are absolute)."""
    return [doc.place(r.loc, message=r.message, at_key=r.at_key) for r in refused]


def read_as(doc: Document, model: type[T], data: dict[Any, Any],
            prefix: Loc = ()) -> tuple[T | None, list[Problem]]:
    """One of the manifest's models read from the mapping `data` (found at `prefix`), or
    None and the placed problems, as `validate_model` words them."""
    got, refused = read_model(model, data, prefix)
    return got, placed(doc, refused)


def read_typed(doc: Document, hint: Any, data: Any,
               prefix: Loc = ()) -> tuple[Any, list[Problem]]:
    """Like `read_as`, for a type written as the models write their fields
    (`list[NodeIn]`): the value, or None and the placed problems."""
    got, refused = read_value(hint, data, prefix)
    return (None, placed(doc, refused)) if refused else (got, [])
