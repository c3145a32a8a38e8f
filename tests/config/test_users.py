"""`users:`: the submitting users every node has with the same ids, one placed refusal per
mistake; and the same rules for a list a node is sent."""

from __future__ import annotations

from pathlib import Path

import pytest
from shared.manifests import SHOP

from cloudd.config.manifest import load_cloud, load_cloud_text
from cloudd.config.portable import Recipient, text_for
from cloudd.config.users import User, refusal
from cloudd.errors import ConfigError
from cloudd.providers.catalog import CATALOG


def write(tmp_path: Path, extra: str) -> Path:
    (tmp_path / "web.xml").write_text("<domain/>")
    path = tmp_path / "shop.yaml"
    path.write_text(SHOP + extra)
    return path


def problems(tmp_path: Path, extra: str) -> list[str]:
    path = write(tmp_path, extra)
    with pytest.raises(ConfigError) as info:
        load_cloud(path, CATALOG)
    return [str(p).removeprefix(f"{path}:") for p in info.value.problems]


def test_users_with_their_defaults_reach_every_recipient(tmp_path: Path) -> None:
    cloud = load_cloud(write(tmp_path, (
        "users:\n"
        "  - {name: alice, uid: 1001}\n"
        "  - {name: bob, uid: 1002, gid: 2000, groups: [users, video]}\n")), CATALOG)
    assert cloud.users == (User("alice", 1001, 1001), User("bob", 1002, 2000,
                                                          ("users", "video")))
    for recipient in Recipient:  # not secret: a node's view has them too
        assert load_cloud_text(text_for(cloud, recipient), CATALOG).users == cloud.users


def test_no_users_is_the_default(tmp_path: Path) -> None:
    assert load_cloud(write(tmp_path, ""), CATALOG).users == ()


@pytest.mark.parametrize(("extra", "expected"), [
    ("users: [{name: Alice, uid: 1001}]",
     "15:16: users[0].name: 'Alice' is not a user or group name (lowercase letters, digits, "
     "'_' and '-', at most 32, starting with a letter or '_')"),
    ("users: [{name: -o, uid: 1001}]", "15:16: users[0].name: '-o' is not a user or group name"),
    ("users: [{name: a, uid: 999}]",
     "15:24: users[0].uid: should be greater than or equal to 1000, not 999"),
    ("users: [{name: a, uid: 60000}]",
     "15:24: users[0].uid: should be less than or equal to 59999, not 60000"),
    ("users: [{name: a, uid: 0}]",
     "15:24: users[0].uid: should be greater than or equal to 1000, not 0"),
    ("users: [{name: a, uid: 1001, gid: 100}]",
     "15:35: users[0].gid: should be greater than or equal to 1000, not 100"),
    ("users: [{name: a, uid: '1001'}]", "15:24: users[0].uid: should be a valid integer"),
    ("users: [{name: a, uid: 1001, shell: /bin/zsh}]", "15:30: users[0].shell: unknown field"),
    ("users: [{name: a, uid: 1001, groups: [Wheel]}]",
     "15:39: users[0].groups[0]: 'Wheel' is not a user or group name"),
    ("users: [{uid: 1001}]", "15:9: users[0].name: is required"),
])
def test_one_precise_refusal_per_mistake(tmp_path: Path, extra: str, expected: str) -> None:
    [got] = problems(tmp_path, extra + "\n")
    assert got.startswith(expected)


def test_names_and_uids_are_unique_and_groups_distinct(tmp_path: Path) -> None:
    assert problems(tmp_path, (
        "users:\n"
        "  - {name: alice, uid: 1001}\n"
        "  - {name: alice, uid: 1002}\n"
        "  - {name: bob, uid: 1001, groups: [users, users]}\n")) == [
        "17:12: users[1].name: user alice is listed twice (also users[0])",
        "18:22: users[2].uid: uid 1001 is already given to user alice",
        "18:44: users[2].groups[1]: group users is listed twice for user bob",
    ]


def test_a_shared_primary_group_is_allowed(tmp_path: Path) -> None:
    cloud = load_cloud(write(tmp_path, (
        "users:\n"
        "  - {name: alice, uid: 1001, gid: 3000}\n"
        "  - {name: bob, uid: 1002, gid: 3000}\n")), CATALOG)
    assert {u.gid for u in cloud.users} == {3000}


@pytest.mark.parametrize(("users", "why"), [
    ((User("alice", 1001, 1001), User("bob", 1002, 2000, ("users",))), None),
    ((User("root", 0, 0),), "user root's id 0 is outside 1000 to 59999"),
    ((User("a", 1001, 65534),), "user a's id 65534 is outside"),
    ((User("-a", 1001, 1001),), "user name '-a' is not a user name"),
    ((User("a\n", 1001, 1001),), "user name 'a\\n' is not a user name"),
    ((User("a", 1001, 1001, ("x\n",)),), "user a's groups are not distinct group names"),
    ((User("a", 1001, 1001, ("x,y",)),), "user a's groups are not distinct group names"),
    ((User("a", 1001, 1001, ("x", "x")),), "user a's groups are not distinct group names"),
    ((User("a", 1001, 1001), User("b", 1001, 1001)), "user b or its uid 1001 is listed twice"),
    ((User("a", 1001, 1001), User("a", 1002, 1002)), "user a or its uid 1002 is listed twice"),
])
def test_a_sent_list_is_checked_by_the_same_rules(users: tuple[User, ...],
                                                  why: str | None) -> None:
    got = refusal(users)
    assert got == why if why is None else (got is not None and got.startswith(why))
