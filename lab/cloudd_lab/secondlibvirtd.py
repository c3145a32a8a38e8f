"""A second libvirtd on this machine, as if on another host: the lab's live migrations.

The lab's pool hosts share this machine's libvirtd, and a libvirtd cannot migrate a guest to
itself. `SecondLibvirtd` runs another one beside it that libvirt takes for another host:

- its own mount namespace (`unshare --mount --propagation private`) where libvirt's folders
  (/etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt) are
  folders of its own under `root`, bind-mounted over the machine's: its configuration, its
  sockets, its domains' state and logs are its own; everything else (the image folders, the
  image cache, the lab's roots) is the machine's, so the two share storage as hosts on one
  NFS export would;
- its own host name (a UTS namespace) and host UUID (`host_uuid` in its libvirtd.conf):
  libvirt refuses a migration between two daemons with the same name or UUID, as a migration
  to the same host;
- its qemu.conf: no cgroups of its own (the machine's libvirtd has its domains' cgroups),
  qemu's output written to files (its own virtlogd is not needed), and the ports its qemus
  take migration streams on clear of the machine's libvirtd's (both listen on loopback);
- the same network namespace as the machine's libvirtd, so that its guests join the lab's
  bridge as the others' do: a guest keeps its address and its connections when it moves.

The daemon is started through a symlink of another name, so that `pgrep -x libvirtd`
(scripts/ensure-libvirtd.sh) still finds only the machine's. Its URI is
`qemu+unix:///system?socket=ROOT/run/libvirt-sock`. For migrations the other way (this one
connecting to the machine's, peer to peer) the machine's /run/libvirt is bind-mounted at
`main_run` before the namespace is made, so that `main_uri` reaches the machine's libvirtd
from both sides. `close()` destroys and undefines whatever domains it still has, stops it and
removes its folders and that mount.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Self

#: The machine's libvirt folders, each overlaid by one of the second daemon's own.
FOLDERS = {"etc": "/etc/libvirt", "run": "/run/libvirt", "lib": "/var/lib/libvirt",
           "cache": "/var/cache/libvirt", "log": "/var/log/libvirt"}
#: Ports the second daemon's qemus take migration streams on (the machine's: 49152-49215).
MIGRATION_PORTS = (49400, 49463)


def _uri(socket: Path) -> str:
    return f"qemu+unix:///system?socket={socket}"


class SecondLibvirtd:
    """Another libvirtd, under `root` (removed first if it exists), named `name`."""

    def __init__(self, root: Path, name: str) -> None:
        self.root, self.name = root, name
        self.main_run = root.parent / f"{root.name}-main-run"
        self.pidfile = root / "libvirtd.pid"

    @property
    def uri(self) -> str:
        """This daemon's URI, from anywhere on the machine."""
        return _uri(self.root / "run" / "libvirt-sock")

    @property
    def main_uri(self) -> str:
        """The machine's libvirtd's URI, from anywhere, this daemon's namespace included."""
        return _uri(self.main_run / "libvirt-sock")

    def virsh(self, *args: str, uri: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["virsh", "-c", uri or self.uri, *args], capture_output=True,
                              text=True, timeout=60, check=False)

    def qemu_pid(self, domain: str) -> int | None:
        """The pid of `domain`'s qemu under this daemon, if it runs."""
        with contextlib.suppress(OSError, ValueError):
            return int((self.root / "run" / "qemu" / f"{domain}.pid").read_text().strip())
        return None

    def open(self) -> Self:
        self._clear()
        self._configure()
        self.main_run.mkdir(exist_ok=True)
        subprocess.run(["mount", "--bind", "/run/libvirt", str(self.main_run)], check=True,
                       capture_output=True, timeout=30)
        daemon = self.root / "libvirtd-lab2"
        daemon.symlink_to(shutil.which("libvirtd") or "/usr/sbin/libvirtd")
        binds = "".join(f"mount --bind {self.root / own} {machine}; "
                        for own, machine in FOLDERS.items())
        subprocess.run(
            ["unshare", "--mount", "--uts", "--propagation", "private", "sh", "-ec",
             f"hostname {self.name}; {binds}exec {daemon} -d -p {self.pidfile}"],
            check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 60
        while self.virsh("uri").returncode != 0:
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"the second libvirtd did not answer at {self.uri}")
            time.sleep(0.2)
        return self

    def _configure(self) -> None:
        for own in FOLDERS:
            (self.root / own).mkdir(parents=True)
        etc = self.root / "etc"
        shutil.copytree("/etc/libvirt", etc, dirs_exist_ok=True, symlinks=True)
        # none of the machine's domains, networks or pools
        for sub in ("qemu", "storage", "nwfilter", "secrets"):
            shutil.rmtree(etc / sub, ignore_errors=True)
        (etc / "qemu").mkdir()
        with (etc / "libvirtd.conf").open("a") as conf:
            conf.write(f'\nhost_uuid = "{uuid.uuid4()}"\n')
        with (etc / "qemu.conf").open("a") as conf:
            conf.write('\nstdio_handler = "file"\ncgroup_controllers = [ ]\n'
                       f"migration_port_min = {MIGRATION_PORTS[0]}\n"
                       f"migration_port_max = {MIGRATION_PORTS[1]}\n")
        (self.root / "log" / "qemu").mkdir()
        for sub in ("qemu", "network", "storage"):
            (self.root / "lib" / sub).mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)

    def _pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(self.pidfile.read_text().strip())
        return None

    def close(self) -> None:
        pid = self._pid()
        if pid is not None and self.virsh("uri").returncode == 0:
            for name in self.virsh("list", "--all", "--name").stdout.split():
                self.virsh("destroy", name)
                self.virsh("undefine", name)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._clear()

    def _clear(self) -> None:
        if self.main_run.is_dir():
            subprocess.run(["umount", "-l", str(self.main_run)], capture_output=True,
                           timeout=30, check=False)
            with contextlib.suppress(OSError):
                self.main_run.rmdir()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Where QEMU looks for its TLS certificates by default (qemu.conf's default_tls_x509_cert_dir),
#: migration streams included: both libvirtds of the lab read this one folder.
QEMU_PKI = Path("/etc/pki/qemu")


class QemuTls:
    """Certificates for encrypted migration streams between the lab's libvirtds, in QEMU's
    default folder: a CA made for the lab, a server certificate for 127.0.0.1 (where the
    lab's qemus take streams; QEMU checks the name the stream's URI gives) and a client
    certificate (QEMU checks the client too, `migrate_tls_x509_verify`'s default). Made only
    where the folder does not exist (a machine's own certificates are never touched) and
    removed by `close()`. Lab only: the keys are readable by QEMU's user, and valid a day."""

    def __init__(self, folder: Path = QEMU_PKI) -> None:
        self.folder = folder
        self.made = False

    def open(self) -> QemuTls:
        if self.folder.exists():
            raise RuntimeError(f"{self.folder} exists: the lab will not replace a machine's "
                               "QEMU certificates")
        self.folder.mkdir(parents=True)
        self.made = True
        f = self.folder

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                "/CN=cloudd lab qemu CA", "-keyout", str(f / "ca-key.pem"),
                "-out", str(f / "ca-cert.pem"))
        for who, usage in (("server", "serverAuth"), ("client", "clientAuth")):
            openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
                    "-keyout", str(f / f"{who}-key.pem"), "-out", str(f / f"{who}.csr"))
            (f / f"{who}.ext").write_text(f"subjectAltName=IP:127.0.0.1\n"
                                          f"extendedKeyUsage={usage}\n")
            openssl("x509", "-req", "-days", "1", "-in", str(f / f"{who}.csr"),
                    "-CA", str(f / "ca-cert.pem"), "-CAkey", str(f / "ca-key.pem"),
                    "-CAcreateserial", "-extfile", str(f / f"{who}.ext"),
                    "-out", str(f / f"{who}-cert.pem"))
        (f / "ca-key.pem").unlink()
        for p in f.iterdir():
            p.chmod(0o644)
        f.parent.chmod(0o755)
        f.chmod(0o755)
        return self

    def close(self) -> None:
        if self.made:
            shutil.rmtree(self.folder, ignore_errors=True)
            with contextlib.suppress(OSError):
                self.folder.parent.rmdir()  # /etc/pki, when the lab made it
            self.made = False

    def __enter__(self) -> QemuTls:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
