"""cloudd's AppScale layout rules give the verdict, and the reason, of appscale-tools 3.8.1's
own parser (`NodeLayout`, loaded by conftest.py) on every layout cloudd can write and on
layouts the tools refuse."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudd.config.catalog import LayoutNode
from cloudd.providers.appscale import layout
from cloudd.providers.appscale.spec import ROLES, AppScaleSettings

H, W1, W2, W3 = "192.0.2.30", "192.0.2.33", "192.0.2.34", "192.0.2.35"
#: Every role a manifest may give a node, in the type's order.
MANIFEST_ROLES = tuple(r.name for r in ROLES)


def sets(*entries: tuple[list[str], list[str]]) -> list[dict[str, Any]]:
    return [{"roles": roles, "nodes": nodes} for roles, nodes in entries]


def ours(ips: list[dict[str, Any]], replication: int | None = None) -> str | None:
    return layout.check([layout.NodeSet(tuple(s["roles"]), tuple(s["nodes"])) for s in ips],
                        replication=replication)


def same(a: str | None, b: str | None) -> bool:
    """One verdict: the same sentence, where the tools list a node's unknown roles in the
    order of a Python set (so in any order)."""
    if a is None or b is None or not a.startswith("Invalid role: "):
        return a == b
    return sorted(a.split(",")) == sorted(b.split(","))


#: The thesis's default deployment (one head, two workers), in the roles appscale-tools
#: 3.8.1 gives its own default cluster layout (`NodeLayout.generate_cloud_layout`).
THESIS_DEFAULT = (LayoutNode(H, ("zookeeper", "database", "master", "taskqueue", "memcache")),
                  LayoutNode(W1, ("database", "taskqueue", "memcache", "compute")),
                  LayoutNode(W2, ("database", "taskqueue", "memcache", "compute")))
#: The thesis's custom deployment: master, database, zookeeper and memcache on one VM,
#: compute on two.
THESIS_CUSTOM = (LayoutNode(H, ("zookeeper", "database", "master", "memcache")),
                 LayoutNode(W1, ("compute",)), LayoutNode(W2, ("compute",)))

ACCEPTED = {
    "the tools' own single-node example": (sets((["master", "compute", "database",
                                                  "zookeeper"], [H])), None),
    "one address in several sets": (sets((["master"], [H]), (["database"], [H, W1]),
                                         (["compute"], [W1])), None),
    "appengine, the old name of compute": (sets((["master", "database"], [H]),
                                                (["appengine"], [W1, W2])), None),
    "appengine and compute on one node": (sets((["master", "database", "appengine",
                                                 "compute"], [H])), None),
    "every optional role": (sets((["master", "database", "zookeeper"], [H]),
                                 (["compute", "memcache", "taskqueue", "search", "search2",
                                   "load_balancer"], [W1]), (["open"], [W2])), None),
    "replication up to the databases": (sets((["master", "database"], [H]),
                                             (["compute", "database"], [W1, W2, W3])), 4),
}

REFUSED = {
    "no database": (sets((["master", "compute"], [H])), None,
                    "At least one database node must be provided."),
    "no compute": (sets((["master", "database", "zookeeper"], [H])), None,
                   "Need to specify at least one compute node."),
    "no master": (sets((["database", "compute"], [H])), None,
                  "Need to specify one master node."),
    "two masters": (sets((["master", "database"], [H]), (["master", "compute"], [W1])), None,
                    "Only one master is allowed."),
    "a master set of two": (sets((["master", "database", "compute"], [H, W1])), None,
                            "Only one master is allowed."),
    "login, a role of older AppScale": (sets((["master", "database", "compute"], [H]),
                                             (["login"], [W1])), None, "Invalid role: login"),
    "the simple form's controller": (sets((["controller"], [H])), None,
                                     "Invalid role: controller"),
    "one address twice in a set": (sets((["master", "database"], [H]),
                                        (["compute"], [W1, W1])), None,
                                   "Cannot specify the same IP address more than once."),
    "replication beyond the databases": (sets((["master", "database", "compute"], [H])), 2,
                                         "Replication factor cannot exceed # of databases."),
    "replication of 5 on 4 databases": (sets((["master", "database"], [H]),
                                              (["compute", "database"], [W1, W2, W3])), 5,
                                        "Replication factor cannot exceed # of databases."),
    "an IPv6 address": (sets((["master", "database", "compute"], ["2001:db8::1"])), None,
                        "IP: 2001:db8::1 does not match ip or node-id formats."),
    "a cloud node id": (sets((["master", "database"], [H]), (["compute"], ["node-1"])), None,
                        "Role(s) ['compute']: using node-id format is not supported with the "
                        "ips_layout format being used. Please specify an integer or an ip "
                        "address."),
    "a set without nodes": (sets((["master", "database"], [H]), (["compute"], [])), None,
                            "Node amount cannot be zero for role(s) ['compute']."),
    "no sets at all": ([], None, "Node layout format was not recognized."),
}


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_both_accept(appscale_parser: Any, name: str) -> None:
    ips, replication = ACCEPTED[name]
    assert appscale_parser.verdict(ips, replication) is None
    assert ours(ips, replication) is None


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_both_refuse_with_the_tools_sentence(appscale_parser: Any, name: str) -> None:
    ips, replication, reason = REFUSED[name]
    assert appscale_parser.verdict(ips, replication) == reason
    assert ours(ips, replication) == reason


@pytest.mark.parametrize("nodes", [THESIS_DEFAULT, THESIS_CUSTOM], ids=["default", "custom"])
def test_the_thesis_layouts_are_written_as_the_tools_take_them(
        appscale_parser: Any, nodes: tuple[LayoutNode, ...]) -> None:
    written = [s.as_yaml() for s in layout.ips_layout(nodes)]
    assert written[1:] == [{"roles": list(nodes[1].roles), "nodes": [W1, W2]}]
    appscale_parser.warned.clear()
    assert appscale_parser.verdict(written) is None
    assert appscale_parser.warned == []  # nothing deprecated
    assert layout.layout_check(AppScaleSettings(admin_password_ref="a"), nodes) is None


def test_the_hook_says_whose_rule_refused(appscale_parser: Any) -> None:
    nodes = (LayoutNode(H, ("database", "master")),)
    reason = appscale_parser.verdict([s.as_yaml() for s in layout.ips_layout(nodes)])
    assert reason == "Need to specify at least one compute node."
    assert layout.layout_check(AppScaleSettings(admin_password_ref="a"), nodes) == (
        "AppScale (appscale-tools 3.8.1) refuses this layout: Need to specify at least one "
        "compute node.")
    two = AppScaleSettings(admin_password_ref="a", replication=2)
    assert layout.layout_check(two, (LayoutNode(H, ("database", "master", "compute")),)) == (
        "AppScale (appscale-tools 3.8.1) refuses this layout: Replication factor cannot "
        "exceed # of databases.")


def test_appengine_is_written_as_compute(appscale_parser: Any) -> None:
    nodes = (LayoutNode(H, ("database", "master")), LayoutNode(W1, ("compute", "appengine")),
             LayoutNode(W2, ("appengine",)))
    assert layout.ips_layout(nodes) == (layout.NodeSet(("database", "master"), (H,)),
                                        layout.NodeSet(("compute",), (W1, W2)))


def test_roles_the_controller_assigns_itself_are_refused_here_only(appscale_parser: Any) -> None:
    """A deliberate difference (layout.py's docstring): no manifest can name these."""
    ips = sets((["master", "database", "compute", "db_master"], [H]))
    assert appscale_parser.verdict(ips) is None
    assert ours(ips) == "Invalid role: db_master"


ROLE_SETS = [c for n in range(1, len(MANIFEST_ROLES) + 1)
             for c in itertools.combinations(MANIFEST_ROLES, n)]


def test_every_role_set_a_node_may_hold(appscale_parser: Any) -> None:
    """Each of the 2047 role sets on a node of its own, and as the workers beside a head."""
    head = LayoutNode(H, ("zookeeper", "database", "master"))
    accepted = 0
    for roles in ROLE_SETS:
        workers = (LayoutNode(W1, roles), LayoutNode(W2, roles))
        for nodes in ((LayoutNode(H, roles),), (head, *workers)):
            written = [s.as_yaml() for s in layout.ips_layout(nodes)]
            theirs = appscale_parser.verdict(written)
            assert same(theirs, ours(written)), (nodes, theirs)
            accepted += theirs is None
    # Alone, a node is a deployment when it holds master, database and compute (or its old
    # name appengine), whatever else: 3 * 2**7. Beside the head, workers need compute (or
    # appengine) and no master: 2**10 - 2**8.
    assert accepted == 3 * 2**7 + 2**10 - 2**8


ADDRESSES = (H, W1, W2, W3, "2001:db8::1", "node-3", "10.0.0.1")
ROLE_NAMES = (*layout.ROLES, "login", "controller", "servers", "shadow", "db_master")


@st.composite
def list_forms(draw: st.DrawFn) -> tuple[list[dict[str, Any]], int | None]:
    entries = draw(st.lists(st.tuples(
        st.lists(st.sampled_from(ROLE_NAMES), min_size=0, max_size=4),
        st.lists(st.sampled_from(ADDRESSES), min_size=0, max_size=3)), max_size=5))
    replication = draw(st.none() | st.integers(min_value=1, max_value=5))
    return sets(*entries), replication


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(list_forms())
def test_any_list_form_gets_the_tools_verdict(appscale_parser: Any,
                                               drawn: tuple[list[dict[str, Any]], int | None]
                                               ) -> None:
    ips, replication = drawn
    if any(r in ("shadow", "db_master") for s in ips for r in s["roles"]):
        # the tools take these (and fail with an AttributeError on `shadow` alone): see
        # test_roles_the_controller_assigns_itself_are_refused_here_only
        assert ours(ips, replication) is not None
        return
    assert same(appscale_parser.verdict(ips, replication), ours(ips, replication))


@st.composite
def clouds(draw: st.DrawFn) -> tuple[tuple[LayoutNode, ...], int | None]:
    """What a manifest can declare: distinct IPv4 addresses, each with a set of the type's
    roles (one node per address)."""
    count = draw(st.integers(min_value=1, max_value=6))
    nodes = tuple(LayoutNode(f"192.0.2.{10 + i}", tuple(draw(st.sets(
        st.sampled_from(MANIFEST_ROLES), min_size=1, max_size=5)))) for i in range(count))
    return nodes, draw(st.none() | st.integers(min_value=1, max_value=4))


@settings(max_examples=600, deadline=None)
@given(clouds())
def test_any_cloud_gets_the_tools_verdict(appscale_parser: Any,
                                          drawn: tuple[tuple[LayoutNode, ...], int | None]) -> None:
    nodes, replication = drawn
    written = [s.as_yaml() for s in layout.ips_layout(nodes)]
    theirs = appscale_parser.verdict(written, replication)
    hook = layout.layout_check(AppScaleSettings(admin_password_ref="a",
                                                replication=replication), nodes)
    assert same(theirs, None if hook is None else hook.removeprefix(layout.PREFIX))
