"""`cloudd-cli apply | stop | cleanup | maintenance | plan`: change a running cloud.

Every command goes to the local agent, which hands it to the cloud's leader (or, for `apply`
on a machine that is not a member of the cloud, to one of its pool hosts) and prints who
performed it. `apply` validates the file here first: an invalid manifest is refused with its
problems and nothing is sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
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

    p = subparsers.add_parser("plan", help="what the leader would do now, and what waits")
    p.add_argument("cloud", nargs="?", metavar="CLOUD")
    add_socket_option(p)
    p.set_defaults(func=lambda a: _call(a, "plan", cloud=a.cloud))


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
    if op in ("apply", "stop"):
        handed = result.get("handed_to")
        who = result.get("accepted_by")
        head = (f"this machine is not part of cloud {result.get('cloud')}: handed to "
                f"{handed}; {who} carries on" if handed else f"{who} carries on")
        return (f"{head} (cloud {result.get('cloud')}, ensure {result.get('ensure')}, "
                f"installed as {result.get('path')})")
    if op == "plan":
        lines = [f"plan of leader {result.get('leader')} (term {result.get('term')}):"]
        lines += [f"  {a}" for a in result.get("actions", [])] or ["  nothing to do"]
        if result.get("waiting"):
            lines += ["waiting:"] + [f"  {w}" for w in result["waiting"]]
        return "\n".join(lines)
    if op == "maintenance":
        held = result.get("maintenance") or []
        return "in maintenance: " + (", ".join(held) if held else "nothing")
    return json.dumps(result)
