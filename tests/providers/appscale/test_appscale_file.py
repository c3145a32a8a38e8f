"""The AppScalefile cloudd writes is one that appscale-tools 3.8.1's `appscale up` (loaded by
conftest.py) takes as it is: no prompt, no rewrite, no refusal, the layout and the
administrator's account as the manifest and its secret say."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudd.config.catalog import LayoutNode
from cloudd.errors import PermanentError
from cloudd.providers.appscale import appscalefile, layout, tools
from cloudd.providers.appscale.spec import AppScaleSettings

H, W1, W2 = "192.0.2.30", "192.0.2.33", "192.0.2.34"


CUSTOM = (LayoutNode(H, ("zookeeper", "database", "master", "memcache")),
          LayoutNode(W1, ("compute",)), LayoutNode(W2, ("appengine",)))
SETTINGS = AppScaleSettings(admin_email="ops@example.org", admin_password_ref="admin",
                            keyname="gae")


def up(parser: Any, folder: Path, text: str) -> Any:
    (folder / appscalefile.NAME).write_text(text)
    return parser.up(folder)


def test_up_takes_the_file_as_written(appscale_parser: Any, tmp_path: Path) -> None:
    text = appscalefile.render(CUSTOM, SETTINGS, password=b"s3cret-pass\n")
    appscale_parser.warned.clear()
    options = up(appscale_parser, tmp_path, text)
    assert (tmp_path / appscalefile.NAME).read_text() == text  # the tools added nothing
    assert appscale_parser.warned == []
    assert (options.admin_user, options.admin_pass) == ("ops@example.org", "s3cret-pass")
    assert (options.keyname, options.group, options.test) == ("gae", "gae", False)
    assert options.replication is None
    assert options.ips == [{"roles": ["zookeeper", "database", "master", "memcache"],
                            "nodes": [H]}, {"roles": ["compute"], "nodes": [W1, W2]}]


def test_replication_is_written_when_set(appscale_parser: Any, tmp_path: Path) -> None:
    nodes = (LayoutNode(H, ("database", "master")), LayoutNode(W1, ("database", "compute")))
    two = dataclasses.replace(SETTINGS, replication=2)
    assert up(appscale_parser, tmp_path, appscalefile.render(
        nodes, two, password=b"s3cret-pass")).replication == 2
    assert "replication" not in yaml.safe_load(appscalefile.render(nodes, SETTINGS,
                                                                   password=b"s3cret-pass"))


def test_the_tools_refuse_test_beside_the_account(appscale_parser: Any, tmp_path: Path) -> None:
    """Why the file never says `test: True`."""
    text = appscalefile.render(CUSTOM, SETTINGS, password=b"s3cret-pass") + "test: True\n"
    with pytest.raises(appscale_parser.bad_configuration,
                       match=r"^Cannot set admin_user, admin_pass, and test\.$"):
        up(appscale_parser, tmp_path, text)


def test_the_tools_rewrite_a_file_without_its_group(appscale_parser: Any,
                                                    tmp_path: Path) -> None:
    """Why the file says `group` as well as `keyname`."""
    text = appscalefile.render(CUSTOM, SETTINGS, password=b"s3cret-pass")
    without = "".join(line for line in text.splitlines(keepends=True)
                      if not line.startswith("group:"))
    up(appscale_parser, tmp_path, without)
    assert (tmp_path / appscalefile.NAME).read_text() != without


def test_no_key_the_tools_call_deprecated(appscale_parser: Any) -> None:
    assert set(appscale_parser.appscale.AppScale.DEPRECATED_ASF_ARGS) == (
        appscalefile.DEPRECATED_KEYS)
    document = yaml.safe_load(appscalefile.render(CUSTOM, SETTINGS, password=b"s3cret-pass"))
    assert not appscalefile.DEPRECATED_KEYS & document.keys()


@pytest.mark.parametrize("password", ["0x1234", "1_000_000", "123456", "null  ", "- item",
                                      "a: b c", "#hash!", "'quoted\"", "\\back\\slash",
                                      "ünïcødé", "%{x}&*!|>"])
def test_a_password_reaches_the_tools_as_given(appscale_parser: Any, tmp_path: Path,
                                               password: str) -> None:
    text = appscalefile.render(CUSTOM, SETTINGS, password=password.encode())
    assert up(appscale_parser, tmp_path, text).admin_pass == password


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=6))
def test_any_printable_password_survives_the_file(password: str) -> None:
    if not password.isprintable():
        return
    text = appscalefile.render(CUSTOM, SETTINGS, password=password.encode())
    assert yaml.safe_load(text)["admin_pass"] == password


@pytest.mark.parametrize(("value", "message"), [
    (b"short", "the AppScale administrator's password has 5 characters; AppScale asks for "
               "at least 6"),
    (b"\xff\xfe-not-text", "the AppScale administrator's password is not UTF-8 text"),
    (b"two\nlines-here", "the AppScale administrator's password must be one line of "
                         "printable text"),
    (b"tab\there-too", "the AppScale administrator's password must be one line of "
                       "printable text"),
])
def test_a_password_the_file_cannot_carry_is_refused(value: bytes, message: str) -> None:
    with pytest.raises(PermanentError) as err:
        appscalefile.render(CUSTOM, SETTINGS, password=value)
    assert str(err.value) == message


def test_a_layout_the_tools_refuse_is_never_written() -> None:
    with pytest.raises(PermanentError) as err:
        appscalefile.render((LayoutNode(H, ("database", "master")),), SETTINGS,
                            password=b"s3cret-pass")
    assert str(err.value) == layout.PREFIX + "Need to specify at least one compute node."


def test_the_driver_finds_nothing_that_would_prompt() -> None:
    text = appscalefile.render(CUSTOM, SETTINGS, password=b"s3cret-pass")
    assert tools.interactive_gaps(text) is None
