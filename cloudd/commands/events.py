"""`cloudd-cli events [--follow] [--since T] [--cloud C] [--limit N]`: the cloud's history.

Streams events from the local agent's event log (elections, actions, failures, restarts,
operator commands), oldest first, one line each; `--follow` keeps printing new ones until
Ctrl-C. `--since` takes what an operator would type after an incident: epoch seconds, an ISO
time, or an age such as `10m`, `2h` or `7d`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

from cloudd.client.api import ApiClient, ApiError
from cloudd.client.inspectdoc import EventView, decode_event
from cloudd.client.render import event_cells, paint
from cloudd.commands.inspect import add_socket_option, use_color
from cloudd.errors import ClouddError

_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, *, now: float) -> float:
    """Epoch seconds for `text`: epoch seconds, ISO 8601 (UTC when it has no zone), or an
    age (`90s`, `10m`, `2h`, `7d`) before `now`. `ValueError` with one sentence otherwise."""
    text = text.strip()
    age = _AGE.fullmatch(text)
    if age:
        return now - float(age.group(1)) * _UNIT[age.group(2)]
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{text!r} is not a time: epoch seconds must be positive")
        return value
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a time: give epoch seconds (1796000000), an ISO "
                         f"time (2026-11-30T07:00:00Z) or an age (90s, 10m, 2h, 7d)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "events", help="print the event history (elections, actions, failures, restarts)",
        description="Print events oldest first: the last N, or the first N from --since; "
                    "--follow then prints each new one until Ctrl-C.")
    parser.add_argument("--follow", "-f", action="store_true",
                        help="keep printing new events until Ctrl-C")
    parser.add_argument("--since", metavar="T",
                        help="from time T: epoch seconds, ISO 8601 (UTC unless a zone is "
                             "given), or an age such as 90s, 10m, 2h, 7d")
    parser.add_argument("--cloud", metavar="C", help="only this cloud's events")
    parser.add_argument("--limit", "-n", type=positive_int, default=20, metavar="N",
                        help="at most N past events (default 20)")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per event and line (keys in docs/inspect.md)")
    add_socket_option(parser)
    parser.set_defaults(func=run)


#: Least widths of the columns (time, cloud, kind, subject, term): events are printed as they
#: come, so the columns cannot be sized from the rows; longer values push the rest right.
WIDTHS = (20, 12, 8, 20, 8)


def line(event: EventView, *, as_json: bool, color: bool) -> str:
    if as_json:
        return json.dumps(vars(event))
    cells = event_cells(event)
    parts = [paint(text.ljust(w), style, color=color)
             for (text, style), w in zip(cells, WIDTHS, strict=False)]
    text, style = cells[-1]
    return "  ".join([*parts, paint(text, style, color=color)])


async def _print(args: argparse.Namespace, since: float | None, *, out: TextIO) -> None:
    client = ApiClient(args.socket, timeout=args.timeout)
    color = use_color(out) and not args.json
    stream = client.stream("events", since=since, cloud=args.cloud, follow=args.follow,
                           limit=args.limit)
    async for item in stream:
        out.write(line(decode_event(item), as_json=args.json, color=color) + "\n")
        out.flush()
    if args.follow:
        raise ApiError(f"the agent on {args.socket} closed the stream")


def run(args: argparse.Namespace, *, out: TextIO | None = None,
        err: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    since = None
    if args.since is not None:
        try:
            since = parse_since(args.since, now=time.time())
        except ValueError as e:
            print(f"cloudd-cli events: --since: {e}", file=err)
            return 2
    try:
        # A history (not --follow) is bounded by --limit: it too must come within the timeout.
        timeout = None if args.follow else args.timeout
        asyncio.run(asyncio.wait_for(_print(args, since, out=out), timeout))
    except KeyboardInterrupt:
        return 0
    except ClouddError as e:
        print(f"cloudd-cli events: {e}", file=err)
        return 1
    except TimeoutError:
        print(f"cloudd-cli events: the agent on {args.socket} did not answer within "
              f"{args.timeout:g} s", file=err)
        return 1
    except ValueError as e:
        print(f"cloudd-cli events: the answer on {args.socket} is not cloudd's: {e}",
              file=err)
        return 1
    except OSError as e:
        print(f"cloudd-cli events: cannot talk to the agent on {args.socket}: "
              f"{e.strerror or e}", file=err)
        return 1
    return 0
