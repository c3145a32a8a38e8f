"""A message body's JSON: the standard library's parser, with the limits a peer's body keeps,
and every refusal one sentence that says where.

A body is UTF-8 JSON (RFC 8259). Beyond the parser's own rules, it is refused when it nests
deeper than `DEPTH` levels inside its top value (no message nests more than a few; a body of
a megabyte of `[` would otherwise be walked a million levels down by every check after the
parse), when an integer has more digits than Python reads (4300: longer ones take quadratic
time), or when a string holds half of a UTF-16 surrogate pair (a `\\ud800` escape alone: no
UTF-8 text can hold it, so no log line or answer could quote it). `NaN` and `Infinity` are
read as floats, as the parser reads them, and refused by the codec's number check with the
field they are in.

The refusals are the parser's words with the line and column: "Expecting ',' delimiter at
line 1 column 6", "Unterminated string starting at line 1 column 9", "invalid UTF-8 at byte
3", "nested deeper than 200 levels".
"""

from __future__ import annotations

import json
import re
from typing import Any

#: How many levels a value may sit inside the top value.
DEPTH = 200

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_DECODER = json.JSONDecoder()
#: Compact, UTF-8 as it is; made once (`json.dumps` with options makes an encoder per call).
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)


class JsonError(ValueError):
    """The body is not JSON a peer may send; the message says what and where."""


def loads(body: bytes) -> Any:
    """The value `body` holds, or `JsonError`."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonError(f"invalid UTF-8 at byte {exc.start}") from None
    try:
        data = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise JsonError(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:  # deeper than the parser itself goes
        raise JsonError(f"nested deeper than {DEPTH} levels") from None
    except ValueError:  # the parser's only other refusal: an integer too long to read
        raise JsonError("an integer of more than 4300 digits") from None
    # each check only when the bytes allow its case: a message body passes them all
    if body.count(b"[") + body.count(b"{") > DEPTH and _deeper(data, DEPTH):
        raise JsonError(f"nested deeper than {DEPTH} levels")
    if b"\\u" in body and _SURROGATE_ESCAPE.search(body) and _half_pair(data):
        raise JsonError("a string holds half of a surrogate pair (\\ud800-\\udfff alone)")
    return data


def dumps(value: Any) -> bytes:
    """`value` (JSON types only) as the codec writes a body, and the files read as bodies
    are written."""
    return _ENCODER.encode(value).encode()


def _deeper(data: Any, limit: int) -> bool:
    """Whether a value of `data` sits more than `limit` levels inside it."""
    todo = [(data, 0)]
    while todo:  # a stack, not recursion
        value, depth = todo.pop()
        if depth > limit:
            return True
        if isinstance(value, dict | list):
            items = value.values() if isinstance(value, dict) else value
            todo += ((v, depth + 1) for v in items)
    return False


def _half_pair(data: Any) -> bool:
    """Whether a string of `data` (a key or a value) holds half of a surrogate pair."""
    todo = [data]
    while todo:
        value = todo.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(value, dict):
            todo += value.keys()
            todo += value.values()
        elif isinstance(value, list):
            todo += value
    return False
