"""What a manifest may read besides its own text, according to where the text came from.

A manifest written on this machine (`Origin.FILE`: a file an operator dropped in
`/etc/cloudd/`, the file given to `cloudd-cli validate` or `apply`) may name files of this
machine: its domain template, its secrets, the two list files a role may be written as. They
are read here, bounded, and a problem in one of them is placed in that file.

A manifest received over the network (`Origin.WIRE`: an operator's apply relayed, a leader's
offer, the answer to a booting node) is self-contained: it names no file at all. A path in it
would name a file of *this* machine that the sender chose (any root-readable file: the CA key,
a host key), and a problem quoting what was read there would hand the file to the sender. Its
template comes as text (`domain_template_text`) and its secrets as their contents
(`secrets: {NAME: {value_b64: ...}}`, or `{}` for a secret withheld from the receiver); both
are written by cloudd only (`cloudd.config.portable`), never by an operator, who names files.
cloudd marks the texts it sends `self_contained: true`: a manifest received over the network
must say so, and a file in the manifest folder that says so (a generation installed from the
network) is read by the same rules, never as an operator's file, and must be private (no
access for group or others) when it holds secrets.

The digest covers the secrets through an HMAC keyed by a random key of this agent: a
generation's digest, which nodes see, cannot be used to test guesses of a password. The
agent's worker process that checks received manifests (`cloudd.daemon.member.manifests`) is
handed the same key (`digest_key`, `use_digest_key`), so that a text has one digest in both.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets as random_bytes
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from cloudd.config import yamlsrc
from cloudd.config.model import Secret
from cloudd.config.problems import walk
from cloudd.config.yamlsrc import Document
from cloudd.errors import ConfigError, Problem

#: A secret's name becomes a file name on the nodes: a plain name, nothing a path could use.
SECRET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
#: The largest secret accepted, in bytes: passwords and keys are small.
MAX_SECRET = 64 * 1024
#: The stem of every refusal of a file named by a manifest received over the network.
SELF_CONTAINED = "a manifest received over the network must be self-contained"
_INLINED = "list files, templates and secrets are inlined by cloudd-cli apply"
_KEY = random_bytes.token_bytes(32)


def digest_key() -> bytes:
    """The key that digests secrets in this process."""
    return _KEY


def use_digest_key(key: bytes) -> None:
    """Digest secrets with `key` (a worker process takes its agent's key)."""
    global _KEY
    if len(key) != 32:
        raise ValueError("a digest key is 32 bytes")
    _KEY = key

@dataclass
class Reads:
    """What a load read besides the manifest, for the digest and the folder's watcher."""

    #: (file, its bytes): the template and the list files, hashed into the digest.
    files: list[tuple[Path, bytes]] = field(default_factory=list)
    #: Secrets' files: watched for changes; their contents enter the digest keyed.
    secret_files: list[Path] = field(default_factory=list)

    @property
    def paths(self) -> tuple[Path, ...]:
        return (*(p for p, _ in self.files), *self.secret_files)


class Origin(StrEnum):
    """Where a manifest's text came from, and so what it may read."""

    FILE = "file"
    """A file of this machine, written by its operator: may name files of this machine."""
    WIRE = "wire"
    """Received over the network: self-contained, names no file."""


def is_wire(doc: Document, origin: Origin) -> bool:
    """Whether the self-contained rules apply: a text from the network, or a file that cloudd
    wrote from one (it says `self_contained: true`)."""
    data = doc.data if isinstance(doc.data, dict) else {}
    return origin is Origin.WIRE or data.get("self_contained") is True


def resolve(base: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else (base / p).resolve()


def check_origin(doc: Document, *, wire: bool, received: bool) -> list[Problem]:
    """Each field that the text's origin does not allow, with one precise sentence.

    Self-contained (`wire`): any `*_file` key, a `domain_template` path, a secret's `file`.
    Written by an operator: the fields only cloudd writes. `received`: the text came over
    the network now, and must say that it is self-contained."""
    data = doc.data if isinstance(doc.data, dict) else {}
    problems: list[Problem] = []
    if wire:
        if received and data.get("self_contained") is not True:
            problems.append(doc.place(("self_contained",), message=(
                f"{SELF_CONTAINED}: it does not say self_contained: true; {_INLINED}")))
        for loc, key, _ in walk(data, ()):
            if not isinstance(key, str):
                continue
            names_file = (key.endswith("_file") or loc == ("domain_template",)
                          or (len(loc) == 3 and loc[0] == "secrets" and key == "file"))
            if names_file:
                problems.append(doc.place(loc, at_key=True, message=(
                    f"{SELF_CONTAINED}: {key!r} names a file of the receiving machine; "
                    f"{_INLINED}")))
        return problems
    if "domain_template_text" in data:
        problems.append(doc.place(("domain_template_text",), at_key=True, message=(
            "is written by cloudd only, in the manifests it sends; name the template's file "
            "with domain_template")))
    for name, entry in (data.get("secrets") or {}).items() if isinstance(
            data.get("secrets"), dict) else ():
        if isinstance(entry, dict) and "value_b64" in entry:
            problems.append(doc.place(("secrets", name, "value_b64"), at_key=True, message=(
                "a secret's contents are written by cloudd only, in the manifests it sends; "
                "put it in a file and reference it as secrets: {NAME: {file: PATH}}")))
    return problems


def read_file(doc: Document, path: Path, loc: yamlsrc.Loc, *,
              limit: int = yamlsrc.MAX_BYTES) -> tuple[bytes | None, list[Problem]]:
    """The bytes of a file a manifest read from disk names, or a problem placed at `loc`
    that names the file and never quotes it."""
    try:
        return yamlsrc.read_bounded(path, limit=limit), []
    except ConfigError as exc:
        return None, [doc.place(loc, message=f"{str(path)!r}: {exc.problems[0].message}")]


def read_template(doc: Document, value: str | None, *, wire: bool, read: bool,
                  reads: Reads) -> tuple[Path | None, str | None, list[Problem]]:
    """(the template's file, its text): named by a file manifest, carried by a wire one."""
    data = doc.data if isinstance(doc.data, dict) else {}
    if wire:
        text = data.get("domain_template_text")
        return None, text if isinstance(text, str) else None, []
    assert value is not None  # check_origin requires it
    path = resolve(doc.path.parent, value)
    if not read:
        return path, None, []
    if not path.is_file():  # the usual mistake, said as it always was
        return path, None, [doc.place(("domain_template",),
                                      message=f"no such file: {str(path)!r}")]
    raw, problems = read_file(doc, path, ("domain_template",))
    if raw is None:
        return path, None, problems
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return path, None, [doc.place(("domain_template",), message=(
            f"{str(path)!r}: not a UTF-8 text file"))]
    reads.files.append((path, raw))
    return path, text, []


def read_secrets(doc: Document, *, wire: bool, read: bool,
                 reads: Reads) -> tuple[dict[str, Secret], list[Problem]]:
    """The declared secrets, with their contents where this load may and should have them.

    No message here ever quotes a secret's value."""
    data = doc.data if isinstance(doc.data, dict) else {}
    raw = data.get("secrets") or {}
    if not isinstance(raw, dict):
        return {}, [doc.place(("secrets",), message="must be a mapping of secret names")]
    out: dict[str, Secret] = {}
    problems: list[Problem] = []
    form = "{value_b64: BASE64} or {}" if wire else "{file: PATH}"
    for name, entry in raw.items():
        loc: yamlsrc.Loc = ("secrets", name)
        if not isinstance(name, str) or not SECRET_NAME.match(name):
            problems.append(doc.place(loc, at_key=True, message=(
                f"secret name {name!r} is not a plain name (letters, digits, '.', '_' and "
                "'-', at most 64, starting with a letter or digit)")))
            continue
        allowed = {"value_b64"} if wire else {"file"}
        if not isinstance(entry, dict) or set(entry) - allowed or (
                not wire and "file" not in entry):
            problems.append(doc.place(loc, message=f"must be {form}"))
            continue
        if wire:
            secret, found = _wire_secret(doc, loc, entry.get("value_b64"))
        else:
            secret, found = _file_secret(doc, loc, entry["file"], read=read, reads=reads)
        problems += found
        if secret is not None:
            out[name] = secret
    return out, problems


def _wire_secret(doc: Document, loc: yamlsrc.Loc, value: Any) -> tuple[Secret | None,
                                                                       list[Problem]]:
    if value is None:
        return Secret(None), []  # withheld from this receiver
    where = (*loc, "value_b64")
    if not isinstance(value, str):
        return None, [doc.place(where, message="must be base64 text")]
    try:
        data = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None, [doc.place(where, message="is not base64 text")]
    if not data or len(data) > MAX_SECRET:
        return None, [doc.place(where, message=f"must hold 1 to {MAX_SECRET} bytes")]
    return Secret(data), []


def _file_secret(doc: Document, loc: yamlsrc.Loc, value: Any, *, read: bool,
                 reads: Reads) -> tuple[Secret | None, list[Problem]]:
    where = (*loc, "file")
    if not isinstance(value, str) or not value:
        return None, [doc.place(where, message="must be the path of the secret's file")]
    if not read:
        return Secret(None), []
    path = resolve(doc.path.parent, value)
    data, problems = read_file(doc, path, where, limit=MAX_SECRET)
    if data is None:
        return None, problems
    if not data.strip():
        return None, [doc.place(where, message=f"{str(path)!r}: the secret's file is empty")]
    reads.secret_files.append(path)
    return Secret(data), []


def private(doc: Document, secrets: Mapping[str, Secret], mode: int) -> list[Problem]:
    """A file of the manifest folder that holds secrets' contents must be private."""
    if mode & 0o077 and any(s.held for s in secrets.values()):
        return [doc.problem(
            f"holds secrets' contents but other users may read it (mode {mode & 0o777:04o}); "
            "cloudd writes these files with mode 0600")]
    return []


def digest(doc: Document, *, wire: bool, reads: Reads, secrets: Mapping[str, Secret]) -> str:
    """sha256 over the manifest, every file it read and (keyed) every secret it holds.

    A manifest from disk is hashed as written, so that any edit shows (it holds no secret);
    a self-contained one by its content with the secrets' values left out, which are hashed
    with this process's key instead."""
    if wire:
        content = _plain(doc.data)
        content["secrets"] = sorted(content.get("secrets") or {})
        h = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode())
    else:
        h = hashlib.sha256(doc.raw)
    for path, data in reads.files:
        h.update(b"\0" + str(path).encode() + b"\0" + hashlib.sha256(data).digest())
    for name, secret in sorted(secrets.items()):
        mark = (b"withheld" if secret.value is None
                else hmac.new(_KEY, secret.value, hashlib.sha256).digest())
        h.update(b"\0secret\0" + name.encode() + b"\0" + mark)
    return h.hexdigest()


def _plain(value: Any) -> Any:
    """`value` with every mapping key made a string, so that it sorts as JSON."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
