"""Bootstrap's local half: everything checked or made here before the first connection.

Everything local that can be refused (names, addresses, the CA, the settings template, the
unit file, the cloudd to install) is checked before connecting, so bad input changes nothing
anywhere. The agent's settings come from a template (the built-in one or `--settings-template`),
rendered and validated as `AgentSettings`; the systemd unit is the one shipped with this
package (package data, so an installed cloudd-cli has it too); the member's certificate is
reused from the operator's PKI folder while it still fits, and issued again when it does not.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import string
import tempfile
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from cloudd import pki
from cloudd.commands.bootstrap import timeserver
from cloudd.commands.bootstrap.target import BootstrapError, Layout, Options, Target
from cloudd.config.agent import load_agent
from cloudd.errors import ConfigError

#: A certificate that expires sooner than this is replaced.
RENEW_MARGIN = dt.timedelta(days=30)
#: The agent's systemd unit, as shipped in this package; `render_unit` points it at the venv.
UNIT = resources.files("cloudd.commands.bootstrap").joinpath("cloudd.service")

DEFAULT_TEMPLATE = """\
apiVersion: cloudd/v1
kind: Agent
name: $name
listen: {address: "$address", port: $port}
pki:
  ca: $root/etc/cloudd/pki/ca.pem
  cert: $root/etc/cloudd/pki/agent.pem
  key: $root/etc/cloudd/pki/agent.key
state_dir: $root/var/lib/cloudd
manifest_dir: $root/etc/cloudd
api_socket: $root/run/cloudd/cloudd.sock
"""


def render_settings(target: Target, options: Options) -> str:
    """agent.yaml for `target`, validated as AgentSettings; BootstrapError otherwise."""
    src = options.settings_template
    try:
        text = src.read_text() if src else DEFAULT_TEMPLATE
    except OSError as exc:
        raise BootstrapError(f"settings template {src}: {exc.strerror}") from None
    try:
        rendered = string.Template(text).substitute(
            name=target.name, address=target.address, port=options.listen_port,
            root=target.root)
    except (KeyError, ValueError) as exc:
        raise BootstrapError(f"settings template {src}: unknown or bad placeholder {exc}; "
                             "use $name, $address, $port, $root") from None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "agent.yaml"
        path.write_text(rendered)
        try:
            settings = load_agent(path)
        except ConfigError as exc:
            where = str(src or "built-in settings template")
            raise BootstrapError(str(exc.problems[0]).replace(str(path), where)) from None
    if settings.name != target.name:
        raise BootstrapError(f"settings template {src}: name is {settings.name!r}, "
                             f"not the host's name {target.name!r}")
    return rendered


def render_unit(layout: Layout, *, unit: Traversable = UNIT) -> str:
    """The agent's unit with ExecStart and AssertPathExists pointing at the venv."""
    try:
        text = unit.read_text()
    except OSError as exc:
        raise BootstrapError(f"unit file {unit}: {exc.strerror}") from None
    exec_start = f"ExecStart={layout.venv}/bin/cloudd --config {layout.config}"
    text, n = re.subn(r"(?m)^ExecStart=.*$", exec_start, text)
    if n != 1:
        raise BootstrapError(f"unit file {unit}: expected one ExecStart= line, found {n}")
    return re.sub(r"(?m)^AssertPathExists=.*$", f"AssertPathExists={layout.config}", text)


def check_local(target: Target, options: Options) -> None:
    """Refuse bad input before connecting: one precise sentence, nothing changed."""
    pki.check_member_name(target.name)
    try:
        ipaddress.ip_address(target.address)
    except ValueError:
        raise BootstrapError(f"bad --address {target.address!r}: not an IPv4 or IPv6 "
                             "address") from None
    timeserver.clients(target, options)
    if target.root and not target.root.startswith("/"):
        raise BootstrapError(f"bad --root {target.root!r}: must be an absolute path")
    if not target.known_hosts.is_file():
        raise BootstrapError(f"known hosts file {target.known_hosts}: no such file")
    if target.identity is not None and not target.identity.is_file():
        raise BootstrapError(f"identity file {target.identity}: no such file")
    for name in ("ca.crt", "ca.key"):
        if not (options.pki_dir / name).is_file():
            raise BootstrapError(f"no cluster CA in {options.pki_dir} (missing {name}): "
                                 "run `cloudd-cli pki init` first")
    for name in (pki.ISSUER_CERT, pki.ISSUER_KEY):
        if not (options.pki_dir / name).is_file():
            raise BootstrapError(f"no node issuer in {options.pki_dir} (missing {name}): "
                                 "run `cloudd-cli pki issuer` first")
    options.source.check()


def cert_problem(cert_pem: bytes | None, key_pem: bytes | None, ca_pem: bytes, *,
                 name: str, address: str, now: dt.datetime) -> str | None:
    """Why this key and certificate will not do for `name` at `address`, or None if they do."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    if cert_pem is None or key_pem is None:
        return "none yet"
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    except Exception:  # any unreadable or foreign certificate is simply replaced
        return "not signed by this cluster's CA, or unreadable"
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.PEM
    if key.public_key().public_bytes(enc, pub) != cert.public_key().public_bytes(enc, pub):
        return "key does not match certificate"
    identity = pki.identity_of_cert(cert)
    if identity is None or identity.name != name:
        return f"names {pki.member_of_cert(cert)!r}, not {name!r}, as a pool host"
    if identity.kind is not pki.MemberKind.HOST:
        return f"is a {identity.kind.value}'s certificate, not a pool host's"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    if ipaddress.ip_address(address) not in san.get_values_for_type(x509.IPAddress):
        return f"does not list address {address}"
    if cert.not_valid_after_utc - now < RENEW_MARGIN:
        return f"expires {cert.not_valid_after_utc:%Y-%m-%d}"
    return None


def member_files(options: Options, target: Target, *,
                 now: dt.datetime) -> tuple[bytes, bytes, str]:
    """(cert, key, what was done) from the operator's PKI folder, issuing when needed."""
    files = pki.PkiFiles.for_member(options.pki_dir, target.name)
    ca = files.ca.read_bytes()
    cert = files.cert.read_bytes() if files.cert.exists() else None
    key = files.key.read_bytes() if files.key.exists() else None
    why = cert_problem(cert, key, ca, name=target.name, address=target.address, now=now)
    if why is None:
        assert cert is not None and key is not None
        return cert, key, f"uploaded {files.cert}"
    pki.issue(options.pki_dir, target.name, now=now, kind=pki.MemberKind.HOST,
              addresses=[target.address], force=True)
    return files.cert.read_bytes(), files.key.read_bytes(), \
        f"issued {files.cert} ({'new' if cert is None else 'replaced: ' + why})"
