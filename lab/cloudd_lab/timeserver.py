"""A lab pool host's time server: chronyd in the host's network namespace, as on a real host.

A node takes its cloud's pool hosts as its only time servers (the chrony.conf its seed
brings); a real pool host serves them with chrony (`allow SUBNET`, `local stratum 10`: the
drop-in `cloudd-cli bootstrap` writes, which the lab's servers take too). In a lab the pool
hosts are agents in network namespaces of this machine, so each gets a chronyd of its own,
which must leave this machine alone:

- `-x`: it never adjusts this machine's clock (it serves the clock as it is, at stratum 10);
- bound to its namespace's address only (`bindaddress`), serving the lab's subnet only;
- its configuration, pid file, drift file, command socket and log in a folder of its own
  (the lab's, removed with it), never /run/chrony or /var/lib/chrony;
- no UDP command port; `chronyc -h SOCKET` (`TimeServer.chronyc`) reaches it.

`query` asks a server for the time from another namespace, as a node would, without setting
any clock (`chronyd -Q`). Blocking subprocesses: lab and test tooling only.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudd.commands.bootstrap.timeserver import drop_in

CHRONYD = "/usr/sbin/chronyd"
#: Seconds for a started chronyd to open its sockets (it takes milliseconds).
START_TIMEOUT = 10.0


class TimeServerError(RuntimeError):
    """A lab time server did not start; the message says why and where its log is."""


@dataclass
class TimeServer:
    """One chronyd -x serving `allow` from `address` inside namespace `netns`."""

    netns: str
    address: str
    #: the subnet it serves (the lab's)
    allow: str
    #: its own folder (made 0700): configuration, pid, drift, socket, log
    folder: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: Any = field(default=None, repr=False)

    @property
    def socket(self) -> Path:
        return self.folder / "chronyd.sock"

    @property
    def log_path(self) -> Path:
        return self.folder / "chronyd.log"

    def config(self) -> str:
        """What bootstrap gives a pool host (`drop_in`), and where this one lives."""
        return (drop_in([self.allow])
                + f"# lab time server in {self.netns}: never adjusts this machine's clock (-x)\n"
                f"bindaddress {self.address}\n"
                f"cmdport 0\nbindcmdaddress {self.socket}\n"
                f"pidfile {self.folder / 'chronyd.pid'}\n"
                f"driftfile {self.folder / 'chrony.drift'}\n")

    def start(self) -> TimeServer:
        """Start it and wait until it listens; TimeServerError if it does not."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        conf = self.folder / "chrony.conf"
        conf.write_text(self.config())
        self.socket.unlink(missing_ok=True)  # a stopped server's: not a sign of this one
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
        # -d: in the foreground, logging to the file; -u root: its files stay the lab's.
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, CHRONYD, "-x", "-d", "-u", "root", "-f",
             str(conf)], stdout=self._log, stderr=self._log, start_new_session=True)
        # The NTP socket is bound before the command socket is made.
        end = time.monotonic() + START_TIMEOUT
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                raise TimeServerError(f"chronyd in {self.netns} did not start: "
                                      f"{self.log_path.read_text(errors='replace')[-400:]}")
            time.sleep(0.05)
        return self

    def chronyc(self, *args: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
        """`chronyc ARGS` against this server's command socket."""
        return subprocess.run(["chronyc", "-h", str(self.socket), "-n", *args],
                              capture_output=True, text=True, timeout=timeout, check=False)

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL after 10 s); safe to call twice."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None


def query(netns: str, server: str, *, folder: Path,
          timeout: int = 10) -> subprocess.CompletedProcess[str]:
    """Ask `server` for the time from namespace `netns`, as a node's chrony would, setting no
    clock (`chronyd -Q`): exit 0 and "System clock wrong by ... (ignored)" when it answers.
    `folder` holds its pid file (so that it never looks at /run/chrony)."""
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700, parents=True)
    return subprocess.run(
        ["ip", "netns", "exec", netns, CHRONYD, "-Q", "-t", str(timeout), "-u", "root",
         f"server {server} iburst maxsamples 1", f"pidfile {folder / 'query.pid'}"],
        capture_output=True, text=True, timeout=timeout + 20, check=False)
