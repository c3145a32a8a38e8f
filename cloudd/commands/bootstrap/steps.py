"""The steps of `cloudd-cli bootstrap HOST` on the target, over one SSH connection.

Why: a pool host or a VM image needs the same five things before it can join a cloud:
Python with venv, cloudd in /opt/cloudd/venv, /etc/cloudd/agent.yaml, its PKI, and the agent
running under systemd (or, where systemd does not run, as a background process with a pid
file); a pool host also serves time to its nodes (`timeserver`). Doing them by hand is where
hosts drift apart; this does them the same way every time.

Theory of operation: every step first reads what the target has, compares it with what it
should have, and acts only on a difference, so a second run changes nothing and says so.
What can be refused locally is refused first (`prepare.check_local`), and the host key is
checked before anything is sent (`remote.open_remote`): bad input or a wrong host changes nothing.
The wheels are made here (`wheels`) and uploaded; the target needs no package index.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import shlex
import sys
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from cloudd.commands.bootstrap.prepare import (
    cert_problem,
    check_local,
    member_files,
    render_settings,
    render_unit,
)
from cloudd.commands.bootstrap.remote import Remote, open_remote
from cloudd.commands.bootstrap.target import BootstrapError, Layout, Options, Step, Target
from cloudd.commands.bootstrap.timeserver import clients, serve_time
from cloudd.commands.bootstrap.wheels import build_wheels
from cloudd.pki import ISSUER_CERT, ISSUER_KEY

#: The target's Python: Debian's, which python3-venv completes (not whatever PATH finds).
PYTHON = "/usr/bin/python3"
#: Seconds to wait for a started agent to log `agent_started`.
START_TIMEOUT = 60.0
#: Seconds between SIGTERM and SIGKILL when a background agent is restarted.
STOP_TIMEOUT = 20.0

Report = Callable[[str, bool, str], None]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def bootstrap(target: Target, options: Options, *, now: dt.datetime,
                    report: Callable[[Step], None]) -> list[Step]:
    """Install, configure and start the agent on `target`; each step reported as it is done."""
    layout = Layout(target.root)
    check_local(target, options)
    settings = render_settings(target, options).encode()
    unit = render_unit(layout).encode()
    steps: list[Step] = []

    def done(name: str, changed: bool, detail: str) -> None:
        steps.append(Step(name, changed, detail))
        report(steps[-1])

    async with open_remote(target) as remote:
        await _steps(remote, layout, target, options, now=now, done=done,
                     files=(settings, unit))
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
    await serve_time(remote, layout, clients(target, options), done=done)
    wheels, built = await asyncio.to_thread(build_wheels, options)
    # The wheel cache is this machine's, not the target's: building it changes nothing there.
    done("wheels", False, f"{len(wheels)} wheels in {options.wheelhouse}, cloudd from "
         f"{options.source.describe()}" + (" (built now)" if built else " (cached)"))
    for path, mode in layout.dirs:
        await remote.run(f"install -d -m {mode} {shlex.quote(path)}", what="making folders")
    changed = await _install(remote, layout, wheels, done)
    changed |= await _pki(remote, layout, target, options, now=now, done=done)
    settings_changed = await remote.put(layout.config, settings, mode=0o600)
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
        await remote.remove(f"{layout.wheels}/{name}")
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
    """ca.pem, agent.pem and agent.key (0600) for the member, issued here when needed, and
    the node issuer a pool host signs its nodes' certificates with (its key 0600)."""
    ca_path, cert_path, key_path = (f"{layout.pki}/{n}" for n in
                                    ("ca.pem", "agent.pem", "agent.key"))
    ca = (options.pki_dir / "ca.crt").read_bytes()
    issuer = [(f"{layout.pki}/{n}", (options.pki_dir / n).read_bytes(), mode)
              for n, mode in ((ISSUER_KEY, 0o600), (ISSUER_CERT, 0o644))]
    cert, key = await remote.read(cert_path), await remote.read(key_path)
    detail = f"{layout.pki} already has a valid certificate for {target.name}"
    if cert_problem(cert, key, ca, name=target.name, address=target.address, now=now):
        cert, key, detail = await asyncio.to_thread(member_files, options, target, now=now)
    assert cert is not None and key is not None
    await remote.run(f"install -d -m 0700 {shlex.quote(layout.pki)}", what="making folders")
    changed = False
    # The key first: a certificate is never there without the key that goes with it.
    for path, data, mode in ((key_path, key, 0o600), (cert_path, cert, 0o644),
                             (ca_path, ca, 0o644), *issuer):
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
