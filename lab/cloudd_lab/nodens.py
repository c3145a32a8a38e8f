"""Test nodes on one machine: each its own network, hostname and private folders.

Daemons such as munged, slurmd, trqauthd or pbs_mom run one per machine: they find their
node by the hostname, and keep sockets, pid files and spools at fixed paths (/run/munge,
/tmp/trqauthd-unix, /var/spool/...). To run several of them here, a `NodeLab` gives each test
node three namespaces of its own:
- network: a `NetLab` namespace on the lab's bridge, with its own address;
- UTS: its hostname is the node's name;
- mount: private copies of /etc/hosts, /tmp, /run, the spools and the daemons' folders, each a
  bind mount of a folder of the node's own under the lab's temporary folder (`outside()` says
  where a private path lives on the host's side).
The UTS and mount namespaces are kept by bind mounts of their namespace files (under
`/run/cloudd-nodens-<prefix>/`), so any number of commands can enter the node later through
`exec_prefix` (nsenter without --fork: the command is the process nsenter execs, so its pid is
the daemon's own), which is what a provider's `Assignment.exec_prefix` takes. The node's
/etc/hosts names every node of the lab, rewritten (in place: it is bind-mounted) as nodes come.

Everything shares the rest of the host's filesystem (programs, /etc/passwd, the lab's shared
folders): a user made for a test has the same uid on every node, and a folder outside the
private ones is a shared file system.

`close()` kills what is still running in the nodes' namespaces (by pid, found by namespace),
unmounts the namespace files, removes the network and the lab's folders; it is safe twice.
`open()` first removes what a crashed run with the same prefix left behind (its processes,
namespaces, links, mounts and folders). Blocking subprocesses: test and bench tooling only.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cloudd.errors import PermanentError
from cloudd_lab.netlab import NetLab, Netns, ip

#: Folders (and /etc/hosts) private to each node by default: those of munge, Slurm and
#: TORQUE, the temporary ones, and /run. One the host does not have is skipped.
DEFAULT_PRIVATE: tuple[str, ...] = (
    "/etc/hosts", "/tmp", "/run", "/var/log", "/var/spool",
    "/etc/munge", "/var/lib/munge", "/etc/slurm", "/var/lib/slurm",
)
#: World-writable folders (sticky), as on any machine.
_STICKY = ("/tmp", "/var/tmp")
#: Seconds to wait for killed processes to be gone.
_KILL_WITHIN = 10.0
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def open_to_others(path: Path) -> list[str]:
    """Who besides root could replace `path` or put something in its place: `path` itself
    if it is not root's or others may write it, and each folder above it that is not root's
    or that others may write without the sticky bit (in a sticky folder of root's, as /var/tmp,
    only root may rename root's entries). Each as `path uid=N mode`; [] when none."""
    found = []
    for p in (path, *path.parents):
        st = p.stat()
        loose = st.st_mode & 0o022 and (p == path or not st.st_mode & 0o1000)
        if st.st_uid != 0 or loose:
            found.append(f"{p} uid={st.st_uid} {st.st_mode & 0o7777:o}")
    return found


class NodeLabError(PermanentError):
    """The node lab could not be built or torn down; the message says what failed."""


def _run(argv: Sequence[str]) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NodeLabError(f"`{shlex.join(argv)}` failed: "
                           f"{done.stderr.strip() or done.returncode}")
    return done.stdout


@dataclass(frozen=True)
class NodeNs:
    """One test node: its namespaces, its hostname and where its private folders live."""

    label: str
    hostname: str
    netns: Netns
    #: The node's own folders: `fs/<path>` is bind-mounted on `<path>` inside the node.
    home: Path
    uts: Path
    mnt: Path
    #: The paths made private inside the node (those of the lab's list the host has).
    private: tuple[str, ...]

    @property
    def ip(self) -> str:
        return self.netns.ip

    @property
    def exec_prefix(self) -> tuple[str, ...]:
        """Put before a command line to run it inside the node (as root)."""
        return ("nsenter", f"--net=/run/netns/{self.netns.name}", f"--uts={self.uts}",
                f"--mount={self.mnt}", "--")

    def outside(self, path: str | Path) -> Path:
        """Where `path`, as the node sees it, is on the host's side."""
        p = Path(path)
        for private in sorted(self.private, key=len, reverse=True):
            if p == Path(private) or p.is_relative_to(private):
                return self.home / "fs" / p.relative_to("/")
        return p

    def argv(self, argv: Sequence[str], *, user: str | None = None,
             cwd: str | Path | None = None) -> list[str]:
        """`argv` run inside the node, as `user` (dropped to after entering) or root, in
        folder `cwd` of the node (entering a mount namespace otherwise starts at /)."""
        prefix = [*self.exec_prefix[:-1], *([f"--wd={cwd}"] if cwd else []), "--"]
        if user is None:
            return [*prefix, *argv]
        pw = pwd.getpwnam(user)
        return [*prefix, "setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}",
                "--init-groups", "--", *argv]

    def run(self, argv: Sequence[str], *, user: str | None = None,
            env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
            timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside the node and return its result (never raises on exit code).

        The environment is a plain login's (PATH, HOME, USER of `user`) plus `env`."""
        pw = pwd.getpwnam(user or "root")
        base = {"PATH": _DEFAULT_PATH, "HOME": pw.pw_dir, "USER": pw.pw_name,
                "LOGNAME": pw.pw_name, "LANG": "C.UTF-8"}
        return subprocess.run(self.argv(argv, user=user, cwd=cwd), capture_output=True,
                              text=True, env={**base, **(env or {})}, timeout=timeout,
                              check=False)

    def pids(self) -> list[int]:
        """The processes running inside the node now (in its mount or network namespace)."""
        return _pids_in((self.mnt, self.uts, Path(f"/run/netns/{self.netns.name}")))


def _ns_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _pids_in(ns_files: Sequence[Path]) -> list[int]:
    """Pids of the processes in any of the namespaces those files hold."""
    wanted = {i for i in map(_ns_id, ns_files) if i is not None}
    # A file that is not (or no longer) a namespace is an ordinary inode: never a match below.
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        for kind in ("mnt", "uts", "net"):
            ident = _ns_id(Path(f"/proc/{entry}/ns/{kind}"))
            if ident is not None and ident in wanted:
                found.append(int(entry))
                break
    return found


def _kill(pids: Sequence[int]) -> None:
    """SIGKILL those processes and wait (bounded) until they are gone or zombies."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + _KILL_WITHIN
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                break
            if state in ("Z", "X"):
                break
            time.sleep(0.05)


def _mounted(path: Path) -> bool:
    text = Path("/proc/self/mountinfo").read_text()
    return any(line.split()[4] == str(path) for line in text.splitlines())


def _umount(path: Path) -> None:
    if _mounted(path):
        _run(["umount", str(path)])


class NodeLab:
    """Test nodes `<prefix>-<label>` on a bridge `<prefix>br` over `subnet`, with private
    folders under a temporary folder `<base>/<prefix>-nodes-*` (0755: services of any user
    reach their own files below it)."""

    def __init__(self, prefix: str, *, subnet: str, base: Path = Path("/var/tmp"),
                 private: Sequence[str] = DEFAULT_PRIVATE) -> None:
        self.net = NetLab(prefix, subnet=subnet)  # checks the prefix and the subnet
        self.prefix, self.base = prefix, base
        self.private = tuple(private)
        for p in self.private:
            if not p.startswith("/") or p == "/" or ".." in Path(p).parts:
                raise NodeLabError(f"private path {p!r} must be absolute, below /, no '..'")
            if base == Path(p) or base.is_relative_to(p):
                raise NodeLabError(f"the lab's folder {base} would be hidden inside the nodes "
                                   f"by their private {p}: choose another base")
        self.state = Path(f"/run/cloudd-nodens-{prefix}")
        self.root = Path("/nonexistent")
        self.nodes: dict[str, NodeNs] = {}
        self._opened = self._closed = False

    # ---- building --------------------------------------------------------------------
    def open(self) -> NodeLab:
        self.sweep()
        self.root = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-nodes-", dir=self.base))
        self.root.chmod(0o755)
        self._opened = True
        # The namespace files are bind mounts: they live in a folder that is a private mount
        # of its own, so that they neither propagate nor get copied into other namespaces.
        self.state.mkdir(mode=0o700, exist_ok=True)
        _run(["mount", "--bind", str(self.state), str(self.state)])
        _run(["mount", "--make-private", str(self.state)])
        self.net.open()
        return self

    def add(self, label: str, *, hostname: str | None = None,
            address: str | None = None) -> NodeNs:
        """A node `label` (hostname `hostname`, default the label) on the lab's bridge."""
        name = hostname or label
        if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", name):
            raise NodeLabError(f"hostname {name!r} is not a DNS label")
        if label in self.nodes:
            raise NodeLabError(f"node {label!r} already exists in this lab")
        netns = self.net.add_netns(label, address=address)
        home = self.root / label
        private = tuple(p for p in self.private if os.path.lexists(p))
        for p in private:
            self._make_private(home, p)
        uts, mnt = self.state / f"{label}.uts", self.state / f"{label}.mnt"
        uts.touch()
        mnt.touch()
        binds = " && ".join(
            f"mount --bind {shlex.quote(str(home / 'fs' / p.lstrip('/')))} {shlex.quote(p)}"
            for p in sorted(private, key=len))  # a folder before what is inside it
        script = f"hostname {shlex.quote(name)}" + (f" && {binds}" if binds else "")
        node = NodeNs(label=label, hostname=name, netns=netns, home=home, uts=uts, mnt=mnt,
                      private=private)
        self.nodes[label] = node
        _run(["unshare", f"--uts={uts}", f"--mount={mnt}", "--propagation", "private",
              "--", "sh", "-c", script])
        self.write_hosts()
        return node

    def _make_private(self, home: Path, path: str) -> None:
        """The node's copy of `path`: an empty folder with the host's owner and mode, or,
        for a file (/etc/hosts), an empty file the lab fills."""
        where = home / "fs" / path.lstrip("/")
        host = os.stat(path)
        if Path(path).is_dir():
            where.mkdir(parents=True, exist_ok=True)
        else:
            where.parent.mkdir(parents=True, exist_ok=True)
            where.touch()
        os.chown(where, host.st_uid, host.st_gid)
        os.chmod(where, 0o1777 if path in _STICKY else host.st_mode & 0o7777)

    def hosts_text(self) -> str:
        """/etc/hosts of every node: localhost, then each node of the lab by its address."""
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        lines += [f"{n.ip}\t{n.hostname}" for n in self.nodes.values()]
        return "\n".join(lines) + "\n"

    def write_hosts(self) -> None:
        """Rewrite every node's /etc/hosts in place (a bind-mounted file keeps its inode)."""
        text = self.hosts_text()
        for node in self.nodes.values():
            if "/etc/hosts" in node.private:
                with open(node.outside("/etc/hosts"), "w") as f:
                    f.write(text)

    # ---- tearing down ----------------------------------------------------------------
    def sweep(self) -> None:
        """Remove what an earlier run with this prefix left: its processes, namespace
        mounts, network namespaces, links and folders."""
        p = self.prefix
        files = list(self.state.glob("*.uts")) + list(self.state.glob("*.mnt")) if (
            self.state.is_dir()) else []
        netns = [Path("/run/netns") / n for n in _run(["ip", "netns", "list"]).split()
                 if n.startswith(f"{p}-")]
        _kill(_pids_in([*files, *netns]))
        for f in files:
            _umount(f)
        if self.state.is_dir():
            _umount(self.state)
            shutil.rmtree(self.state, ignore_errors=True)
        for ns in netns:
            with contextlib.suppress(NodeLabError, PermanentError):
                ip("netns", "del", ns.name)
        links = re.findall(rf"^\d+: ({re.escape(p)}(?:br|h\d+))[@:]",
                           _run(["ip", "-o", "link"]), flags=re.M)
        for link in links:
            with contextlib.suppress(PermanentError):
                ip("link", "del", link)
        for left in self.base.glob(f"{p}-nodes-*"):
            shutil.rmtree(left, ignore_errors=True)

    def close(self) -> None:
        """Kill what runs in the nodes, unmount, remove the network and the folders."""
        if self._closed or not self._opened:
            self._closed = True
            return
        self._closed = True
        errors = []
        _kill(_pids_in([f for n in self.nodes.values() for f in (n.uts, n.mnt)]
                       + [Path(f"/run/netns/{n.netns.name}") for n in self.nodes.values()]))
        for node in self.nodes.values():
            for f in (node.uts, node.mnt):
                try:
                    _umount(f)
                except NodeLabError as exc:
                    errors.append(str(exc))
        try:
            _umount(self.state)
            shutil.rmtree(self.state, ignore_errors=True)
        except NodeLabError as exc:
            errors.append(str(exc))
        try:
            self.net.close()
        except PermanentError as exc:
            errors.append(str(exc))
        shutil.rmtree(self.root, ignore_errors=True)
        self.nodes.clear()
        if errors:
            raise NodeLabError("node lab cleanup incomplete: " + "; ".join(errors))

    def __enter__(self) -> NodeLab:
        try:
            return self.open()
        except BaseException:
            self._opened = True
            self.close()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
