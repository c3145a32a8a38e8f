"""Places inside plain data (JSON bodies, YAML documents) and the data with one of them
changed: what both fuzz modules mutate field-wise."""

from __future__ import annotations

from typing import Any


def places(data: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place inside `data`, itself first: keys of mappings, indexes of lists."""
    out = [at]
    if isinstance(data, dict):
        for k, v in data.items():
            out += places(v, (*at, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += places(v, (*at, i))
    return out


def change(data: Any, where: tuple[Any, ...], how: str, new: Any) -> Any:
    """`data` with the place `where` replaced by `new` (`how`: "replace"), deleted
    ("delete"), or given `new` as a sibling ("add": a key of its own beside it, or an item
    before it); `data` itself is left as it was."""
    if not where:
        return new if how == "replace" else data
    head, rest = where[0], where[1:]
    copy: Any = dict(data) if isinstance(data, dict) else list(data)
    if rest:
        copy[head] = change(data[head], rest, how, new)
    elif how == "delete":
        del copy[head]
    elif how == "add" and isinstance(copy, dict):
        copy[f"{head}_extra"] = new
    elif how == "add":
        copy.insert(head, new)
    else:
        copy[head] = new
    return copy
