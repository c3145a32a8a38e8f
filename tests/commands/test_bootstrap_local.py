"""Bootstrap's local half: everything refused or prepared before the first connection.

The SSH half runs against a real sshd in tests/real/commands/test_bootstrap_sshd.py; the
wheels in test_bootstrap_wheels.py.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import replace
from pathlib import Path

import pytest

from cloudd.commands.bootstrap.prepare import (
    UNIT,
    cert_problem,
    check_local,
    member_files,
    render_settings,
    render_unit,
)
from cloudd.commands.bootstrap.target import BootstrapError, Layout, Options, Target
from cloudd.commands.bootstrap.wheels import Checkout
from cloudd.daemon.main import STATE_DIR_MODE
from cloudd.pki import MemberKind, PkiError, init_ca, issue

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
CHECKOUT = Path(__file__).resolve().parents[2]


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Target, Options]:
    pki = tmp_path / "pki"
    init_ca(pki, now=NOW)
    known = tmp_path / "known_hosts"
    known.write_text("")
    target = Target(name="pm1", address="192.0.2.70", known_hosts=known)
    return target, Options(source=Checkout(CHECKOUT), wheelhouse=tmp_path / "wheels", pki_dir=pki)


def test_layout_puts_every_path_under_the_root() -> None:
    assert Layout("").config == "/etc/cloudd/agent.yaml"
    lay = Layout("/srv/t")
    assert (lay.venv, lay.pki, lay.unit, lay.pidfile) == (
        "/srv/t/opt/cloudd/venv", "/srv/t/etc/cloudd/pki",
        "/srv/t/etc/systemd/system/cloudd.service", "/srv/t/run/cloudd/cloudd.pid")
    assert all(path.startswith("/srv/t/") for path, _ in lay.dirs)


def test_bootstrap_makes_the_agents_folders_with_the_modes_the_agent_keeps() -> None:
    """A second bootstrap of a running host must not take back what the agent's start gave."""
    modes = dict(Layout("").dirs)
    assert modes["/var/lib/cloudd"] == f"{STATE_DIR_MODE:04o}"
    assert (modes["/etc/cloudd"], modes["/run/cloudd"]) == ("0700", "0700")


def test_default_settings_name_the_host_and_its_address(setup: tuple[Target, Options]) -> None:
    target, options = setup
    text = render_settings(target, options)
    assert "name: pm1\n" in text and 'address: "192.0.2.70", port: 7760' in text
    assert "ca: /etc/cloudd/pki/ca.pem" in text


@pytest.mark.parametrize(("template", "message"), [
    ("name: $name\nlisten: {port: $nope}\n", "unknown or bad placeholder 'nope'"),
    ("name: $name\nlisten: {port: 99999}\n", "T:2:"),
    ("name: other\n", "name is 'other', not the host's name 'pm1'"),
])
def test_a_bad_settings_template_is_refused_with_its_place(
        setup: tuple[Target, Options], tmp_path: Path, template: str, message: str) -> None:
    target, options = setup
    path = tmp_path / "agent.tmpl"
    path.write_text(template)
    with pytest.raises(BootstrapError) as err:
        render_settings(target, Options(source=options.source, wheelhouse=options.wheelhouse,
                                        pki_dir=options.pki_dir, settings_template=path))
    assert message.replace("T", str(path)) in str(err.value)
    assert "\n" not in str(err.value)


def test_unit_runs_the_venv_agent(tmp_path: Path) -> None:
    text = render_unit(Layout("/r"))
    assert "\nExecStart=/r/opt/cloudd/venv/bin/cloudd --config /r/etc/cloudd/agent.yaml\n" in text
    assert "\nAssertPathExists=/r/etc/cloudd/agent.yaml\n" in text
    bad = tmp_path / "cloudd.service"
    bad.write_text("[Service]\nType=simple\n")
    with pytest.raises(BootstrapError, match="expected one ExecStart= line, found 0"):
        render_unit(Layout(""), unit=bad)


def test_the_unit_shipped_with_bootstrap_is_the_checkout_one() -> None:
    # systemd/cloudd.service in a checkout is where people look for it; it must be this one.
    assert UNIT.read_text() == (CHECKOUT / "systemd" / "cloudd.service").read_text()


@pytest.mark.parametrize(("change", "message"), [
    ({"name": "PM1"}, "bad member name 'PM1'"),
    ({"address": "pm1.example"}, "bad --address 'pm1.example': not an IPv4 or IPv6 address"),
    ({"root": "rel/dir"}, "bad --root 'rel/dir': must be an absolute path"),
    ({"known_hosts": Path("/nonexistent/kh")}, "known hosts file /nonexistent/kh: no such"),
    ({"identity": Path("/nonexistent/id")}, "identity file /nonexistent/id: no such file"),
])
def test_bad_input_is_refused_before_connecting(setup: tuple[Target, Options],
                                                change: dict[str, object], message: str) -> None:
    target, options = setup
    with pytest.raises((BootstrapError, PkiError), match=re.escape(message)):
        check_local(replace(target, **change), options)  # type: ignore[arg-type]


def test_a_source_that_is_not_a_cloudd_tree_is_refused(setup: tuple[Target, Options],
                                                       tmp_path: Path) -> None:
    target, options = setup
    with pytest.raises(BootstrapError, match=re.escape(
            f"source {tmp_path}: no pyproject.toml, not a cloudd tree")):
        check_local(target, replace(options, source=Checkout(tmp_path)))


def test_no_ca_is_refused(setup: tuple[Target, Options], tmp_path: Path) -> None:
    target, options = setup
    (options.pki_dir / "ca.key").unlink()
    with pytest.raises(BootstrapError, match=r"missing ca\.key.*cloudd-cli pki init"):
        check_local(target, options)


@pytest.mark.parametrize("name", ["nodes-ca.crt", "nodes-ca.key"])
def test_no_node_issuer_is_refused(setup: tuple[Target, Options], name: str) -> None:
    target, options = setup
    (options.pki_dir / name).unlink()
    with pytest.raises(BootstrapError, match=rf"no node issuer in .* \(missing {name}\): run "
                                             r"`cloudd-cli pki issuer` first"):
        check_local(target, options)


def test_cert_problem_says_why_a_certificate_will_not_do(setup: tuple[Target, Options],
                                                         tmp_path: Path) -> None:
    _, options = setup
    d = options.pki_dir
    files = issue(d, "pm1", now=NOW, kind=MemberKind.HOST, addresses=["192.0.2.70"], days=90)
    ca, cert, key = (p.read_bytes() for p in (files.ca, files.cert, files.key))
    fits = {"name": "pm1", "address": "192.0.2.70", "now": NOW}
    assert cert_problem(cert, key, ca, **fits) is None  # type: ignore[arg-type]
    assert cert_problem(None, key, ca, **fits) == "none yet"  # type: ignore[arg-type]
    assert cert_problem(cert, key, ca, name="pm2", address="192.0.2.70",
                        now=NOW) == "names 'pm1', not 'pm2', as a pool host"
    assert cert_problem(cert, key, ca, name="pm1", address="192.0.2.71",
                        now=NOW) == "does not list address 192.0.2.71"
    assert cert_problem(cert, key, ca, name="pm1", address="192.0.2.70",
                        now=NOW + dt.timedelta(days=80)) == "expires 2026-08-30"
    other = tmp_path / "other"
    init_ca(other, now=NOW)
    assert cert_problem(cert, key, (other / "ca.crt").read_bytes(), **fits) == (  # type: ignore[arg-type]
        "not signed by this cluster's CA, or unreadable")
    stranger = issue(other, "pm1", now=NOW, kind=MemberKind.HOST,
                     addresses=["192.0.2.70"]).key.read_bytes()
    assert cert_problem(cert, stranger, ca, **fits) == (  # type: ignore[arg-type]
        "key does not match certificate")


def test_member_files_issue_once_then_reuse_then_replace(setup: tuple[Target, Options]) -> None:
    target, options = setup
    cert, key, detail = member_files(options, target, now=NOW)
    assert detail.startswith("issued ") and detail.endswith("(new)")
    again = member_files(options, target, now=NOW)
    assert again[:2] == (cert, key) and again[2].startswith("uploaded ")
    moved = Target(name="pm1", address="192.0.2.99", known_hosts=target.known_hosts)
    cert2, _, detail2 = member_files(options, moved, now=NOW)
    assert cert2 != cert and "replaced: does not list address 192.0.2.99" in detail2
