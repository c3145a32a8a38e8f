"""The inputs of one image build, and the content keys the cache names its files by.

An image is reproducible in the sense that the same inputs give the same package set with
its versions recorded beside it (not bit for bit). Its key therefore hashes what decides its
content: the suite, the apt sources, the package set (`TreeRecipe`, the root tree mmdebstrap
makes, cached on its own so that a new agent does not download Debian again), then the agent's
wheels and what the build writes into the tree, its unit among them (`Recipe`). A second
build with the same inputs finds its files by name and returns at once. TORQUE, built from
source outside the package set, enters the key by its build's stamp (the tarball's sha256 and
the build script's version), or as absent.

Pure: text in, text and numbers out.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

#: Bump when the tree stage makes a different tree from the same inputs.
TREE_FORMAT = 1
#: Bump when the later stages (agent, torque, configure, filesystem) write something different.
IMAGE_FORMAT = 2
#: The sources used when this machine's apt names no mirror for the suite.
FALLBACK_MIRROR = "http://deb.debian.org/debian"
#: Room left free in the filesystem for what a node writes (a database, logs): at least this,
#: or a quarter of the tree if that is more. qcow2 stores only what is written.
MIN_FREE_BYTES = 2 << 30
#: Filesystem sizes are rounded up to this.
SIZE_STEP = 256 << 20


def _digest(value: object) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TreeRecipe:
    """What the root tree is made from."""

    kind: str
    suite: str
    #: one-line apt sources, "deb URI SUITE COMPONENT..."
    mirrors: tuple[str, ...]
    packages: tuple[str, ...]

    @property
    def key(self) -> str:
        return _digest({"format": TREE_FORMAT, "suite": self.suite,
                        "mirrors": list(self.mirrors), "packages": sorted(self.packages)})

    @property
    def name(self) -> str:
        return f"tree-{self.kind}-{self.key}"


@dataclass(frozen=True)
class Recipe:
    """What the image is made from: its tree, the agent's wheels, and what the build changes
    in the tree (the unit among them)."""

    tree: TreeRecipe
    #: `wheels_digest` of the wheels installed into the agent's virtualenv
    wheels: str
    #: `text_digest` of the changes made to the tree (`rootfs.changes`, as text)
    changes: str
    #: the stamp of the TORQUE build copied in (`torque.TorquePayload.stamp`); empty: none
    torque: str = ""

    @property
    def key(self) -> str:
        return _digest({"format": IMAGE_FORMAT, "tree": self.tree.key, "wheels": self.wheels,
                        "changes": self.changes, "torque": self.torque})

    @property
    def name(self) -> str:
        return f"node-{self.tree.kind}-{self.key}"


def wheels_digest(wheels: Iterable[tuple[str, str]]) -> str:
    """One digest for (file name, sha256 of its bytes) pairs, in any order."""
    lines = sorted(f"{name} {sha}" for name, sha in wheels)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def filesystem_bytes(tree_bytes: int) -> int:
    """The ext4 filesystem's size for a tree of `tree_bytes`: the tree plus room to write."""
    want = tree_bytes + max(tree_bytes // 4, MIN_FREE_BYTES)
    return -(-want // SIZE_STEP) * SIZE_STEP


# -- this machine's apt sources ----------------------------------------------------------------

def _suites(suite: str) -> tuple[str, ...]:
    return (suite, f"{suite}-updates", f"{suite}-security")


def _one_line(text: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """(uri, suite, components) of each `deb` line of a sources.list."""
    found = []
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):  # options: [arch=amd64 signed-by=...]
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 3:
            found.append((words[0], words[1], tuple(words[2:])))
    return found


def _deb822(text: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """(uri, suite, components) of each enabled `deb` stanza of a .sources file."""
    found = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            if line[0].isspace() and key:
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        components = tuple(fields.get("components", "").split())
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                found.append((uri, suite, components))
    return found


def mirrors_from_sources(texts: Iterable[tuple[str, str]], *, suite: str) -> tuple[str, ...]:
    """The one-line sources for `suite`, its -updates and -security, from (file name, text)
    pairs of /etc/apt/sources.list and sources.list.d; other repositories are left out (the
    image must hold Debian's packages only). Empty when none names the suite."""
    wanted = _suites(suite)
    entries: list[tuple[str, str, tuple[str, ...]]] = []
    for name, text in texts:
        entries += _deb822(text) if name.endswith(".sources") else _one_line(text)
    lines: list[str] = []
    for want in wanted:
        for uri, got, components in entries:
            line = " ".join(("deb", uri.rstrip("/"), got, *(components or ("main",))))
            if got == want and line not in lines:
                lines.append(line)
    return tuple(lines)


def fallback_mirrors(suite: str) -> tuple[str, ...]:
    """Debian's own redirector, when this machine's apt names no mirror for `suite`."""
    return (f"deb {FALLBACK_MIRROR} {suite} main",
            f"deb {FALLBACK_MIRROR} {suite}-updates main",
            f"deb {FALLBACK_MIRROR}-security {suite}-security main")
