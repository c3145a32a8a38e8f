"""Agent settings: defaults, profiles, overrides, and one sentence per nonsense."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudd.config.agent import DEFAULT_PORT, LOCAL, AgentSettings, load_agent
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
    assert (s.membership.probe_interval, s.membership.probe_timeout) == (0.1, 0.04)
    assert s.reconcile.backoff_max == 300.0


def test_local_profile_is_fast_and_explicit_values_win(tmp_path: Path) -> None:
    s = settings(tmp_path, "name: n1\nprofile: local\nmembership: {indirect_probes: 5}\n"
                           "reconcile: {backoff_max: 9}\nlibvirt: {uri: null}\n")
    assert s.reconcile.resync_interval == LOCAL["reconcile"]["resync_interval"]
    assert s.reconcile.backoff_max == 9
    assert s.membership.indirect_probes == 5
    assert s.supervisor.start_grace == LOCAL["supervisor"]["start_grace"]
    assert s.libvirt.uri is None


def test_every_timing_field_is_documented() -> None:
    for group in ("membership", "election", "reconcile", "supervisor"):
        model = AgentSettings.model_fields[group].annotation
        assert model is not None
        for name, field in model.model_fields.items():  # type: ignore[union-attr]
            assert field.description, f"{group}.{name} has no docstring"


@pytest.mark.parametrize(("text", "expected"), [
    ("name: pm1\nmembership: {probe_timeout: 2}\n",
     "2:29: membership.probe_timeout: 2.0 s must be shorter than membership.probe_interval "
     "(0.1 s): a probe must end before the next one starts"),
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
    ("name: pm1\nmembership: {probe_interval: -1}\n",
     "2:30: membership.probe_interval: should be greater than 0, not -1"),
])
def test_nonsense_is_refused_with_one_sentence(tmp_path: Path, text: str, expected: str) -> None:
    assert refusal(tmp_path, text) == [expected]
