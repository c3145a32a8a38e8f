"""pydantic's validation errors as placed, one-sentence Problems, for the tests' pydantic
oracles (the manifest's, the agent's settings', the providers' settings').

These were `cloudd.config.problems`'s while a cloud type's settings could be a pydantic
model; cloudd now reads every model without pydantic (`cloudd.config.plain`), in the same
sentences, so only the oracles that hold it to pydantic's words still need them.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from cloudd.config.plain import show as _show
from cloudd.config.yamlsrc import Document, Loc
from cloudd.errors import Problem

_SHOW_LIMIT = 60

M = TypeVar("M", bound=BaseModel)


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
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        return None, from_validation(doc, exc, prefix)
