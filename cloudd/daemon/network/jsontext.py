"""A message body's JSON, read as the codec has always read it, without pydantic's parser.

The codec parsed bodies with pydantic_core's `from_json` (jiter), and its refusals ("EOF
while parsing a value at line 1 column 6", "recursion limit exceeded at ...") are part of the
protocol's tests; pydantic_core alone maps about 7.5 MiB, most of what a node would save by
dropping pydantic. So `loads` reads a body with the standard library's parser, which takes
what jiter takes, and returns the same values, with four exceptions, each of them rare and
cheap to spot: nesting deeper than jiter's limit (200 levels inside the top value), an
integer (or a float's integer part) of more than 4300 digits, a `\\u` escape of half a
surrogate pair (the standard parser keeps it; jiter refuses), and any text that is not JSON
at all. For those, `_Reader` reads the body again as jiter does, byte by byte, to accept
exactly what jiter accepts and to refuse at the same place with the same words.
"""

from __future__ import annotations

import json
import json.scanner
import re
from collections.abc import Callable
from typing import Any

#: jiter's limit: how many levels a value may sit inside the top value.
DEPTH = 200
#: jiter's longest integer, or integer part of a float, in digits.
LONGEST_INT = 4300

_WHITESPACE = b" \t\r\n"
_DIGITS = re.compile(rb"\d{%d}" % LONGEST_INT)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_ESCAPES = {ord('"'): b'"', ord("\\"): b"\\", ord("/"): b"/", ord("b"): b"\b",
            ord("f"): b"\f", ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t"}


#: The standard library's parser of one value, without `json.loads`'s checks of the text
#: around it (whitespace before or after a body is read by `_Reader`).
_scan: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(
    json.JSONDecoder())  # type: ignore[arg-type]  # typeshed has it take itself


class JsonError(ValueError):
    """The body is not JSON as jiter reads it; the message is jiter's, with its place."""


def loads(body: bytes) -> Any:
    """The value `body` holds, or `JsonError` worded as jiter words it."""
    try:
        text = body.decode("utf-8")
        data, end = _scan(text, 0)
    except (ValueError, RecursionError, StopIteration):  # bad UTF-8, bad JSON, too deep...
        return _Reader(body).read()
    if end != len(text) or (len(body) > LONGEST_INT and _DIGITS.search(body)) or (
            b"\\u" in body and _SURROGATE_ESCAPE.search(body)) or (
            body.count(b"[") + body.count(b"{") > DEPTH and _too_deep(data)):
        return _Reader(body).read()  # ...whitespace after it, or what jiter reads otherwise
    return data


def _too_deep(data: Any) -> bool:
    todo = [(data, 0)]
    while todo:
        value, depth = todo.pop()
        if depth > DEPTH:
            return True
        if isinstance(value, dict):
            todo += ((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            todo += ((v, depth + 1) for v in value)
    return False


def _place(data: bytes, index: int) -> str:
    """jiter's "line L column C" for a byte index (an index past the end counts the
    characters of the last line, as jiter does)."""
    line, line_start = 1, 0
    for i, byte in enumerate(data):
        if byte == 0x0A:
            line, line_start = line + 1, i + 1
        if i == index:
            return f"line {line} column {index + 1 - line_start}"
    return f"line {line} column {len(data) - line_start}"


class _Reader:
    """jiter's parser, as pydantic_core's `from_json` runs it (NaN and Infinity allowed)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0
        self.depth = DEPTH

    def fail(self, what: str, index: int) -> JsonError:
        return JsonError(f"{what} at {_place(self.data, index)}")

    def read(self) -> Any:
        value = self.value(self.peek())
        if self.skip() is not None:
            raise self.fail("trailing characters", self.at)
        return value

    def skip(self) -> int | None:
        """Skip whitespace; the next byte, or None at the end."""
        data, at = self.data, self.at
        while at < len(data) and data[at] in _WHITESPACE:
            at += 1
        self.at = at
        return data[at] if at < len(data) else None

    def peek(self) -> int:
        byte = self.skip()
        if byte is None:
            raise self.fail("EOF while parsing a value", self.at)
        return byte

    def inner(self, byte: int) -> Any:
        """A value inside an array or object: one level deeper."""
        if self.depth == 0:
            raise self.fail("recursion limit exceeded", self.at)
        self.depth -= 1
        value = self.value(byte)
        self.depth += 1
        return value

    def value(self, byte: int) -> Any:
        if byte == ord("n"):
            self.at = self.ident(self.at, b"ull")
            return None
        if byte == ord("t"):
            self.at = self.ident(self.at, b"rue")
            return True
        if byte == ord("f"):
            self.at = self.ident(self.at, b"alse")
            return False
        if byte == ord('"'):
            return self.string()
        if byte == ord("["):
            return self.array()
        if byte == ord("{"):
            return self.object()
        return self.number(byte)

    def ident(self, at: int, rest: bytes) -> int:
        data = self.data
        if data[at + 1:at + 1 + len(rest)] == rest:
            return at + 1 + len(rest)
        at += 1
        for expected in rest:
            if at >= len(data):
                break
            if data[at] != expected:
                raise self.fail("expected ident", at)
            at += 1
        raise self.fail("EOF while parsing a value", at)

    def array(self) -> list[Any]:
        self.at += 1
        byte = self.skip()
        if byte is None:
            raise self.fail("EOF while parsing a list", self.at)
        out: list[Any] = []
        if byte == ord("]"):
            self.at += 1
            return out
        out.append(self.inner(byte))
        while True:
            byte = self.skip()
            if byte is None:
                raise self.fail("EOF while parsing a list", self.at)
            if byte == ord("]"):
                self.at += 1
                return out
            if byte != ord(","):
                raise self.fail("expected `,` or `]`", self.at)
            self.at += 1
            byte = self.skip()
            if byte is None:
                raise self.fail("EOF while parsing a value", self.at)
            if byte == ord("]"):
                raise self.fail("trailing comma", self.at)
            out.append(self.inner(byte))

    def object(self) -> dict[str, Any]:
        self.at += 1
        byte = self.skip()
        if byte is None:
            raise self.fail("EOF while parsing an object", self.at)
        out: dict[str, Any] = {}
        if byte == ord("}"):
            self.at += 1
            return out
        if byte != ord('"'):
            raise self.fail("key must be a string", self.at)
        while True:
            key = self.key()
            out[key] = self.inner(self.peek())
            byte = self.skip()
            if byte is None:
                raise self.fail("EOF while parsing an object", self.at)
            if byte == ord("}"):
                self.at += 1
                return out
            if byte != ord(","):
                raise self.fail("expected `,` or `}`", self.at)
            self.at += 1
            byte = self.skip()
            if byte is None:
                raise self.fail("EOF while parsing a value", self.at)
            if byte == ord("}"):
                raise self.fail("trailing comma", self.at)
            if byte != ord('"'):
                raise self.fail("key must be a string", self.at)

    def key(self) -> str:
        key = self.string()
        byte = self.skip()
        if byte is None:
            raise self.fail("EOF while parsing an object", self.at)
        if byte != ord(":"):
            raise self.fail("expected `:`", self.at)
        self.at += 1
        return key

    def string(self) -> str:
        data = self.data
        start = at = self.at + 1
        tape = bytearray()
        chunk = start
        while True:
            if at >= len(data):
                raise self.fail("EOF while parsing a string", at)
            byte = data[at]
            if byte == ord('"'):
                break
            if byte < 0x20:
                raise self.fail("control character (\\u0000-\\u001F) found while parsing a "
                                "string", at)
            if byte != ord("\\"):
                at += 1
                continue
            tape += data[chunk:at]
            at += 1
            if at >= len(data):
                raise self.fail("EOF while parsing a string", at)
            escape = data[at]
            if escape == ord("u"):
                char, at = self.escape(at)
                tape += char.encode("utf-8")
            elif escape in _ESCAPES:
                tape += _ESCAPES[escape]
            else:
                raise self.fail("invalid escape", at)
            at += 1
            chunk = at
        tape += data[chunk:at]
        self.at = at + 1
        try:
            return tape.decode("utf-8")
        except UnicodeDecodeError as exc:  # jiter places it in the unescaped text
            raise self.fail("invalid unicode code point", start + exc.start) from None

    def escape(self, at: int) -> tuple[str, int]:
        """The character of the `\\u` escape whose `u` is at `at`, and the index of its last
        hex digit (of the second escape, for a surrogate pair)."""
        data = self.data
        n, at = self.hex4(at)
        if 0xDC00 <= n <= 0xDFFF:
            raise self.fail("lone leading surrogate in hex escape", at)
        if not 0xD800 <= n <= 0xDBFF:
            return chr(n), at
        after = data[at + 1:at + 3]
        if after == b"\\u":
            low, at = self.hex4(at + 2)
            if not 0xDC00 <= low <= 0xDFFF:
                raise self.fail("lone leading surrogate in hex escape", at)
            return chr(((n - 0xD800) << 10 | (low - 0xDC00)) + 0x10000), at
        if len(after) == 2:
            where = at + 2 if after[:1] == b"\\" else at + 1
            raise self.fail("unexpected end of hex escape", where)
        if len(after) == 0 or after == b"\\":
            raise self.fail("EOF while parsing a string", len(data))
        raise self.fail("unexpected end of hex escape", at + 1)

    def hex4(self, at: int) -> tuple[int, int]:
        digits = self.data[at + 1:at + 5]
        if len(digits) < 4:
            raise self.fail("EOF while parsing a string", len(self.data))
        n = 0
        for digit in digits:
            at += 1
            value = int(chr(digit), 16) if chr(digit) in "0123456789abcdefABCDEF" else -1
            if value < 0:
                raise self.fail("invalid escape", at)
            n = n << 4 | value
        return n, at

    def number(self, first: int) -> Any:
        data, start = self.data, self.at
        if first == ord("N"):
            self.at = self.ident(start, b"aN")
            return float("nan")
        at = start + 1 if first == ord("-") else start
        if at >= len(data):
            raise self.fail("EOF while parsing a value", at)
        lead = data[at]
        if lead == ord("I"):
            self.at = self.ident(at, b"nfinity")
            return float("-inf") if first == ord("-") else float("inf")
        if not ord("0") <= lead <= ord("9"):
            # jiter tells "expected value" for what cannot start a number at all
            raise self.fail("invalid number" if first == ord("-") else "expected value", at)
        digits, at = at, at + 1
        if lead == ord("0"):
            if at < len(data) and ord("0") <= data[at] <= ord("9"):
                raise self.fail("invalid number", at)
        else:
            while at < len(data) and ord("0") <= data[at] <= ord("9"):
                at += 1
            if at - digits > LONGEST_INT:
                raise self.fail("number out of range", digits + LONGEST_INT + 1)
        is_float = False
        if at < len(data) and data[at] == ord("."):
            is_float = True
            at = self.digits(at + 1)
        if at < len(data) and data[at] in b"eE":
            is_float = True
            at += 1
            if at < len(data) and data[at] in b"+-":
                at += 1
            at = self.digits(at)
        self.at = at
        text = data[start:at]
        return float(text) if is_float else int(text)

    def digits(self, at: int) -> int:
        """Past one or more digits from `at`."""
        data = self.data
        if at >= len(data):
            raise self.fail("EOF while parsing a value", at)
        if not ord("0") <= data[at] <= ord("9"):
            raise self.fail("invalid number", at)
        while at < len(data) and ord("0") <= data[at] <= ord("9"):
            at += 1
        return at
