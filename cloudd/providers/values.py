"""Values checked by the renderer that puts them into a service's configuration.

A provider renders values into SQL run as the database's root, into `my.cnf`, `nginx.conf`,
JSON that a Ruby program reads, and command lines. Each value passes through one of these
functions on its way in, whatever checked it before (the manifest's models, the codec): a
value that could change the meaning of the file around it (a quote, a newline, a brace, a
`$(...)`, an address that is not one) is refused with one `PermanentError` naming the value
and where it was going, and nothing is written, since rendering comes before writing.
A secret's value is never quoted in a refusal.

Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from cloudd.config.plain import Plain, pydantic_words, read
from cloudd.errors import PermanentError

S = TypeVar("S", bound=Plain)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
#: What a path rendered into a configuration file or a client command may hold: no blank,
#: quote, semicolon, brace, `$`, backslash or control character.
_PATH = re.compile(r"^/[A-Za-z0-9._/+@=-]*\Z")
#: Control characters, C0 and C1 (a C1 CSI, \x9b, starts an escape sequence on some
#: terminals): what a tenant's VM says must not reach a file's syntax or the operator's
#: terminal with them.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def refuse(what: str, value: Any, target: str, why: str) -> PermanentError:
    """The one form of a refusal: the value, where it was going, and why not."""
    return PermanentError(f"refusing to render {what} {value!r} into {target}: {why}")


def settings(cls: type[S], raw: Mapping[str, Any], *, kind: str) -> S:
    """A cloud type's settings from the manifest's mapping (read again on the node, which
    renders them); one precise error for the first bad value, in pydantic's words as before
    ("web settings: app_port: Input should be a valid integer")."""
    data = dict(raw)
    got, refused = read(cls, data)
    if got is None:
        first = refused[0]
        where = ".".join(str(p) for p in first.loc) or "settings"
        raise PermanentError(f"{kind} settings: {where}: {pydantic_words(first, data)}")
    return got


def ip(value: Any, *, what: str, target: str) -> IPAddress:
    """An IP address (an address object, or text that is exactly one)."""
    if isinstance(value, IPAddress):
        return value
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise refuse(what, value, target, "not an IP address") from None


def host_port(address: IPAddress, port: int) -> str:
    """`address:port` as nginx and URLs want it (`[v6]:port`)."""
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def label(value: Any, *, what: str, target: str) -> str:
    """A node or cloud name: a DNS label (as the manifest requires)."""
    if not isinstance(value, str) or not _LABEL.match(value):
        raise refuse(what, value, target, "not a DNS label")
    return value


def identifier(value: Any, *, what: str, target: str) -> str:
    """An SQL identifier or account name: letters, digits and '_', not starting with a digit."""
    if not isinstance(value, str) or not _IDENTIFIER.match(value):
        raise refuse(what, value, target, "not a plain identifier")
    return value


def port(value: Any, *, what: str, target: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise refuse(what, value, target, "not a TCP port")
    return value


def path(value: Any, *, what: str, target: str) -> Path:
    """An absolute path made of plain characters (no blank, quote, brace, `$`, newline)."""
    text = str(value)
    if not _PATH.match(text) or "/../" in f"{text}/":
        raise refuse(what, text, target, "not a plain absolute path")
    return Path(text)


def secret_text(name: str, value: str, *, target: str) -> str:
    """A secret's value, refused (without quoting it) when it holds a control character."""
    if CONTROL.search(value):
        raise PermanentError(f"refusing to render secret {name!r} into {target}: it holds a "
                             "control character (a newline?)")
    return value


def sql_string(name: str, value: str, *, target: str) -> str:
    """A secret as an SQL string literal: quotes and backslashes escaped, controls refused."""
    text = secret_text(name, value, target=target)
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
