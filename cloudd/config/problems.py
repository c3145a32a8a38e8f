"""Turning validation failures into placed, one-sentence Problems.

pydantic, which read the manifest once, reported an error as a `loc` tuple and an English
message written for programmers ("Input should be a valid integer"); operators get the field
path, the line and column where they wrote it, and a sentence that names the value they gave.
Every model is now read without pydantic (`cloudd.config.plain`), in the same sentences (the
tests' oracles word pydantic's errors so: tests/shared/pydantic_problems.py). The scan for
secrets written inline is `cloudd.config.secretscan` (imported from here as well).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from cloudd.config.plain import FieldRefusal, read_model, read_value
from cloudd.config.secretscan import inline_secrets as inline_secrets
from cloudd.config.secretscan import walk as walk
from cloudd.config.yamlsrc import Document, Loc
from cloudd.errors import Problem

if TYPE_CHECKING:
    from collections.abc import Iterable

T = TypeVar("T")


def placed(doc: Document, refused: Iterable[FieldRefusal]) -> list[Problem]:
    """The placed problems of the plain reader's refusals (their locs are absolute)."""
    return [doc.place(r.loc, message=r.message, at_key=r.at_key) for r in refused]


def read_as(doc: Document, model: type[T], data: dict[Any, Any],
            prefix: Loc = ()) -> tuple[T | None, list[Problem]]:
    """One of the manifest's models read from the mapping `data` (found at `prefix`), or
    None and the placed problems."""
    got, refused = read_model(model, data, prefix)
    return got, placed(doc, refused)


def read_typed(doc: Document, hint: Any, data: Any,
               prefix: Loc = ()) -> tuple[Any, list[Problem]]:
    """Like `read_as`, for a type written as the models write their fields
    (`list[NodeIn]`): the value, or None and the placed problems."""
    got, refused = read_value(hint, data, prefix)
    return (None, placed(doc, refused)) if refused else (got, [])
