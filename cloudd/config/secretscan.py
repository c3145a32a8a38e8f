"""The scan that refuses secrets written inline in a settings file or a manifest.

It runs before the file is read into its types, so that the operator is told "this is a
secret" rather than "unknown field". A module of its own, apart from
`cloudd.config.problems` (which imported pydantic when it was written), so that the agent's
own settings need only this and `cloudd.config.plain`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

from cloudd.config.yamlsrc import Document, Loc
from cloudd.errors import Problem

#: Keys whose string value is a credential. Keys ending in `_ref` name an entry of
#: `secrets` instead, and are allowed.
SECRET_KEY = re.compile(r"(password|passwd|secret|token|passphrase|private_key|api_key|"
                        r"credentials?)", re.IGNORECASE)


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
