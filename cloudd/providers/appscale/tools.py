"""Driving the AppScale tools (appscale-tools 3.8.1's `appscale` command) on the master.

The tools are a third-party program (Python 2, run as an executable whose path is a setting
of the type: cloudd never imports them). They act on the deployment folder that holds the
AppScalefile, and keep their state in `$HOME/.appscale/` (the key `<keyname>.key`, the secret
`<keyname>.secret`, the nodes' roles `locations-<keyname>.json`). cloudd runs them without a
terminal and without expect: stdin is /dev/null, the command starts a session of its own (no
controlling tty), the environment is fixed (HOME, PATH, no colours), each run has a bound in
seconds and a bounded output, and its exit status is checked.

What the tools would otherwise ask a person, and how it is avoided (read in 3.8.1's
appscale.py, appscale_tools.py, local_state.py):
- `up` runs the interactive `appscale-add-keypair` (ssh-copy-id, a root password) unless it
  can already log into every node with `~/.appscale/<keyname>.key`: cloudd installs that
  trust first (`cloudd.providers.appscale.sshtrust`).
- `up` appends a random `keyname` and `group` to the AppScalefile when it lacks them, and asks
  for the administrator's account on stdin unless the file gives `admin_user` and
  `admin_pass` (or `test: True`): `interactive_gaps` refuses such a file before any run.
- `down --clean` and `down --terminate` ask for confirmation: cloudd runs plain `down`.

The commands (`plan`): `up` is `appscale up`; `status` is `appscale status --verbose` (only
the verbose form prints a row per node: address, I/L, roles); `down` is `appscale down`.
When a node VM of the deployment is respawned, cloudd runs `down` then `up` (`respawn`),
because 3.8.1 offers no command that takes a node back at an address the deployment already
has: `appscale-add-instances` is another executable that asks the head's AppController to
start roles on *additional* machines (it refuses `master`, so a respawned master is out of
its reach), and nothing in the tools re-installs a node's services in place. `down` then
`up` is the tools' own way through `appscale status`'s states back to a deployment whose every
node was set up by `up`. The `down` of a respawn may fail (a node just respawned may not take
part in stopping): its result is kept and `up` runs anyway; `up` then fails on its own if the
old deployment still answers ("AppScale is already running"), and the provider retries.

Parsing is pure (`parse_status`); running is asyncio (`run`, `up`, `status`, `down`,
`respawn`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml

from cloudd import children, log
from cloudd.errors import PermanentError, TemporaryError
from cloudd.providers.appscale import sshtrust

_log = log.get("providers.appscale")

_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Keys an AppScalefile must give so that `up` neither rewrites it nor prompts (see above).
_FILE_KEYS = ("keyname", "group")
#: How the tools' crash path (LocalState.generate_crash_log) follows the error's message.
_CRASH_NOTE = "A log with more information is available at"


class ToolsRefused(PermanentError):
    """The tools cannot be run as configured (missing executable, an AppScalefile that would
    make them prompt); the message names what to fix."""


class ToolsFailed(TemporaryError):
    """A tools command exited with an error or ran past its bound; `result` keeps its output."""

    def __init__(self, message: str, *, result: ToolsResult, delay: float = 30.0) -> None:
        super().__init__(message, delay=delay)
        self.result = result


class Verb(enum.Enum):
    UP = "up"
    STATUS = "status"
    DOWN = "down"


#: The command line after the executable, per verb.
_ARGS: Mapping[Verb, tuple[str, ...]] = {
    Verb.UP: ("up",),
    Verb.STATUS: ("status", "--verbose"),
    Verb.DOWN: ("down",),
}


@dataclass(frozen=True)
class ToolsSettings:
    """How cloudd runs the tools on the master."""

    appscale: Path
    """The `appscale` executable (a setting of the type): refused when missing or not
    executable."""
    folder: Path
    """The deployment folder: it holds the AppScalefile, and is each command's cwd."""
    home: Path
    """HOME of the tools: they keep their state (key, secret, locations) in `HOME/.appscale`."""
    up_within: float = 1800.0
    """Seconds `up` may take: AppScale starts its datastore and dashboard on every node, which
    takes many minutes on a small deployment; past this the run is killed and failed."""
    status_within: float = 120.0
    """Seconds `status` may take: one AppController query per node."""
    down_within: float = 600.0
    """Seconds `down` may take: the head stops every node's services in turn."""
    output_limit: int = 65536
    """Bytes of a command's output kept (its end): enough for the node table and the tools'
    error, bounded against a tool that loops printing."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Added to the fixed environment (the lab passes its ledger's path here)."""
    prefix: tuple[str, ...] = ()
    """Put before the command line (a node's `exec_prefix`: its namespaces, in tests)."""

    def within(self, verb: Verb) -> float:
        return {Verb.UP: self.up_within, Verb.STATUS: self.status_within,
                Verb.DOWN: self.down_within}[verb]

    def validate(self) -> None:
        for name in ("up_within", "status_within", "down_within"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a positive number of seconds")
        if self.output_limit < 1024:
            raise ValueError("output_limit must be at least 1024 bytes")


@dataclass(frozen=True)
class ToolsCommand:
    """One run of the tools, fully described before it starts."""

    verb: Verb
    argv: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str]
    within: float
    #: False for the `down` of a respawn: its failure is kept, not raised (see the module).
    must_succeed: bool = True


@dataclass(frozen=True)
class ToolsResult:
    command: ToolsCommand
    #: the exit status; None when the run was killed at its bound
    code: int | None
    #: the end of the output (stdout and stderr together), at most `output_limit` bytes
    output: str
    #: bytes of output dropped from the beginning to keep the bound
    dropped: int = 0

    @property
    def ok(self) -> bool:
        return self.code == 0

    def last_line(self) -> str:
        return message_of(self.output)


def message_of(output: str) -> str:
    """The line of the tools' output that says what happened: they end a failure with their
    crash log's place ("A log with more information is available at" and a path), so the line
    before that note when there is one, else the last line."""
    lines = [ln.strip() for ln in strip_colours(output).splitlines() if ln.strip()]
    notes = [i for i, ln in enumerate(lines) if ln.startswith(_CRASH_NOTE)]
    if notes and notes[-1] > 0:
        return lines[notes[-1] - 1]
    return lines[-1] if lines else "(no output)"


def check_executable(path: Path) -> Path:
    """`path` if it is an executable file; else one refusal naming it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ToolsRefused(f"the appscale executable {path} does not exist") from None
    except OSError as exc:
        raise ToolsRefused(f"the appscale executable {path} cannot be read: "
                           f"{exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ToolsRefused(f"the appscale executable {path} is not a file")
    if not os.access(path, os.X_OK):
        raise ToolsRefused(f"the appscale executable {path} is not executable")
    return path


def interactive_gaps(appscalefile: str) -> str | None:
    """Why the tools would rewrite this AppScalefile or prompt on `up`; None when they won't."""
    try:
        doc = yaml.safe_load(appscalefile)
    except yaml.YAMLError as exc:
        return f"the AppScalefile is not YAML: {str(exc).splitlines()[0]}"
    if not isinstance(doc, dict):
        return "the AppScalefile is not a mapping of options"
    missing = [k for k in _FILE_KEYS if not doc.get(k)]
    if missing:
        return (f"the AppScalefile lacks {' and '.join(missing)}: `appscale up` would append "
                "random ones to it")
    if not (doc.get("admin_user") and doc.get("admin_pass")) and doc.get("test") is not True:
        return ("the AppScalefile gives no admin_user and admin_pass: `appscale up` would ask "
                "for the administrator's account on its terminal")
    return None


def environment(settings: ToolsSettings) -> dict[str, str]:
    """The tools' whole environment: nothing inherited from the agent."""
    # the master's ssh and scp wrappers first: they pin the deployment's host key
    # (`sshtrust.tools_wrappers`); without them, the system's programs
    wrappers = sshtrust.wrappers_dir(PurePosixPath(settings.home))
    return {"HOME": str(settings.home), "PATH": f"{wrappers}:{_PATH}", "LANG": "C.UTF-8",
            # termcolor (the tools' coloured messages) writes no escapes with this set.
            "ANSI_COLORS_DISABLED": "1", "TERM": "dumb", "PYTHONUNBUFFERED": "1",
            **settings.env}


def plan(verb: Verb, settings: ToolsSettings, *, must_succeed: bool = True) -> ToolsCommand:
    """The command for `verb` (pure: nothing is checked or run)."""
    return ToolsCommand(verb=verb, argv=(*settings.prefix, str(settings.appscale), *_ARGS[verb]),
                        cwd=settings.folder, env=environment(settings),
                        within=settings.within(verb), must_succeed=must_succeed)


def respawn_plan(settings: ToolsSettings) -> tuple[ToolsCommand, ...]:
    """What a node's respawn takes: `down` (its failure kept), then `up`."""
    return (plan(Verb.DOWN, settings, must_succeed=False), plan(Verb.UP, settings))


# ---- running --------------------------------------------------------------------------------

async def _read_bounded(stream: asyncio.StreamReader, limit: int) -> tuple[bytes, int]:
    kept = bytearray()
    dropped = 0
    while chunk := await stream.read(8192):
        kept += chunk
        if len(kept) > limit:
            dropped += len(kept) - limit
            del kept[:len(kept) - limit]
    return bytes(kept), dropped


async def run(command: ToolsCommand, *, output_limit: int = 65536) -> ToolsResult:
    """Run one command to its end or its bound. Raises `ToolsFailed` when it must succeed and
    did not; otherwise returns its result (the caller reads `ok`)."""
    _log.info("appscale_tools_started", verb=command.verb.value, cwd=str(command.cwd))
    proc = await asyncio.create_subprocess_exec(
        *command.argv, cwd=command.cwd, env=dict(command.env),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    assert proc.stdout is not None
    reader = asyncio.ensure_future(_read_bounded(proc.stdout, output_limit))
    code: int | None = None
    # Past the bound, or cancelled: the tools' whole session goes (their ssh children too), so
    # that nothing of a killed run keeps acting on the deployment. `reader` reads the pipe to
    # its end meanwhile; a pipe still held by a process that left the session is closed after
    # children.PIPES_WITHIN, and `reader` ends with what it read.
    async with children.ended(proc, reading=reader):
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(command.within):
                code = await proc.wait()
    out, dropped = reader.result()
    result = ToolsResult(command, code, out.decode(errors="replace"), dropped)
    _log.info("appscale_tools_finished", verb=command.verb.value, code=code,
              last=result.last_line())
    if not result.ok and command.must_succeed:
        why = (f"ran past its bound of {command.within:g}s" if code is None
               else f"exited with {code}")
        raise ToolsFailed(f"`appscale {' '.join(_ARGS[command.verb])}` {why}: "
                          f"{result.last_line()}", result=result)
    return result


def ready(settings: ToolsSettings) -> None:
    """Refuse, naming it, what would make `up` fail or prompt: the executable, the
    AppScalefile and its gaps."""
    check_executable(settings.appscale)
    try:
        text = (settings.folder / "AppScalefile").read_text()
    except OSError as exc:
        raise ToolsRefused(f"no AppScalefile in {settings.folder}: {exc.strerror}") from None
    gap = interactive_gaps(text)
    if gap is not None:
        raise ToolsRefused(f"{settings.folder / 'AppScalefile'}: {gap}")


async def up(settings: ToolsSettings) -> ToolsResult:
    ready(settings)
    return await run(plan(Verb.UP, settings), output_limit=settings.output_limit)


async def down(settings: ToolsSettings) -> ToolsResult:
    check_executable(settings.appscale)
    return await run(plan(Verb.DOWN, settings), output_limit=settings.output_limit)


async def status(settings: ToolsSettings) -> StatusReport:
    check_executable(settings.appscale)
    result = await run(plan(Verb.STATUS, settings), output_limit=settings.output_limit)
    return parse_status(result.output)


async def respawn(settings: ToolsSettings) -> tuple[ToolsResult, ...]:
    """A node of the deployment was respawned: `down`, then `up` (see the module docstring)."""
    ready(settings)
    results = []
    for command in respawn_plan(settings):
        results.append(await run(command, output_limit=settings.output_limit))
        if not results[-1].ok:
            _log.warning("appscale_tools_down_failed", reason=results[-1].last_line())
    return tuple(results)


# ---- status ---------------------------------------------------------------------------------

class NodeState(enum.Enum):
    """A node in `appscale status --verbose`, from its I/L column."""

    #: `+/+`: initialized and loaded
    LOADED = "loaded"
    #: `+/-`: initialized, still loading
    INITIALIZED = "initialized"
    #: `-/...`: not initialized yet
    STARTING = "starting"
    #: `?`: the head knows the node but the node reported nothing
    UNREPORTED = "unreported"


class Summary(enum.Enum):
    """The deployment's line in `appscale status`."""

    UP = "up"
    STARTING = "starting"
    PARTIAL = "partial"  # some nodes did not report
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class NodeFact:
    address: str
    private_address: str
    roles: tuple[str, ...]
    state: NodeState


@dataclass(frozen=True)
class StatusReport:
    summary: Summary
    nodes: tuple[NodeFact, ...]

    def node(self, address: str) -> NodeFact | None:
        return next((n for n in self.nodes if address in (n.address, n.private_address)), None)


_COLOURS = re.compile(r"\x1b\[[0-9;]*m")
_IP = r"\d{1,3}(?:\.\d{1,3}){3}"
# A row of the node table: public, private, I/L, CPU%xCORES, MEMORY%, DISK% (`"/" => 3.0`
# pairs, which hold spaces), LOADAVG (three numbers), ROLES (the rest).
_ROW = re.compile(
    rf"^(?P<public>{_IP})\s+(?P<private>{_IP})\s+(?P<il>[+-]/[+-])\s+\S+\s+\S+\s+.*?"
    r"\s(?P<load>\d+\.\d+ \d+\.\d+ \d+\.\d+)(?:\s+(?P<roles>.*?))?\s*$")
_INVISIBLE = re.compile(rf"^\?\s+(?P<private>{_IP})(?:\s+\?)+\s*$")
_STATES = {"+/+": NodeState.LOADED, "+/-": NodeState.INITIALIZED}


def strip_colours(text: str) -> str:
    return _COLOURS.sub("", text)


def parse_status(text: str) -> StatusReport:
    """The facts of `appscale status --verbose`'s output: a row per node, and the summary."""
    nodes = []
    summary = Summary.UNKNOWN
    for raw in strip_colours(text).splitlines():
        line = raw.strip()
        if m := _ROW.match(line):
            nodes.append(NodeFact(address=m["public"], private_address=m["private"],
                                  roles=tuple((m["roles"] or "").split()),
                                  state=_STATES.get(m["il"], NodeState.STARTING)))
        elif m := _INVISIBLE.match(line):
            nodes.append(NodeFact(address=m["private"], private_address=m["private"],
                                  roles=(), state=NodeState.UNREPORTED))
        elif line.startswith("AppScale is up."):
            summary = Summary.UP
        elif line.startswith("AppScale is starting"):
            summary = Summary.STARTING
        elif re.match(r"There are \d+ nodes that didn't report", line):
            summary = Summary.PARTIAL
    return StatusReport(summary=summary, nodes=tuple(nodes))
