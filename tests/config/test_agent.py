"""Agent settings: defaults, profiles, overrides, and one sentence per nonsense."""

from __future__ import annotations

import ast
import itertools
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

from cloudd.config import agent
from cloudd.config.agent import (
    DEFAULT_PORT,
    LOCAL,
    AgentSettings,
    TransportSettings,
    load_agent,
)
from cloudd.daemon.member.clouds import timing_for
from cloudd.errors import ConfigError


def settings(tmp_path: Path, text: str) -> AgentSettings:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return load_agent(path)


def refusal(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        settings(tmp_path, text)
    return [str(p).removeprefix(f"{tmp_path / 'agent.yaml'}:") for p in info.value.problems]


def test_production_defaults(tmp_path: Path) -> None:
    s = settings(tmp_path, "name: pm1\n")
    assert s.profile == "production"
    assert (s.listen.address, s.listen.port) == ("0.0.0.0", DEFAULT_PORT)
    assert s.pki.ca == Path("/etc/cloudd/pki/ca.pem")
    assert s.libvirt.uri == "qemu:///system"
    assert s.state_dir == Path("/var/lib/cloudd")
    assert s.manifest_dir == Path("/etc/cloudd")
    assert s.api_socket == Path("/run/cloudd/cloudd.sock")
    assert not s.metrics.enabled
    assert (s.membership.probe_interval, s.membership.probe_timeout) == (0.2, 0.04)
    assert s.election.lease == 0.8
    assert s.reconcile.backoff_max == 300.0


def test_local_profile_is_fast_and_explicit_values_win(tmp_path: Path) -> None:
    s = settings(tmp_path, "name: n1\nprofile: local\nmembership: {indirect_probes: 5}\n"
                           "reconcile: {backoff_max: 9}\nlibvirt: {uri: null}\n")
    assert s.reconcile.resync_interval == LOCAL["reconcile"]["resync_interval"]
    assert s.reconcile.backoff_max == 9
    assert s.membership.indirect_probes == 5
    assert s.supervisor.start_grace == LOCAL["supervisor"]["start_grace"]
    assert s.libvirt.uri is None


def attribute_docstrings() -> dict[str, set[str]]:
    """Class name -> its fields that a docstring follows, read from the module's source."""
    tree = ast.parse(Path(agent.__file__).read_text())
    out: dict[str, set[str]] = {}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        body = cls.body
        out[cls.name] = {
            stmt.target.id for stmt, after in itertools.pairwise(body)
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
            and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str) and after.value.value.strip()}
    return out


def test_every_field_of_every_group_is_documented() -> None:
    groups = {f.name: f.type for f in fields(AgentSettings)
              if f.type in vars(agent) and is_dataclass(vars(agent)[f.type])}
    assert {"membership", "election", "reconcile", "supervisor", "transport",
            "events"} <= set(groups)
    documented = attribute_docstrings()
    for group, model in groups.items():
        for f in fields(vars(agent)[model]):
            assert f.name in documented[model], f"{group}.{f.name} has no docstring"


def test_transport_and_events_are_set_from_the_file(tmp_path: Path) -> None:
    s = settings(tmp_path, "name: pm1\ntransport: {backoff_max: 2, handshake_timeout: 1.5}\n"
                           "events: {retention: 864000, max_rows: 1000}\n")
    assert (s.transport.backoff_max, s.transport.handshake_timeout) == (2.0, 1.5)
    assert s.transport.request_timeout == 10.0  # the rest keeps its default
    assert (s.events.retention, s.events.max_rows) == (864000.0, 1000)
    local = settings(tmp_path, "name: n1\nprofile: local\n")
    assert local.events.max_rows == LOCAL["events"]["max_rows"]
    assert local.transport == TransportSettings()  # the same bounds in both profiles


def test_membership_and_election_reach_the_election_core(tmp_path: Path) -> None:
    s = settings(tmp_path, "name: pm1\n"
                           "membership: {probe_interval: 0.2, probe_timeout: 0.05, "
                           "indirect_probes: 5, suspicion_mult: 4, "
                           "node_probe_timeout: 2.5, node_suspicion: 30}\n"
                           "election: {answer_timeout: 0.3, coordinator_timeout: 2.5, "
                           "lease: 0.8, no_quorum: freeze}\n")
    t = timing_for(s)
    assert (t.probe_interval, t.probe_timeout, t.indirect_checks, t.suspicion_mult) == (
        0.2, 0.05, 5, 4.0)
    assert (t.node_probe_timeout, t.node_suspicion) == (2.5, 30.0)
    assert (t.answer_timeout, t.coordinator_timeout, t.no_quorum) == (0.3, 2.5, "freeze")
    assert (t.lease_duration, t.renew_interval) == (0.8, 0.2)
    default = timing_for(settings(tmp_path, "name: pm1\n"))
    assert (default.probe_interval, default.lease_duration, default.no_quorum) == (
        0.2, 0.8, "stop")
    # nodes (slow guests) get more patience than hosts, in both profiles
    assert (default.node_probe_timeout, default.node_suspicion) == (1.0, 10.0)
    local = timing_for(settings(tmp_path, "name: pm1\nprofile: local\n"))
    assert (local.node_probe_timeout, local.node_suspicion) == (1.0, 10.0)


@pytest.mark.parametrize(("text", "expected"), [
    ("name: pm1\nmembership: {probe_timeout: 2}\n",
     "2:29: membership.probe_timeout: 2.0 s must be shorter than membership.probe_interval "
     "(0.2 s): a probe must end before the next one starts"),
    ("name: pm1\nmembership: {node_probe_timeout: 0.01}\n",
     "2:34: membership.node_probe_timeout: 0.01 s must not be shorter than "
     "membership.probe_timeout (0.04 s): a node is never given less time to answer than a "
     "host"),
    ("name: pm1\nmembership: {node_suspicion: 0.1}\n",
     "2:30: membership.node_suspicion: 0.1 s must not be shorter than a host's shortest "
     "suspicion (membership.suspicion_mult * membership.probe_interval = 0.4 s)"),
    ("name: pm1\nmembership: {node_suspicion: 0}\n",
     "2:30: membership.node_suspicion: should be greater than 0, not 0"),
    ("name: pm1\nelection: {answer_timeout: 3, coordinator_timeout: 2}\n",
     "2:28: election.answer_timeout: 3.0 s must be shorter than election.coordinator_timeout "
     "(2.0 s)"),
    ("name: pm1\nreconcile: {backoff_base: 500}\n",
     "2:27: reconcile.backoff_base: 500.0 s must not exceed reconcile.backoff_max (300.0 s)"),
    ("name: pm1\nlisten: {port: 70000}\n",
     "2:16: listen.port: should be less than or equal to 65535, not 70000"),
    ("name: pm1\nlisten: {address: localhost}\n",
     "2:19: listen.address: 'localhost' is not an IP address"),
    ("name: pm1\nprofile: fast\n",
     "2:10: profile: should be 'production' or 'local', not 'fast'"),
    ("name: pm1\nmembrship: {}\n", "2:1: membrship: unknown field"),
    ("profile: local\n", "1:1: name: is required"),
    ("name: pm1\nkind: Cloud\n", "2:7: kind: should be 'Agent', not 'Cloud'"),
    ("name: pm1\npki: {key_passphrase: hunter2}\n",
     "2:23: pki.key_passphrase: looks like a secret written inline ('key_passphrase'); put it "
     "in a file and reference it as secrets: {NAME: {file: PATH}}"),
    ("name: pm1\ntransport: {backoff_initial: 10}\n",
     "2:30: transport.backoff_initial: 10.0 s must not exceed transport.backoff_max (5.0 s)"),
    ("name: pm1\nevents: {retention: 86400}\n",
     "2:21: events.retention: must be at least 7 days (604800 s), got 86400 s"),
    ("name: pm1\nevents: {max_rows: 0}\n",
     "2:20: events.max_rows: should be greater than or equal to 1, not 0"),
    ("name: pm1\nmembership: {probe_interval: -1}\n",
     "2:30: membership.probe_interval: should be greater than 0, not -1"),
])
def test_nonsense_is_refused_with_one_sentence(tmp_path: Path, text: str, expected: str) -> None:
    assert refusal(tmp_path, text) == [expected]
