"""What a provider asks the supervisor to run: services and their probes, as plain data.

Providers build these from a node's assignment; the supervisor (`cloudd.providers.supervisor`)
runs them. Keeping the description separate from the runner lets providers be tested without
starting anything, and lets the supervision policy stay pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class ProbeKind(StrEnum):
    EXEC = "exec"  # run argv; exit status 0 passes
    TCP = "tcp"  # connect to host:port
    HTTP = "http"  # GET url; a 2xx or 3xx status passes


@dataclass(frozen=True)
class ProbeSpec:
    """One health check of a service."""

    kind: ProbeKind
    #: EXEC: the command line.
    argv: tuple[str, ...] = ()
    #: TCP: where to connect.
    host: str = "127.0.0.1"
    port: int = 0
    #: HTTP: the URL to GET.
    url: str = ""
    #: Seconds between two runs of the probe.
    period: float = 2.0
    #: Seconds one run may take before it counts as a failure.
    timeout: float = 2.0
    #: Consecutive failures before the probe is failing (liveness: the service is restarted).
    failure_threshold: int = 3


@dataclass(frozen=True)
class ServiceSpec:
    """One supervised process of a role."""

    name: str
    argv: tuple[str, ...]
    #: The user the process runs as (the provider names it; root only where the program
    #: drops privileges itself, like nginx's master).
    user: str = "root"
    env: tuple[tuple[str, str], ...] = ()
    cwd: str = "/"
    #: Names of services on the same node that must be running (and ready) first.
    depends_on: tuple[str, ...] = ()
    #: Seconds the process must stay up before its start counts (supervisord's startsecs).
    start_grace: float = 1.0
    #: Seconds between SIGTERM to the process group and SIGKILL.
    stop_grace: float = 10.0
    #: Failing liveness restarts the service; readiness only reports.
    liveness: ProbeSpec | None = None
    readiness: ProbeSpec | None = None
    #: How to make the service re-read its configuration without a restart: a command to
    #: run (e.g. `nginx -s reload`), or empty to send SIGHUP, or None when only a restart works.
    reload_argv: tuple[str, ...] | None = None
    #: The file the process's output is appended to (None: the agent's log). Root opens it,
    #: so its folder must be one only root writes (a role's `log/`), never a folder of the
    #: service's own user: otherwise it is refused and the output goes to the agent's log.
    log_path: str | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False)
