"""`cloudd`: the agent's entry point (the console script systemd runs).

`cloudd --config PATH --check` validates the agent settings and every manifest in their
`manifest_dir`, prints what is wrong, and exits 0 or 1 without starting anything. Without
`--check` it runs the agent: an asyncio loop (uvloop when importable) with a Runner of named
root tasks, sd_notify READY/WATCHDOG/STOPPING, and SIGTERM/SIGINT as the one way to stop.
A node booting takes its settings from its identity instead (`cloudd.daemon.node.boot`):
`--from-cmdline /proc/cmdline` (the test guest) or `--from-identity
/etc/cloudd/identity.json` (what a real image's seed made cloud-init write).

Root tasks for now: `watchdog` (when systemd asks for pings) and `manifests` (rescans the
manifest folder). The election, transport, host and node tasks are added through
`Agent.runner.add(name, factory)` before `Agent.run()`.

State. Every start makes the state folder root's (`STATE_DIR_MODE`: others may only pass
through it, to the node images and node roots below it that qemu and role services reach by
path) and its `clouds/` folders private (0700), also when an older agent or an operator made
them looser. Nothing read from the state folder stops the agent: the event log and the term
files set aside what they cannot read (docs/operations.md, "State files").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cloudd import log
from cloudd.client.api import ApiError
from cloudd.config.agent import DEFAULT_PATH, AgentSettings, load_agent
from cloudd.config.registry import Change, ManifestEvent, ManifestRegistry
from cloudd.daemon.base.eventlog import EventLog
from cloudd.daemon.base.runner import Runner
from cloudd.daemon.base.sdnotify import Notifier, watchdog_interval
from cloudd.daemon.member.clouds import Above, Clouds
from cloudd.daemon.member.manifests import Checker, ManifestFolder
from cloudd.daemon.node.boot import (
    NODE_STATE,
    Seed,
    read_identity,
    read_identity_file,
    settings_for,
)
from cloudd.daemon.node.converge import NodeSide
from cloudd.daemon.operator.api import ApiServer
from cloudd.daemon.operator.commands import LOCAL_OPS, Operator
from cloudd.daemon.operator.inspectview import Inspector
from cloudd.daemon.operator.queries import events_stream
from cloudd.durable import private_dir
from cloudd.errors import ConfigError, PermanentError
from cloudd.providers.catalog import catalog
from cloudd.providers.registry import unprovided
from cloudd.vmctl.identity import NodeIdentity

#: Seconds, beyond the services' own stop grace, that shutdown may take before the agent
#: abandons its tasks and exits anyway (systemd would SIGKILL it a little later).
STOP_MARGIN = 5.0

_NOTIFY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

#: The state folder's mode: root's alone to list and write; others may pass through to what
#: they are given by path (qemu to the default image folder /var/lib/cloudd/images, a role's
#: service user to its node root), each private or not by its own mode.
STATE_DIR_MODE = 0o711
#: Where each cloud's terms, records and holds are kept: root's alone.
CLOUDS_DIR = "clouds"


def private_state(state_dir: Path) -> None:
    """Make the state folder and its clouds' folders with their modes, or restore them."""
    private_dir(state_dir, mode=STATE_DIR_MODE)
    clouds = state_dir / CLOUDS_DIR
    private_dir(clouds)
    for folder in clouds.iterdir():
        if folder.is_dir() and not folder.is_symlink():
            private_dir(folder)


class Agent:
    """One agent process: its settings, its manifests, its root tasks."""

    def __init__(self, settings: AgentSettings, *, config_path: Path,
                 env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        self.settings = settings
        self.log = log.get("agent", node=settings.name)
        self.notifier = Notifier(env)
        # An agent with no libvirt connection (a node) never renders domains: the hosts'
        # template file need not exist where it runs.
        self.registry = ManifestRegistry(settings.manifest_dir, catalog(), exclude=[config_path],
                                         with_template=settings.libvirt.uri is not None)
        #: Called (on the loop) with every manifest event; the controller subscribes here.
        self.manifest_listeners: list[Callable[[ManifestEvent], None]] = []
        self.runner = Runner(stop_timeout=settings.supervisor.stop_grace + STOP_MARGIN)
        self._watchdog = watchdog_interval(env)
        if self._watchdog is not None:
            self.runner.add("watchdog", self._ping_watchdog)
        self.runner.add("manifests", self._watch_manifests)
        self._rescan = asyncio.Event()
        private_state(settings.state_dir)
        self.events = EventLog.in_state_dir(settings.state_dir, settings=settings.events)
        #: where received manifests are checked: a worker process, stopped with the agent
        self.checker = Checker()
        manifests = ManifestFolder(settings.manifest_dir, locate=self.registry.path_of,
                                   rescan=self.rescan, checker=self.checker)
        self.clouds = Clouds(settings, events=self.events, manifests=manifests,
                             node_side_factory=NodeSide)
        self.manifest_listeners.append(self.clouds.on_manifest)
        self.operator = Operator(me=settings.name, member=self.clouds.serving,
                                 request=self.clouds.request, ask_outside=self.clouds.ask_outside,
                                 manifests=manifests, events=self.events)
        self.inspector = Inspector(me=settings.name, snapshot=self.clouds.snapshot,
                                   request=self.clouds.request, events=self.events)
        self.api = ApiServer(settings.api_socket)
        self.api.register("status", self._api_status)
        self.api.register("inspect", self._api_inspect)
        self.api.register_stream("events", events_stream(self.events))
        for op in LOCAL_OPS:
            self.api.register(op.value, functools.partial(self.operator.command, op))
        above = Above(operator_request=self.operator.answer,
                      inspect_wanted=self.inspector.answer, hand_over=self.operator.hand_over)
        self.runner.add("clouds", functools.partial(self.clouds.run, above=above))
        if settings.metrics.enabled:
            # prometheus_client is loaded only by an agent that serves metrics
            from cloudd.daemon.operator.metrics import Metrics

            self.metrics = Metrics()
            self.runner.add("metrics", self._serve_metrics)
        self.runner.add("api", self._serve_api)

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (exit 0) or a root task fails (exit 1)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.runner.stop, sig.name)
        try:
            outcome = await self.runner.run(on_started=self._started,
                                            on_stopping=self._stopping)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            self.notifier.close()
            self.checker.close()
            self.events.close()
        self.log.info("agent_stopped", reason=outcome.reason, ok=outcome.ok)
        return 0 if outcome.ok else 1

    async def _serve_api(self) -> None:
        await self.api.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.api.close()

    async def _serve_metrics(self) -> None:
        from cloudd.daemon.operator.metrics import serve_from_settings
        from cloudd.daemon.operator.metricsfeed import MetricsFeed

        endpoint = serve_from_settings(self.metrics, self.settings.metrics)
        try:
            await MetricsFeed(self.clouds.snapshot, self.metrics, events=self.events).run()
        finally:
            if endpoint is not None:
                endpoint.close()

    async def _api_status(self, args: dict[str, Any]) -> Any:
        return self.inspector.status()

    async def _api_inspect(self, args: dict[str, Any]) -> Any:
        cloud = args.get("cloud")
        if cloud is not None and not isinstance(cloud, str):
            raise ApiError(f"inspect: 'cloud' must be a cloud name or null, got {cloud!r}")
        doc = await self.inspector.inspect(cloud)
        # built off the loop, and made JSON off it too: for a cloud of thousands of nodes
        # that takes a tenth of a second
        return await asyncio.to_thread(doc.to_json)

    def _started(self) -> None:
        self.notifier.ready()
        self.log.info("agent_started", listen=f"{self.settings.listen.address}:"
                      f"{self.settings.listen.port}", watchdog=self._watchdog)

    def _stopping(self) -> None:
        self.notifier.stopping()

    async def _ping_watchdog(self) -> None:
        assert self._watchdog is not None
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(self._watchdog)

    async def _watch_manifests(self) -> None:
        while True:
            # Parsing is blocking file I/O: keep it off the loop.
            for event in await asyncio.to_thread(self.registry.scan):
                self._log_manifest(event)
                for listener in self.manifest_listeners:
                    listener(event)
            # asyncio.timeout, not wait_for: on 3.11 wait_for can lose a cancellation that
            # arrives together with the wake-up, and the agent would not stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.reconcile.manifest_poll):
                    await self._rescan.wait()
            self._rescan.clear()

    def rescan(self) -> None:
        """Look at the manifest folder now (a manifest was just written into it)."""
        self._rescan.set()

    def _log_manifest(self, event: ManifestEvent) -> None:
        cloud = event.cloud
        if event.change is Change.LOADED and cloud is not None:
            self.log.info("manifest_loaded", cloud=cloud.name, path=str(event.path),
                          digest=cloud.digest[:12], nodes=len(cloud.nodes))
        elif event.change is Change.REFUSED:
            self.log.warning("manifest_refused", path=str(event.path),
                             cloud=cloud.name if cloud else None,
                             kept=cloud.digest[:12] if cloud else None,
                             problems=[str(p) for p in event.problems])
        elif cloud is not None:
            self.log.info("manifest_removed", cloud=cloud.name, path=str(event.path))


def check(settings: AgentSettings, *, config_path: Path, out: Callable[[str], None]) -> int:
    """`--check`: every manifest of manifest_dir; 0 when all are valid."""
    registry = ManifestRegistry(settings.manifest_dir, catalog(), exclude=[config_path])
    out(f"{config_path}: ok")
    bad = False
    for event in registry.scan():
        if event.change is Change.REFUSED:
            bad = True
            for problem in event.problems:
                out(str(problem))
        else:
            out(f"{event.path}: ok")
    return 1 if bad else 0


def _event_loop_runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cloudd", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_PATH, metavar="PATH",
                        help=f"agent settings (default {DEFAULT_PATH})")
    boot = parser.add_mutually_exclusive_group()
    boot.add_argument("--from-cmdline", type=Path, metavar="FILE",
                      help="a node booting: take this agent's identity from a kernel "
                           "command line (e.g. /proc/cmdline) instead of --config")
    boot.add_argument("--from-identity", type=Path, metavar="FILE",
                      help="a node booting: take this agent's identity from the file its "
                           "seed wrote (e.g. /etc/cloudd/identity.json; its certificates in "
                           "the pki folder beside it) instead of --config")
    parser.add_argument("--state-dir", type=Path, metavar="DIR",
                        help=f"with --from-cmdline or --from-identity: where to keep state "
                             f"(default {NODE_STATE})")
    parser.add_argument("--check", action="store_true",
                        help="validate the settings and every manifest, then exit 0 or 1")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    boot: tuple[NodeIdentity, tuple[Seed, ...]] | None = None
    source = args.from_cmdline or args.from_identity
    try:
        if source is not None:
            ident = (read_identity(source) if args.from_cmdline is not None
                     else read_identity_file(source))
            settings, seeds = settings_for(ident, state_dir=args.state_dir or NODE_STATE)
            boot = (ident, seeds)
        else:
            settings = load_agent(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except PermanentError as exc:  # a bad identity (IdentityError), or none to read
        print(f"{source}: {exc}", file=sys.stderr)
        return 1
    if args.check:
        return check(settings, config_path=args.config, out=print)
    missing = unprovided(catalog())
    if missing:  # an install whose providers do not match what it validates is broken
        for sentence in missing:
            print(f"cloudd: {sentence}", file=sys.stderr)
        return 1
    log.configure(level=settings.log.level)
    env = dict(os.environ)
    # The services this agent supervises must not inherit systemd's socket and watchdog.
    for key in _NOTIFY_ENV:
        os.environ.pop(key, None)
    agent = Agent(settings, config_path=args.config, env=env)
    if boot is not None:
        agent.clouds.seed(boot[0], boot[1], agent.rescan)
    with _event_loop_runner() as runner:
        return runner.run(agent.run())


if __name__ == "__main__":
    sys.exit(main())
