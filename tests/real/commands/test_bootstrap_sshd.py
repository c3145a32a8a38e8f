"""`cloudd-cli bootstrap` into a network namespace through a real OpenSSH sshd.

The namespace shares this machine's filesystem, so every target path goes under `--root`
(a scratch folder); the agent really runs inside the namespace, started over SSH as a
background process (there is no systemd here). Every process started is killed and the
namespace removed in the fixtures' teardown.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cloudd_lab.netlab import NetLab, Netns
from cryptography import x509

from cloudd.config.agent import load_agent
from cloudd.daemon.main import STATE_DIR_MODE
from cloudd.pki import init_ca, member_of_cert

pytestmark = pytest.mark.netns

CLI = Path(sys.executable).with_name("cloudd-cli")
SSH_PORT = 2222
START_LIMIT = 30.0  # seconds for sshd to listen; generous, it takes milliseconds


@dataclass(frozen=True)
class Sshd:
    ns: Netns
    port: int
    identity: Path
    known_hosts: Path
    host_pub: str


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True, capture_output=True, timeout=30)
    return path.with_suffix(".pub").read_text().strip()


def _wait_listening(address: str, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_LIMIT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sshd exited {proc.returncode}: {log.read_text()}")
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"sshd did not listen on {address}:{port} within {START_LIMIT:g}s")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    tmp = tmp_path_factory.mktemp("sshd")
    host_pub = _keygen(tmp / "host_key")
    (tmp / "authorized_keys").write_text(_keygen(tmp / "client_key") + "\n")
    tag = random.randrange(10, 250)
    lab = NetLab(f"h10b{tag}", subnet=f"10.233.{tag}.0/24").open()
    proc = None
    try:
        ns = lab.add_netns("tgt")
        config = tmp / "sshd_config"
        config.write_text(
            f"Port {SSH_PORT}\nListenAddress {ns.ip}\nHostKey {tmp}/host_key\n"
            f"PidFile {tmp}/sshd.pid\nAuthorizedKeysFile {tmp}/authorized_keys\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            "Subsystem sftp internal-sftp\n")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        log = tmp / "sshd.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", ns.name, "/usr/sbin/sshd", "-D",
                                     "-e", "-f", str(config)], stdout=out, stderr=out)
        _wait_listening(ns.ip, SSH_PORT, proc, log)
        known = tmp / "known_hosts"
        known.write_text(f"[{ns.ip}]:{SSH_PORT} {host_pub}\n")
        yield Sshd(ns=ns, port=SSH_PORT, identity=tmp / "client_key", known_hosts=known,
                   host_pub=host_pub)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        lab.close()


@dataclass(frozen=True)
class Kit:
    source: Path
    wheels: Path


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    """A snapshot of this checkout (edits to it must not change the wheel mid-test), and a
    wheel cache shared by the module's tests."""
    here, snap = Path(__file__).resolve().parents[3], tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(here / name, snap / name)
    for name in ("cloudd",):
        shutil.copytree(here / name, snap / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return Kit(source=snap, wheels=tmp_path_factory.mktemp("wheels"))


@pytest.fixture
def pki_dir(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    init_ca(d, now=dt.datetime.now(dt.UTC), days=30)
    return d


def _processes_under(root: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(root).encode() in cmdline:
                pids.append(int(entry.name))
    return pids


@pytest.fixture
def target_root(tmp_path: Path) -> Iterator[Path]:
    """A scratch root for the target; every agent started from it is killed afterwards."""
    root = tmp_path / "target"
    yield root
    pids = _processes_under(root)
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if Path(f"/proc/{p}").exists()
                and "Z" not in Path(f"/proc/{p}/stat").read_text().split()[2]]
        time.sleep(0.1)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def bootstrap(sshd: Sshd, *, root: Path, pki: Path, kit: Kit, known: Path | None = None,
              name: str = "pm1") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), "bootstrap", name, "--address", sshd.ns.ip, "--port", str(sshd.port),
         "--source", str(kit.source),
         "--identity", str(sshd.identity), "--known-hosts", str(known or sshd.known_hosts),
         "--pki-dir", str(pki), "--wheelhouse", str(kit.wheels), "--root", str(root)],
        capture_output=True, text=True, timeout=400, check=False)


def ssh(sshd: Sshd, command: str) -> subprocess.CompletedProcess[str]:
    """The real OpenSSH client, with strict host key checking against the same file."""
    return subprocess.run(
        ["ssh", "-i", str(sshd.identity), "-p", str(sshd.port), "-o", "BatchMode=yes",
         "-o", f"UserKnownHostsFile={sshd.known_hosts}", "-o", "StrictHostKeyChecking=yes",
         f"root@{sshd.ns.ip}", command], capture_output=True, text=True, timeout=120,
        check=False)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def steps(stdout: str) -> dict[str, str]:
    """{step: "changed" | "ok"} from the command's step lines."""
    out = {}
    for line in stdout.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "pm1:" and words[2] in ("changed", "ok"):
            out[words[1]] = words[2]
    return out


def test_bootstrap_installs_starts_and_second_run_changes_nothing(
        sshd: Sshd, pki_dir: Path, kit: Kit, target_root: Path) -> None:
    root = target_root
    done = bootstrap(sshd, root=root, pki=pki_dir, kit=kit)
    assert done.returncode == 0, done.stderr + done.stdout
    assert done.stderr == ""
    assert steps(done.stdout) == {
        "connect": "ok", "python3-venv": "ok", "time": "changed", "wheels": "ok",
        "install": "changed", "pki": "changed", "settings": "changed", "unit": "changed",
        "check": "ok", "agent": "changed"}, done.stdout
    assert "as a background process (no systemd on the target)" in done.stdout
    # the host serves time to its nodes' network (here the drop-in only: under --root)
    served = (root / "etc/chrony/conf.d/cloudd.conf").read_text()
    network = ipaddress.ip_network(f"{sshd.ns.ip}/24", strict=False)
    assert [line for line in served.splitlines() if not line.startswith("#")] == [
        f"allow {network}", "local stratum 10"], served

    etc, venv = root / "etc/cloudd", root / "opt/cloudd/venv"
    assert (mode(etc / "pki"), mode(etc / "pki/agent.key")) == (0o700, 0o600)
    assert (mode(etc / "pki/agent.pem"), mode(etc / "pki/ca.pem")) == (0o644, 0o644)
    assert mode(root / "var/lib/cloudd") == STATE_DIR_MODE  # as the agent keeps it
    assert (mode(etc), mode(etc / "agent.yaml")) == (0o700, 0o600)
    assert not [p.name for p in etc.rglob(".*cloudd-tmp")]  # nothing left aside
    assert (etc / "pki/ca.pem").read_bytes() == (pki_dir / "ca.crt").read_bytes()
    cert = x509.load_pem_x509_certificate((etc / "pki/agent.pem").read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(
        (pki_dir / "ca.crt").read_bytes()))
    assert member_of_cert(cert) == "pm1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(sshd.ns.ip)]
    settings = load_agent(etc / "agent.yaml")
    assert (settings.kind, settings.name, settings.listen.address) == ("Agent", "pm1",
                                                                       sshd.ns.ip)
    assert settings.pki.key == etc / "pki/agent.key"
    unit = (root / "etc/systemd/system/cloudd.service").read_text()
    assert f"ExecStart={venv}/bin/cloudd --config {etc}/agent.yaml\n" in unit

    checked = ssh(sshd, f"{venv}/bin/cloudd --config {etc}/agent.yaml --check")
    assert (checked.returncode, checked.stdout) == (0, f"{etc}/agent.yaml: ok\n"), checked

    pid = int((root / "run/cloudd/cloudd.pid").read_text())
    assert f"{venv}/bin/cloudd".encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    # It runs inside the target's namespace, started through sshd there.
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{sshd.ns.name}").st_ino
    assert '"agent_started"' in (root / "var/log/cloudd/agent.log").read_text()

    written = [etc / "agent.yaml", etc / "pki/agent.key", etc / "pki/agent.pem",
               etc / "pki/ca.pem", venv / "cloudd-wheels.sha256",
               root / "etc/systemd/system/cloudd.service", pki_dir / "pm1.crt",
               root / "etc/chrony/conf.d/cloudd.conf"]
    before = {p: p.stat().st_mtime_ns for p in written}
    again = bootstrap(sshd, root=root, pki=pki_dir, kit=kit)
    assert again.returncode == 0, again.stderr + again.stdout
    assert set(steps(again.stdout).values()) == {"ok"}, again.stdout
    assert again.stdout.endswith("pm1: already bootstrapped, nothing changed\n")
    assert f"pid {pid}" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in written} == before
    assert int((root / "run/cloudd/cloudd.pid").read_text()) == pid


def test_changed_settings_restart_the_agent(sshd: Sshd, pki_dir: Path, kit: Kit,
                                            target_root: Path) -> None:
    root = target_root
    assert bootstrap(sshd, root=root, pki=pki_dir, kit=kit).returncode == 0
    pid = int((root / "run/cloudd/cloudd.pid").read_text())
    config = root / "etc/cloudd/agent.yaml"
    config.write_text(config.read_text() + "log: {level: debug}\n")  # someone edited it
    again = bootstrap(sshd, root=root, pki=pki_dir, kit=kit)
    assert again.returncode == 0, again.stderr + again.stdout
    assert steps(again.stdout) == {
        "connect": "ok", "python3-venv": "ok", "time": "ok", "wheels": "ok", "install": "ok",
        "pki": "ok", "settings": "changed", "unit": "ok", "check": "ok", "agent": "changed"
    }, again.stdout
    assert "log: {level: debug}" not in config.read_text()
    new = int((root / "run/cloudd/cloudd.pid").read_text())
    assert new != pid and "restarted" in again.stdout
    assert not alive(pid)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_a_dead_agent_is_started_again_and_nothing_else_changes(
        sshd: Sshd, pki_dir: Path, kit: Kit, target_root: Path) -> None:
    root = target_root
    assert bootstrap(sshd, root=root, pki=pki_dir, kit=kit).returncode == 0
    pid = int((root / "run/cloudd/cloudd.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    again = bootstrap(sshd, root=root, pki=pki_dir, kit=kit)
    assert again.returncode == 0, again.stderr + again.stdout
    changed = {step for step, mark in steps(again.stdout).items() if mark == "changed"}
    assert changed == {"agent"}, again.stdout
    assert "pm1: agent         changed  started as a background process" in again.stdout
    assert alive(int((root / "run/cloudd/cloudd.pid").read_text()))


@pytest.mark.parametrize(("entry", "message"), [
    ("other", "does not match the one in"),
    ("none", "is unknown:"),
])
def test_a_wrong_or_unknown_host_key_is_refused_and_nothing_written(
        sshd: Sshd, pki_dir: Path, kit: Kit, target_root: Path, tmp_path: Path,
        entry: str, message: str) -> None:
    known = tmp_path / "known_hosts"
    if entry == "other":
        known.write_text(f"[{sshd.ns.ip}]:{sshd.port} {_keygen(tmp_path / 'impostor')}\n")
    else:
        known.write_text(f"[192.0.2.99]:{sshd.port} {sshd.host_pub}\n")
    pki_before = sorted(p.name for p in pki_dir.iterdir())
    done = bootstrap(sshd, root=target_root, pki=pki_dir, kit=kit, known=known)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith(f"cloudd-cli bootstrap: host key of {sshd.ns.ip}:{sshd.port} ")
    assert message in done.stderr and "refusing to connect" in done.stderr
    assert done.stderr.count("\n") == 1
    assert not target_root.exists()
    assert sorted(p.name for p in pki_dir.iterdir()) == pki_before
