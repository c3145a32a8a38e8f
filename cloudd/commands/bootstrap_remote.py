"""Install the agent on a fresh Debian host over SSH (`cloudd-cli bootstrap HOST`).

Why here: a pool host or a VM image needs the same five things before it can join a cloud:
Python with venv, cloudd in /opt/cloudd/venv, /etc/cloudd/agent.yaml, its PKI, and the agent
running under systemd (or, where systemd does not run, as a background process with a pid
file). Doing them by hand is where hosts drift apart; this does them the same way every time.

Theory of operation: every step first reads what the target has, compares it with what it
should have, and acts only on a difference, so a second run changes nothing and says so.
Everything local that can be refused (names, addresses, the CA, the settings template, the
unit file) is checked before the first connection, and the host key is checked against the
operator's known_hosts before anything is sent: bad input or a wrong host changes nothing.

Wheels of cloudd and of its dependencies are built here once (`pip wheel` into a cache) and
installed on the target with `pip install --no-index`, so the target needs no package index;
the target's Python must therefore have the same major.minor as the one building the wheels.
Every path written on the target is under `root` (default `/`), so tests can install into a
scratch tree through a real sshd.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import ipaddress
import re
import shlex
import shutil
import string
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import asyncssh

from cloudd import pki
from cloudd.config.agent import DEFAULT_PORT, load_agent
from cloudd.errors import ConfigError, PermanentError

#: The target's Python: Debian's, which python3-venv completes (not whatever PATH finds).
PYTHON = "/usr/bin/python3"
#: A certificate that expires sooner than this is replaced.
RENEW_MARGIN = dt.timedelta(days=30)
#: Seconds to wait for a started agent to log `agent_started`.
START_TIMEOUT = 60.0
#: Seconds any one command on the target may take (apt and pip included).
COMMAND_TIMEOUT = 900.0
#: Seconds between SIGTERM and SIGKILL when a background agent is restarted.
STOP_TIMEOUT = 20.0

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


Report = Callable[[str, bool, str], None]


class BootstrapError(PermanentError):
    """Bootstrap refused or failed; the message is one line that says where and why."""


@dataclass(frozen=True)
class Target:
    """Where to install: the member's name, how to reach it, and the path prefix there."""

    name: str
    address: str
    known_hosts: Path
    port: int = 22
    user: str = "root"
    identity: Path | None = None
    root: str = ""
    """Prefix of every path written on the target ("" for /); tests use a scratch folder."""


@dataclass(frozen=True)
class Options:
    """What to install, from where on this machine."""

    source: Path
    """A cloudd checkout (pyproject.toml, cloudd/, systemd/cloudd.service)."""
    wheelhouse: Path
    """Cache of built wheels on this machine; reused across runs and targets."""
    pki_dir: Path = pki.DEFAULT_DIR
    """The cluster CA (ca.crt, ca.key); the member's NAME.crt/NAME.key are kept there too."""
    listen_port: int = DEFAULT_PORT
    settings_template: Path | None = None
    """agent.yaml with $name, $address, $port, $root placeholders; the built-in one if None."""


@dataclass(frozen=True)
class Step:
    """One step as done: its name, whether it changed the target, and what it found or did."""

    name: str
    changed: bool
    detail: str


@dataclass(frozen=True)
class Layout:
    """The paths on the target, under its root prefix."""

    root: str

    def p(self, path: str) -> str:
        return str(PurePosixPath(self.root + path)) if self.root else path

    @property
    def venv(self) -> str: return self.p("/opt/cloudd/venv")
    @property
    def wheels(self) -> str: return self.p("/opt/cloudd/wheels")
    @property
    def marker(self) -> str: return self.p("/opt/cloudd/venv/cloudd-wheels.sha256")
    @property
    def config(self) -> str: return self.p("/etc/cloudd/agent.yaml")
    @property
    def pki(self) -> str: return self.p("/etc/cloudd/pki")
    @property
    def unit(self) -> str: return self.p("/etc/systemd/system/cloudd.service")
    @property
    def pidfile(self) -> str: return self.p("/run/cloudd/cloudd.pid")
    @property
    def logfile(self) -> str: return self.p("/var/log/cloudd/agent.log")
    @property
    def dirs(self) -> tuple[tuple[str, str], ...]:
        return ((self.p("/etc/cloudd"), "0755"), (self.p("/var/lib/cloudd"), "0700"),
                (self.p("/run/cloudd"), "0700"), (self.p("/var/log/cloudd"), "0750"),
                (self.wheels, "0755"))


# ---- local preparation: checked before any connection, writes nothing on the target ------

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


def render_unit(source: Path, layout: Layout) -> str:
    """systemd/cloudd.service with ExecStart and AssertPathExists pointing at the venv."""
    path = source / "systemd" / "cloudd.service"
    try:
        text = path.read_text()
    except OSError as exc:
        raise BootstrapError(f"unit file {path}: {exc.strerror}") from None
    exec_start = f"ExecStart={layout.venv}/bin/cloudd --config {layout.config}"
    text, n = re.subn(r"(?m)^ExecStart=.*$", exec_start, text)
    if n != 1:
        raise BootstrapError(f"unit file {path}: expected one ExecStart= line, found {n}")
    return re.sub(r"(?m)^AssertPathExists=.*$", f"AssertPathExists={layout.config}", text)


def check_local(target: Target, options: Options) -> None:
    """Refuse bad input before connecting: one precise sentence, nothing changed."""
    pki.check_member_name(target.name)
    try:
        ipaddress.ip_address(target.address)
    except ValueError:
        raise BootstrapError(f"bad --address {target.address!r}: not an IPv4 or IPv6 "
                             "address") from None
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
    if not (options.source / "pyproject.toml").is_file():
        raise BootstrapError(f"source {options.source}: no pyproject.toml, not a cloudd tree")


def _source_files(source: Path) -> list[Path]:
    files = [source / "pyproject.toml"]
    if (source / "README.md").is_file():
        files.append(source / "README.md")
    files += sorted(p for p in (source / "cloudd").rglob("*")
                    if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
    return files


def source_digest(source: Path) -> str:
    """sha256 over the files that go into the cloudd wheel (names and contents)."""
    h = hashlib.sha256()
    for path in _source_files(source):
        h.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _pip(args: list[str], *, what: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                          check=False, timeout=1800)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BootstrapError(f"building {what}: pip wheel failed: {tail}")


def build_wheels(options: Options) -> tuple[list[Path], bool]:
    """The wheels to install (dependencies, then cloudd) and whether any was built now."""
    source, house = options.source, options.wheelhouse
    reqs = tomllib.loads((source / "pyproject.toml").read_text())["project"]["dependencies"]
    deps = house / "deps"
    stamp = deps / ".requirements"
    wanted = "\n".join([sys.version.split()[0], *reqs])
    built = False
    if not stamp.is_file() or stamp.read_text() != wanted:
        deps.mkdir(parents=True, exist_ok=True)
        _pip(["wheel", "-q", "-w", str(deps), "--find-links", str(deps), *reqs],
             what="dependency wheels")
        stamp.write_text(wanted)
        built = True
    digest = source_digest(source)
    out = house / f"cloudd-{digest[:16]}"
    if not list(out.glob("cloudd-*.whl")):
        for old in house.glob("cloudd-*"):
            shutil.rmtree(old, ignore_errors=True)
        with tempfile.TemporaryDirectory() as tmp:
            # Build from a copy so that the checkout gets no build/ or egg-info litter.
            for path in _source_files(source):
                dest = Path(tmp) / path.relative_to(source)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest)
            _pip(["wheel", "-q", "--no-deps", "-w", str(out), tmp], what="the cloudd wheel")
        built = True
    wheels = sorted(deps.glob("*.whl")) + sorted(out.glob("cloudd-*.whl"))
    return wheels, built


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
    if pki.member_of_cert(cert) != name:
        return f"names {pki.member_of_cert(cert)!r}, not {name!r}"
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
    pki.issue(options.pki_dir, target.name, now=now, addresses=[target.address], force=True)
    return files.cert.read_bytes(), files.key.read_bytes(), \
        f"issued {files.cert} ({'new' if cert is None else 'replaced: ' + why})"


# ---- the target, over SSH -----------------------------------------------------------------

def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Remote:
    """One SSH connection to the target: commands, and files read and written over SFTP."""

    def __init__(self, conn: asyncssh.SSHClientConnection, sftp: asyncssh.SFTPClient, *,
                 host: str) -> None:
        self.conn, self.sftp, self.host = conn, sftp, host

    async def run(self, command: str, *, what: str, check: bool = True) -> str:
        try:
            done = await self.conn.run(command, check=False, timeout=COMMAND_TIMEOUT)
        except asyncssh.TimeoutError:
            raise BootstrapError(f"{what} on {self.host}: `{command}` did not finish in "
                                 f"{COMMAND_TIMEOUT:g} s") from None
        out = done.stdout if isinstance(done.stdout, str) else ""
        if check and done.exit_status != 0:
            err = done.stderr if isinstance(done.stderr, str) else ""
            tail = (err.strip() or out.strip() or "(no output)").splitlines()[-1]
            raise BootstrapError(f"{what} on {self.host}: `{command}` failed "
                                 f"(exit {done.exit_status}): {tail}")
        return out if done.exit_status == 0 or not check else ""

    async def ok(self, command: str) -> bool:
        try:
            done = await self.conn.run(command, check=False, timeout=COMMAND_TIMEOUT)
        except asyncssh.TimeoutError:
            raise BootstrapError(f"on {self.host}: `{command}` did not finish in "
                                 f"{COMMAND_TIMEOUT:g} s") from None
        return done.exit_status == 0

    async def read(self, path: str) -> bytes | None:
        try:
            async with self.sftp.open(path, "rb") as f:
                data: bytes = await f.read()
                return data
        except asyncssh.SFTPNoSuchFile:
            return None

    async def put(self, path: str, data: bytes, *, mode: int) -> bool:
        """Write `path` atomically with `mode`, unless it already has both; True if written."""
        if await self.read(path) == data:
            attrs = await self.sftp.stat(path)
            if attrs.permissions is not None and attrs.permissions & 0o7777 == mode:
                return False
        parent = str(PurePosixPath(path).parent)
        tmp = f"{parent}/.{PurePosixPath(path).name}.cloudd-tmp"
        # Mode before content: a key must never exist, even aside, readable by others (a
        # leftover of a broken run would keep its own mode, so it goes first).
        with contextlib.suppress(asyncssh.SFTPNoSuchFile):
            await self.sftp.remove(tmp)
        async with self.sftp.open(tmp, "wb", asyncssh.SFTPAttrs(permissions=mode)) as f:
            await f.write(data)
        await self.sftp.chmod(tmp, mode)
        await self.sftp.posix_rename(tmp, path)
        return True


async def connect(target: Target) -> asyncssh.SSHClientConnection:
    """Open SSH with the host key checked against the operator's known_hosts only."""
    where = f"{target.address}:{target.port}"
    try:
        return await asyncssh.connect(
            target.address, port=target.port, username=target.user,
            known_hosts=str(target.known_hosts),
            client_keys=[str(target.identity)] if target.identity else (),
            config=None, connect_timeout=30)
    except asyncssh.HostKeyNotVerifiable:
        known = asyncssh.read_known_hosts(str(target.known_hosts))
        if known.match(target.address, target.address, target.port)[0]:
            raise BootstrapError(
                f"host key of {where} does not match the one in {target.known_hosts}: it "
                "changed, or this is not the host you meant; refusing to connect") from None
        raise BootstrapError(
            f"host key of {where} is unknown: {target.known_hosts} has no entry for it; "
            "verify the host's key and add it there first; refusing to connect") from None
    except asyncssh.PermissionDenied:
        raise BootstrapError(f"ssh to {where} as {target.user}: authentication refused "
                             f"(key {target.identity or 'default'})") from None
    except (OSError, asyncssh.Error) as exc:
        text = getattr(exc, "strerror", None) or str(exc)
        raise BootstrapError(f"cannot connect to {where}: {text}") from None


async def bootstrap(target: Target, options: Options, *, now: dt.datetime,
                    report: Callable[[Step], None]) -> list[Step]:
    """Install, configure and start the agent on `target`; each step reported as it is done."""
    layout = Layout(target.root)
    check_local(target, options)
    settings = render_settings(target, options).encode()
    unit = render_unit(options.source, layout).encode()
    steps: list[Step] = []

    def done(name: str, changed: bool, detail: str) -> None:
        steps.append(Step(name, changed, detail))
        report(steps[-1])

    async with await connect(target) as conn:
        try:
            async with conn.start_sftp_client() as sftp:
                remote = Remote(conn, sftp, host=target.name)
                await _steps(remote, layout, target, options, now=now, done=done,
                             files=(settings, unit))
        except asyncssh.Error as exc:  # connection lost, SFTP refused a path...
            raise BootstrapError(f"on {target.name}: {exc}") from None
    return steps


async def _steps(remote: Remote, layout: Layout, target: Target, options: Options, *,
                 now: dt.datetime, done: Report, files: tuple[bytes, bytes]) -> None:
    settings, unit = files
    done("connect", False, f"{target.user}@{target.address}:{target.port}, host key "
         f"matches {target.known_hosts}")
    uid = (await remote.run("id -u", what="checking the user")).strip()
    if uid != "0":
        raise BootstrapError(f"{target.user} on {target.name} is not root (uid {uid}): "
                             "bootstrap writes /etc and /opt; connect as root")
    await _python(remote, done)
    wheels, built = await asyncio.to_thread(build_wheels, options)
    # The wheel cache is this machine's, not the target's: building it changes nothing there.
    done("wheels", False, f"{len(wheels)} wheels in {options.wheelhouse}"
         + (" (built now)" if built else " (cached)"))
    for path, mode in layout.dirs:
        await remote.run(f"install -d -m {mode} {shlex.quote(path)}", what="making folders")
    changed = await _install(remote, layout, wheels, done)
    changed |= await _pki(remote, layout, target, options, now=now, done=done)
    settings_changed = await remote.put(layout.config, settings, mode=0o644)
    done("settings", settings_changed, layout.config)
    changed |= settings_changed
    unit_dir = shlex.quote(str(PurePosixPath(layout.unit).parent))
    await remote.run(f"install -d -m 0755 {unit_dir}", what="making folders")
    unit_changed = await remote.put(layout.unit, unit, mode=0o644)
    done("unit", unit_changed, layout.unit)
    out = await remote.run(f"{layout.venv}/bin/cloudd --config {layout.config} --check",
                           what="checking the settings")
    done("check", False, " ".join(out.split()) or "ok")
    await _start(remote, layout, restart=changed or unit_changed, done=done)


async def _python(remote: Remote, done: Report) -> None:
    """python3 with venv (Debian's python3-venv), installed with apt when missing."""
    query = "dpkg-query -W -f='${Status}' python3-venv 2>/dev/null | grep -q 'ok installed'"
    if await remote.ok(f"test -x {PYTHON} && {query}"):
        changed = False
    else:
        apt = "DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 python3-venv"
        if not await remote.ok(apt):  # a fresh image may have no package lists yet
            await remote.run(f"apt-get update -q && {apt}", what="installing python3-venv")
        changed = True
    version = (await remote.run(
        f"{PYTHON} -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'",
        what="reading the Python version")).strip()
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if version != here:
        raise BootstrapError(f"{remote.host} runs Python {version}, but the wheels are built "
                             f"here with Python {here}: bootstrap from a matching Python")
    done("python3-venv", changed, f"Python {version}" + (", installed with apt" if changed
                                                         else ", already there"))


async def _install(remote: Remote, layout: Layout, wheels: list[Path], done: Report) -> bool:
    """Upload the wheels that differ and install them into the venv, unless already done."""
    local = {w.name: w.read_bytes() for w in wheels}
    manifest = "".join(f"{_sha256(data)}  {name}\n" for name, data in sorted(local.items()))
    cloudd = f"{layout.venv}/bin/cloudd"
    if (await remote.read(layout.marker) == manifest.encode()
            and await remote.ok(f"test -x {shlex.quote(cloudd)}")):
        done("install", False, f"{layout.venv} already has these {len(local)} wheels")
        return False
    wdir = shlex.quote(layout.wheels)
    listing = await remote.run(f"cd {wdir} && for f in *.whl; do [ -e \"$f\" ] && "
                               "sha256sum \"$f\"; done; true", what="listing wheels")
    there = {line.split()[1]: line.split()[0] for line in listing.splitlines() if line.strip()}
    sent = 0
    for name, data in local.items():
        if there.get(name) != _sha256(data):
            await remote.put(f"{layout.wheels}/{name}", data, mode=0o644)
            sent += 1
    for name in set(there) - set(local):
        await remote.sftp.remove(f"{layout.wheels}/{name}")
    venv = shlex.quote(layout.venv)
    if not await remote.ok(f"test -x {venv}/bin/python"):
        await remote.run(f"{PYTHON} -m venv {venv}", what="making the venv")
    whl = shlex.quote(f"{layout.wheels}/{wheels[-1].name}")
    # Only the uploaded wheels: no index, and no pip configuration of the target's own.
    pip = (f"env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL "
           f"PIP_CONFIG_FILE=/dev/null {venv}/bin/python -m pip install -q --no-index "
           f"--find-links {wdir}")
    await remote.run(f"{pip} {whl}", what="installing cloudd")
    # Same version, new code: pip keeps an installed cloudd unless told to replace it.
    await remote.run(f"{pip} --no-deps --force-reinstall {whl}", what="installing cloudd")
    await remote.put(layout.marker, manifest.encode(), mode=0o644)
    done("install", True, f"{sent} wheels uploaded, installed into {layout.venv}")
    return True


async def _pki(remote: Remote, layout: Layout, target: Target, options: Options, *,
               now: dt.datetime, done: Report) -> bool:
    """ca.pem, agent.pem and agent.key (0600) for the member, issued here when needed."""
    ca_path, cert_path, key_path = (f"{layout.pki}/{n}" for n in
                                    ("ca.pem", "agent.pem", "agent.key"))
    ca = (options.pki_dir / "ca.crt").read_bytes()
    cert, key = await remote.read(cert_path), await remote.read(key_path)
    detail = f"{layout.pki} already has a valid certificate for {target.name}"
    if cert_problem(cert, key, ca, name=target.name, address=target.address, now=now):
        cert, key, detail = await asyncio.to_thread(member_files, options, target, now=now)
    assert cert is not None and key is not None
    await remote.run(f"install -d -m 0700 {shlex.quote(layout.pki)}", what="making folders")
    changed = False
    # The key first: a certificate is never there without the key that goes with it.
    for path, data, mode in ((key_path, key, 0o600), (cert_path, cert, 0o644),
                             (ca_path, ca, 0o644)):
        changed |= await remote.put(path, data, mode=mode)
    done("pki", changed, detail if changed else f"{detail}, files unchanged")
    return changed


async def _agent_pid(remote: Remote, layout: Layout) -> str | None:
    pidfile, cloudd = shlex.quote(layout.pidfile), shlex.quote(f"{layout.venv}/bin/cloudd")
    out = await remote.run(
        f"pid=$(cat {pidfile} 2>/dev/null) && [ -n \"$pid\" ] && kill -0 \"$pid\" 2>/dev/null"
        f" && grep -qF {cloudd} /proc/\"$pid\"/cmdline && echo \"$pid\"", what="finding the "
        "agent", check=False)
    return out.strip() or None


async def _start(remote: Remote, layout: Layout, *, restart: bool, done: Report) -> None:
    """Under systemd where it runs on the target, else a background process with a pid file."""
    # sd_booted(): systemd runs there. A unit under a --root prefix is not systemd's, though.
    if not layout.root and await remote.ok("test -d /run/systemd/system"):
        await remote.run("systemctl daemon-reload && systemctl enable -q cloudd",
                         what="enabling cloudd.service")
        active = await remote.ok("systemctl is-active -q cloudd")
        if active and not restart:
            done("agent", False, "running under systemd (cloudd.service), left as it is")
            return
        await remote.run("systemctl restart cloudd", what="starting cloudd.service")
        done("agent", True, ("restarted" if active else "started") + " under systemd "
             "(cloudd.service)")
        return
    pid = await _agent_pid(remote, layout)
    if pid is not None and not restart:
        done("agent", False, f"running as a background process (no systemd on the target), "
             f"pid {pid}, log {layout.logfile}, left as it is")
        return
    if pid is not None:
        await remote.run(
            f"kill {pid}; for i in $(seq {int(STOP_TIMEOUT * 10)}); do kill -0 {pid} "
            f"2>/dev/null || exit 0; sleep 0.1; done; kill -9 {pid}", what="stopping the agent")
    log, pidfile = shlex.quote(layout.logfile), shlex.quote(layout.pidfile)
    offset = (await remote.run(f"stat -c %s {log} 2>/dev/null || echo 0",
                               what="reading the log")).strip()
    new = await remote.run(
        # Only the agent itself goes to the background, with every descriptor redirected:
        # anything holding the session's stdout would keep this command from returning.
        f"cd / || exit 1; setsid nohup {shlex.quote(layout.venv)}/bin/cloudd --config "
        f"{shlex.quote(layout.config)} >>{log} 2>&1 </dev/null & echo $! >{pidfile}; "
        f"cat {pidfile}", what="starting the agent")
    wait = (f"for i in $(seq {int(START_TIMEOUT * 5)}); do tail -c +{int(offset) + 1} {log} | "
            f"grep -q agent_started && exit 0; kill -0 {new.strip()} 2>/dev/null || exit 3; "
            "sleep 0.2; done; exit 4")
    if not await remote.ok(wait):
        tail = await remote.run(f"tail -n 3 {log}", what="reading the log", check=False)
        alive = await remote.ok(f"kill -0 {new.strip()}")
        why = f"not started in {START_TIMEOUT:g} s" if alive else "exited"
        raise BootstrapError(f"agent on {remote.host} {why}: " + " | ".join(
            tail.strip().splitlines()) + f" (log {layout.logfile})")
    done("agent", True, f"{'restarted' if pid else 'started'} as a background process (no "
         f"systemd on the target), pid {new.strip()}, log {layout.logfile}")
