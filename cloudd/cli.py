"""`cloudd-cli`: the operator's command line.

Each command group lives in the module that owns its subject and exposes
`register(subparsers)`; this file only assembles them, so that groups can grow independently.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: Modules that add subcommands; each has `register(subparsers) -> None` and sets
#: `func(args) -> int` on its parsers.
COMMAND_MODULES: tuple[str, ...] = (
    "cloudd.commands.validate",
    "cloudd.commands.pki",
    "cloudd.commands.seed",
    "cloudd.commands.bootstrap",
    "cloudd.commands.inspect",
    "cloudd.commands.events",
    "cloudd.commands.ops",
    "cloudd.commands.image",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cloudd-cli", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
