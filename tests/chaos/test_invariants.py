"""The soak's invariant checkers on made-up observations: each finds its breach, and only it."""

from __future__ import annotations

from cloudd_lab.chaos import invariants as inv


def test_two_members_acting_in_one_term_is_a_breach_whichever_way_it_is_seen() -> None:
    leaders = inv.Leaders()
    assert leaders.observe_status({"pm1": {"acting": True, "term": 3},
                                   "pm2": {"acting": False, "term": 3}, "pm3": None}) == []
    assert leaders.observe_status({"pm1": {"acting": True, "term": 3}}) == []
    assert leaders.observe_status({"pm2": {"acting": True, "term": 4}}) == []
    found = leaders.observe_log("pm3", [
        {"event": "election_acting", "term": 4, "reason": "no: lease lost"},
        {"event": "election_acting", "term": 3, "reason": "yes: a majority granted",
         "timestamp": "T"}])
    assert [b.invariant for b in found] == ["one_leader_per_term"]
    assert "pm1 (status) and pm3 (log at T) both acted in term 3" in found[0].detail


def test_two_acting_in_one_status_round_is_a_breach() -> None:
    found = inv.Leaders().observe_status({"pm1": {"acting": True, "term": 7},
                                          "pm2": {"acting": True, "term": 7}})
    assert len(found) == 1 and "term 7" in found[0].detail


def test_singles_flag_only_what_more_than_one_process_serves() -> None:
    found = inv.observe_singles({"lab-server-1/cloudd": 1, "lab-server-1/ruby": 0,
                                 "lab-database-1/mariadbd": 2})
    assert [b.detail for b in found] == ["2 processes serve lab-database-1/mariadbd"]


def test_a_foreign_domain_changed_started_or_gone_is_a_breach() -> None:
    dom = inv.Untouched("f", "<domain/>", "shut off")
    assert dom.observe("<domain/>", "shut off") == []
    assert len(dom.observe("<domain><x/></domain>", "running")) == 2
    assert dom.observe(None, None)[0].detail == "domain f is gone"


def test_a_read_missing_a_write_acknowledged_before_it_began_is_a_breach() -> None:
    ledger = inv.Ledger()
    ledger.acknowledged("a", sent=1.0, at=1.5)
    ledger.acknowledged("b", sent=2.0, at=3.0)
    assert ledger.observe_read(["a", "b", "unacknowledged"], started=4.0) == []
    # b was acknowledged after the read began: the read may miss it
    assert ledger.observe_read(["a"], started=2.5) == []
    found = ledger.observe_read(["b"], started=4.0)
    assert found[0].invariant == "no_acknowledged_write_lost"
    assert "1 acknowledged writes missing" in found[0].detail and "a (acknowledged" in \
        found[0].detail


def test_only_an_unsignalled_exit_is_a_breach() -> None:
    found = inv.Exits().observe({"pm1": (None, False), "pm2": (-9, True), "pm3": (1, False)})
    assert [b.detail for b in found] == ["agent pm3 exited with 1, unsignalled"]


def test_convergence_names_what_differs_from_the_manifest() -> None:
    nodes = ["lab-server-1", "lab-database-1"]
    assert inv.reasons(None, nodes=nodes, agents={"pm1": True}) == [
        "no single acting leader followed by every agent"]
    view = {"nodes": {"lab-server-1": {"phase": "ready"},
                      "lab-database-1": {"phase": "starting"}}}
    assert inv.reasons(view, nodes=nodes, agents={"pm1": True, "pm2": False}) == [
        "agent pm2 is not running", "node lab-database-1 is starting"]
    view["nodes"]["lab-database-1"]["phase"] = "ready"
    assert inv.reasons(view, nodes=[*nodes, "lab-balancer-1"], agents={"pm1": True}) == [
        "node lab-balancer-1 is unknown to the leader"]
    assert inv.reasons(view, nodes=nodes, agents={"pm1": True}) == []


def test_two_running_domains_for_one_node_or_two_qemus_for_one_domain_is_a_breach() -> None:
    assert inv.observe_domains({"lab-server-1": ["c-lab-server-1"], "lab-balancer-1": []},
                               {"c-lab-server-1": [41]}) == []
    found = inv.observe_domains({"lab-server-1": ["c-lab-server-1", "d-lab-server-1"]},
                                {"c-lab-balancer-1": [52, 7]})
    assert [b.invariant for b in found] == ["one_running_domain_per_node"] * 2
    assert [b.detail for b in found] == [
        "2 running domains for node lab-server-1: c-lab-server-1, d-lab-server-1",
        "2 qemu processes run domain c-lab-balancer-1: 7, 52"]


def test_a_vm_node_converges_with_exactly_one_running_domain() -> None:
    view = {"nodes": {"lab-server-1": {"phase": "ready"}, "lab-database-1": {"phase": "ready"}}}
    nodes, agents = ["lab-server-1", "lab-database-1"], {"pm1": True, "lab-database-1": True}
    assert inv.reasons(view, nodes=nodes, agents=agents,
                       domains={"lab-server-1": ["c-lab-server-1"]},
                       vms=["lab-server-1"]) == []
    assert inv.reasons(view, nodes=nodes, agents=agents, domains={},
                       vms=["lab-server-1"]) == ["node lab-server-1 runs 0 domains"]
    assert inv.reasons(view, nodes=nodes, agents=agents, domains=None,
                       vms=["lab-server-1"]) == ["libvirt did not answer"]
