"""`cloudd-cli apply | stop | cleanup | maintenance | drain | undrain | plan | history |
rollback`: change a running cloud, and read its generations.

Every command goes to the local agent, which hands it to the cloud's leader (or, for `apply`
on a machine that is not a member of the cloud, to one of its pool hosts) and prints who
performed it. `apply` validates the file here first: an invalid manifest is refused with its
problems and nothing is sent. What changes the cloud is done once a majority of its pool
hosts has it in the cloud's record (`drain HOST` too: its nodes then move elsewhere one
role-safe step at a time, and `inspect` shows what waits and why); `history` lists the
record's generations (`--diff A B`: what changed from A to B), and `rollback CLOUD N` makes
generation N's text the next one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from cloudd.client.api import ApiClient, ApiError
from cloudd.commands.inspect import add_socket_option
from cloudd.config.manifest import load_cloud
from cloudd.config.portable import portable_text
from cloudd.errors import ConfigError
from cloudd.providers.catalog import catalog


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("apply", help="install a manifest as the cloud's new generation",
                              description=__doc__.splitlines()[0])
    p.add_argument("file", type=Path, metavar="FILE")
    add_socket_option(p)
    p.set_defaults(func=run_apply)

    p = subparsers.add_parser("stop", help="stop a cloud (its manifest becomes ensure: stopped)")
    p.add_argument("cloud", metavar="CLOUD")
    add_socket_option(p)
    p.set_defaults(func=lambda a: _call(a, "stop", cloud=a.cloud))

    p = subparsers.add_parser("cleanup", help="forget a node's failures, or restart a service "
                                              "(NODE/SERVICE), FATAL included")
    p.add_argument("subject", metavar="NODE[/SERVICE]")
    add_socket_option(p)
    p.set_defaults(func=lambda a: _call(a, "cleanup", node=a.subject.partition("/")[0],
                                        service=a.subject.partition("/")[2] or None))

    p = subparsers.add_parser("maintenance", help="pause (on) or resume (off) reconciling a "
                                                  "cloud or one node, stopping nothing")
    p.add_argument("state", choices=("on", "off"))
    p.add_argument("subject", nargs="?", metavar="CLOUD|NODE",
                   help="a node of the agent's cloud, or the cloud (default: the whole cloud)")
    add_socket_option(p)
    p.set_defaults(func=run_maintenance)

    p = subparsers.add_parser("drain", help="place nothing new on a pool host and move its "
                                            "nodes elsewhere, one role-safe step at a time")
    p.add_argument("host", metavar="HOST")
    p.add_argument("--move-stateful", action="store_true",
                   help="move its stateful nodes (a database: its local disk does not follow) "
                        "and batch compute nodes (running jobs are killed) too, last")
    add_socket_option(p)
    p.set_defaults(func=lambda a: _call(a, "drain", host=a.host,
                                        move_stateful=a.move_stateful or None))

    p = subparsers.add_parser("undrain", help="let a drained host take placements again "
                                              "(nothing is moved back)")
    p.add_argument("host", metavar="HOST")
    add_socket_option(p)
    p.set_defaults(func=lambda a: _call(a, "undrain", host=a.host))

    p = subparsers.add_parser("plan", help="what the leader would do now, what waits, and "
                                           "its elastic roles' last decisions")
    p.add_argument("cloud", nargs="?", metavar="CLOUD")
    add_socket_option(p)
    p.set_defaults(func=lambda a: _call(a, "plan", cloud=a.cloud))

    p = subparsers.add_parser("history", help="the cloud's manifest generations (--diff A B: "
                                              "what changed between two of them)")
    p.add_argument("cloud", metavar="CLOUD")
    p.add_argument("--diff", nargs=2, type=int, metavar=("A", "B"),
                   help="a unified diff from generation A's text to B's (secrets' contents "
                        "show as the pool hosts hold them)")
    add_socket_option(p)
    p.set_defaults(func=run_history)

    p = subparsers.add_parser("rollback", help="make an earlier generation's text the cloud's "
                                               "next generation")
    p.add_argument("cloud", metavar="CLOUD")
    p.add_argument("number", type=int, metavar="N", help="the generation to go back to")
    add_socket_option(p)
    p.set_defaults(func=lambda a: _call(a, "rollback", cloud=a.cloud, number=a.number))


def run_apply(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        cloud = load_cloud(args.file, catalog())
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return 1
    text = portable_text(cloud, args.file.read_text())
    return _call(args, "apply", out=out, text=text, cloud=cloud.name)


def run_maintenance(args: argparse.Namespace) -> int:
    subject = args.subject
    return _call(args, "maintenance", on=args.state == "on", subject=subject,
                 cloud=None)


def run_history(args: argparse.Namespace) -> int:
    if args.diff:
        a, b = args.diff
        return _call(args, "diff", cloud=args.cloud, a=a, b=b)
    return _call(args, "history", cloud=args.cloud)


def _call(args: argparse.Namespace, op: str, *, out: TextIO | None = None,
          **fields: Any) -> int:
    out = out or sys.stdout
    client = ApiClient(args.socket, timeout=args.timeout)
    try:
        result = asyncio.run(client.call(op, **{k: v for k, v in fields.items()
                                                if v is not None}))
    except ApiError as e:
        print(f"cloudd-cli {op}: {e}", file=sys.stderr)
        return 1
    print(_describe(op, result), file=out)
    return 0


def _describe(op: str, result: Any) -> str:
    if not isinstance(result, dict):
        return json.dumps(result)
    if op in ("apply", "stop", "rollback"):
        handed = result.get("handed_to")
        who = result.get("accepted_by")
        head = (f"this machine is not part of cloud {result.get('cloud')}: handed to "
                f"{handed}; {who} carries on" if handed else f"{who} carries on")
        number = result.get("generation")
        where = (f"generation {number}, recorded by a majority of the pool hosts"
                 if number else f"installed as {result.get('path')}")
        return f"{head} (cloud {result.get('cloud')}, ensure {result.get('ensure')}, {where})"
    if op == "history":
        return history_text(result)
    if op == "diff":
        return str(result.get("diff") or f"generations {result.get('a')} and "
                                          f"{result.get('b')} have the same text").rstrip("\n")
    if op == "plan":
        lines = [f"plan of leader {result.get('leader')} (term {result.get('term')}):"]
        lines += [f"  {a}" for a in result.get("actions", [])] or ["  nothing to do"]
        if result.get("waiting"):
            lines += ["waiting:"] + [f"  {w}" for w in result["waiting"]]
        if result.get("elastic"):
            lines += ["elastic roles:"] + [f"  {e}" for e in result["elastic"]]
        if result.get("decided"):
            lines += ["elastic decisions (this leader's, oldest first):"] + [
                f"  {_clock(d.get('at'))} term {d.get('term')}: {d.get('what')} "
                f"{d.get('node')}: {d.get('reason')}" for d in result["decided"]]
        return "\n".join(lines)
    if op in ("drain", "undrain"):
        drained = [f"{d.get('host')}{' (move stateful)' if d.get('move_stateful') else ''}"
                   for d in result.get("drained") or []]
        return (f"{result.get('leader')} recorded it (cloud {result.get('cloud')}); drained: "
                + (", ".join(drained) if drained else "nothing")
                + ("; `cloudd-cli inspect` shows the drain's progress" if drained else ""))
    if op == "maintenance":
        held = result.get("maintenance") or []
        return "in maintenance: " + (", ".join(held) if held else "nothing")
    return json.dumps(result)


def _clock(at: Any) -> str:
    """A wall time of the leader's as UTC, to the second."""
    try:
        return datetime.fromtimestamp(float(at), UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def history_text(result: dict[str, Any]) -> str:
    """The record's generations, oldest first, the one in force marked with `*`."""
    lines = [f"history of {result.get('cloud')} (leader {result.get('leader')}, term "
             f"{result.get('term')}, record version {result.get('version')}):",
             f"     {'GEN':>4}  {'WHEN (UTC)':<19}  {'BY':<12}  {'ENSURE':<8}  "
             f"{'DIGEST':<12}  WHAT"]
    for g in result.get("generations") or []:
        mark = "*" if g.get("number") == result.get("in_force") else " "
        when = datetime.fromtimestamp(float(g.get("at", 0)), UTC).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(f"   {mark} {g.get('number'):>4}  {when:<19}  {g.get('by', ''):<12}  "
                     f"{g.get('ensure', ''):<8}  {str(g.get('digest', ''))[:12]:<12}  "
                     f"{g.get('what', '')}")
    held = result.get("maintenance") or []
    lines.append("in maintenance: " + (", ".join(held) if held else "nothing"))
    return "\n".join(lines)
