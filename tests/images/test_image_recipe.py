"""Content keys, filesystem sizes, and the mirrors read from this machine's apt sources."""

from __future__ import annotations

import dataclasses

import pytest

from cloudd.images.recipe import (
    Recipe,
    TreeRecipe,
    fallback_mirrors,
    filesystem_bytes,
    mirrors_from_sources,
    text_digest,
    wheels_digest,
)

GIB = 1 << 30
MIB = 1 << 20
TREE = TreeRecipe("web", "bookworm", ("deb http://deb.debian.org/debian bookworm main",),
                  ("cloud-init", "nginx", "systemd"))
RECIPE = Recipe(TREE, wheels=wheels_digest([("cloudd-0.1.0-py3-none-any.whl", "ab")]),
                changes=text_digest("unit"))


def test_names_carry_the_type_and_a_key_of_sixteen_hex_digits() -> None:
    assert TREE.name == f"tree-web-{TREE.key}" and len(TREE.key) == 16
    assert RECIPE.name == f"node-web-{RECIPE.key}" and len(RECIPE.key) == 16
    int(RECIPE.key, 16)


def test_the_same_inputs_give_the_same_key_whatever_the_package_order() -> None:
    again = dataclasses.replace(TREE, packages=("systemd", "nginx", "cloud-init"))
    assert again.key == TREE.key
    assert Recipe(again, wheels=RECIPE.wheels, changes=RECIPE.changes).key == RECIPE.key


@pytest.mark.parametrize("tree", [
    dataclasses.replace(TREE, suite="trixie"),
    dataclasses.replace(TREE, packages=(*TREE.packages, "mariadb-server")),
    dataclasses.replace(TREE, mirrors=("deb http://mirror.example/debian bookworm main",)),
])
def test_a_different_tree_input_gives_a_different_tree_and_image(tree: TreeRecipe) -> None:
    assert tree.key != TREE.key
    assert dataclasses.replace(RECIPE, tree=tree).key != RECIPE.key


@pytest.mark.parametrize("change", [
    {"wheels": wheels_digest([("cloudd-0.1.0-py3-none-any.whl", "cd")])},
    {"changes": text_digest("another unit")},
])
def test_new_wheels_or_changes_give_a_new_image_on_the_same_tree(change: dict[str, str]) -> None:
    other = dataclasses.replace(RECIPE, **change)
    assert other.key != RECIPE.key and other.tree.key == RECIPE.tree.key


def test_the_wheels_digest_ignores_order_but_not_names_or_contents() -> None:
    pairs = [("a.whl", "1"), ("b.whl", "2")]
    assert wheels_digest(pairs) == wheels_digest(reversed(pairs))
    assert wheels_digest(pairs) != wheels_digest([("a.whl", "1"), ("b.whl", "3")])
    assert wheels_digest(pairs) != wheels_digest([("a.whl", "1"), ("c.whl", "2")])


@pytest.mark.parametrize(("tree", "size"), [
    (0, 2 * GIB),
    (821 * MIB, 3 * GIB),                     # the web image: 2 GiB free, rounded up
    (8 * GIB, 10 * GIB),                      # a quarter of the tree once that is more
    (2 * GIB + 1, 4 * GIB + 256 * MIB),       # rounded up to 256 MiB
])
def test_the_filesystem_leaves_room_to_write(tree: int, size: int) -> None:
    assert filesystem_bytes(tree) == size


# This machine's sources, as Debian 12 writes them, with two other vendors' repositories.
DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
NODESOURCE = """\
Types: deb
URIs: https://deb.nodesource.com/node_20.x
Suites: nodistro
Components: main
"""
DEBIAN_LINES = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)


@pytest.mark.parametrize(("files", "expected"), [
    ([("debian.sources", DEB822), ("nodesource.sources", NODESOURCE),
      ("google.list", "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n")],
     DEBIAN_LINES),
    # one-line format, options, comments, deb-src and a trailing slash
    ([("sources.list", "# local mirror\n"
       "deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian/ bookworm main contrib\n"
       "deb-src http://m.example/debian bookworm main\n"
       "deb http://m.example/debian-security bookworm-security main # security\n")],
     ("deb http://m.example/debian bookworm main contrib",
      "deb http://m.example/debian-security bookworm-security main")),
    # a disabled stanza and a stanza of sources only
    ([("a.sources", DEB822.replace("Types: deb\n#", "Types: deb\nEnabled: no\n#", 1)
       .replace("Types: deb\nURIs: http://deb.debian.org/debian-security",
                "Types: deb-src\nURIs: http://deb.debian.org/debian-security"))],
     ()),
    ([("sources.list", "deb http://deb.debian.org/debian trixie main\n")], ()),
])
def test_the_mirrors_are_debian_s_entries_for_the_suite_in_suite_order(
        files: list[tuple[str, str]], expected: tuple[str, ...]) -> None:
    assert mirrors_from_sources(files, suite="bookworm") == expected


def test_the_fallback_is_debian_s_own_redirector() -> None:
    assert fallback_mirrors("bookworm") == DEBIAN_LINES
