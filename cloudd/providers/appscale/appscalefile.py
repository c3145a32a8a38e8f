"""The AppScalefile cloudd writes on the master, from which `appscale up` starts the
deployment without asking anything.

What it holds, and why: `ips_layout` in the advanced list form (the only form the 3.8.1
tools accept); `admin_user` and `admin_pass`, so that `up` creates the administrator's
account instead of prompting for one; `keyname` and `group` both, because the tools append
generated ones to an AppScalefile lacking either (and cloudd owns the file); `replication`
only when the manifest sets it. It never holds `test: True`: the tools' `up` refuses it
together with `admin_user` and `admin_pass` ("Cannot set admin_user, admin_pass, and
test."), and with the two set `up` has no prompt left to skip. Nor any of the keys the tools
call deprecated (`n`, `scp`, `appengine`, `max_memory`, `min`, `max`).

A pure function: the password comes in as the secret's value; writing the file (mode 0600,
it holds the password) is the caller's.
"""

from __future__ import annotations

from collections.abc import Sequence

import yaml

from cloudd.config.catalog import LayoutNode
from cloudd.errors import PermanentError
from cloudd.providers.appscale import layout
from cloudd.providers.appscale.spec import AppScaleSettings

#: The file's name, in the folder the tools are run from.
NAME = "AppScalefile"
#: Keys `appscale up` refuses outright (appscale-tools 3.8.1's DEPRECATED_ASF_ARGS).
DEPRECATED_KEYS = frozenset({"n", "scp", "appengine", "max_memory", "min", "max"})
#: The tools' own shortest password (their prompt refuses shorter ones).
MIN_PASSWORD = 6

_HEADER = ("# The AppScale tools' configuration for this deployment, written by cloudd from\n"
           "# the cloud's manifest: edits here are overwritten.\n")


def admin_password(value: bytes) -> str:
    """The administrator's password held in a secret: one line of UTF-8 text (a final line
    break, as an editor leaves, is not part of it), at least as long as the tools ask."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise PermanentError("the AppScale administrator's password is not UTF-8 text") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text.isprintable():
        raise PermanentError("the AppScale administrator's password must be one line of "
                             "printable text")
    if len(text) < MIN_PASSWORD:
        raise PermanentError(f"the AppScale administrator's password has {len(text)} "
                             f"characters; AppScale asks for at least {MIN_PASSWORD}")
    return text


def render(nodes: Sequence[LayoutNode], settings: AppScaleSettings, *,
           password: bytes) -> str:
    """The AppScalefile of a deployment of these nodes (in manifest order), with the
    administrator's password `password` (the secret's bytes). Raises PermanentError when the
    tools would refuse the layout or the password."""
    sets = layout.ips_layout(nodes)
    problem = layout.check(sets, replication=settings.replication)
    if problem is not None:
        raise PermanentError(layout.PREFIX + problem)
    document: dict[str, object] = {
        "ips_layout": [s.as_yaml() for s in sets],
        "admin_user": settings.admin_email,
        "admin_pass": admin_password(password),
        "keyname": settings.keyname,
        "group": settings.keyname,
    }
    if settings.replication is not None:
        document["replication"] = settings.replication
    assert not DEPRECATED_KEYS & document.keys()
    body = yaml.safe_dump(document, sort_keys=False, default_flow_style=None, width=1 << 16)
    return _HEADER + body
