"""`cloudd-cli inspect [CLOUD] [--json] [--watch]`: the cloud on one screen, from any agent.

Asks the local agent's API socket for the inspect document (cloudd.client.inspectdoc),
validates it, and prints it as text (coloured on a terminal only) or as JSON. `--watch`
redraws in place every `--interval` seconds until Ctrl-C, and keeps going while the agent
restarts: a frame that cannot be fetched shows why instead of ending the watch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from cloudd.client.api import ApiClient, ApiError
from cloudd.client.inspectdoc import InspectDoc
from cloudd.client.render import render
from cloudd.config.agent import DEFAULT_API_SOCKET
from cloudd.errors import ClouddError

#: The agent settings' default `api_socket`.
DEFAULT_SOCKET: Path = DEFAULT_API_SOCKET

#: Clear the screen and go home: a watch frame replaces the previous one.
CLEAR = "\x1b[H\x1b[2J"


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def add_socket_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", type=Path, default=DEFAULT_SOCKET, metavar="PATH",
                        help=f"the agent's API socket (default {DEFAULT_SOCKET})")
    parser.add_argument("--timeout", type=positive_seconds, default=10.0, metavar="S",
                        help="seconds to wait for the agent's answer (default 10)")


def use_color(out: TextIO) -> bool:
    """Colour only on a terminal, and not when the operator asked for none (no-color.org)."""
    return out.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "inspect", help="show a cloud's leader, hosts, nodes, services and failures",
        description="Show a cloud (or every cloud the agent knows) on one screen: leader and "
                    "quorum, hosts, nodes, services, failing actions, last events. Any agent "
                    "may answer; the output says whether its view came from the leader.")
    parser.add_argument("cloud", nargs="?", metavar="CLOUD", help="only this cloud")
    parser.add_argument("--json", action="store_true",
                        help="print the document as JSON (keys in docs/inspect.md)")
    parser.add_argument("--watch", action="store_true",
                        help="redraw every --interval seconds until Ctrl-C")
    parser.add_argument("--interval", type=positive_seconds, default=2.0, metavar="S",
                        help="seconds between two redraws with --watch (default 2)")
    add_socket_option(parser)
    parser.set_defaults(func=run)


def fetch(socket: Path, cloud: str | None, *, timeout: float) -> InspectDoc:
    """One document from the agent; `ClouddError` with one sentence when there is none."""

    async def ask() -> Any:
        return await ApiClient(socket, timeout=timeout).call("inspect", cloud=cloud)

    try:
        answer = asyncio.run(ask())
    except TimeoutError:
        raise ApiError(f"the agent on {socket} did not answer within {timeout:g} s") from None
    except ValueError as e:  # not JSON: whatever listens there is not a cloudd agent
        raise ApiError(f"the answer on {socket} is not cloudd's: {e}") from None
    except OSError as e:
        raise ApiError(f"cannot talk to the agent on {socket}: {e.strerror or e}") from None
    return InspectDoc.from_json(answer)


def frame(args: argparse.Namespace, *, color: bool, width: int | None) -> tuple[str, bool]:
    """One screenful (text or one JSON document) and whether it was fetched."""
    try:
        doc = fetch(args.socket, args.cloud, timeout=args.timeout)
    except ClouddError as e:
        return f"cloudd-cli inspect: {e}\n", False
    if args.json:
        indent = None if args.watch else 2
        return json.dumps(doc.to_json(), indent=indent) + "\n", True
    return render(doc, now=time.time(), color=color, width=width), True


def run(args: argparse.Namespace, *, out: TextIO | None = None,
        err: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    tty, color = out.isatty(), use_color(out)
    width = shutil.get_terminal_size().columns if tty else None
    if not args.watch:
        text, ok = frame(args, color=color, width=width)
        (out if ok else err).write(text)
        return 0 if ok else 1
    try:
        while True:
            if tty:
                width = shutil.get_terminal_size().columns
            text, _ok = frame(args, color=color, width=width)
            if tty and not args.json:
                out.write(CLEAR + text)
            else:
                # In a pipe or a file, frames follow each other: one blank line between.
                out.write(text if args.json else text + "\n")
            out.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
