"""`cloudd-cli validate FILE...`: check manifests offline, one placed line per problem.

Joins the manifest loader (cloudd.config) with the real catalog of types (cloudd.providers),
which the config layer may not import itself. `--show` also prints what each valid cloud
would run, node by node.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from cloudd.config.manifest import load_cloud
from cloudd.config.model import Cloud
from cloudd.errors import ConfigError
from cloudd.providers.catalog import catalog


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "validate", help="check cloud manifests without touching anything",
        description="Check cloud manifests. Prints `FILE: ok` for each valid file and "
                    "`file:line:column: field: problem` for each problem; exits 1 if any.")
    parser.add_argument("files", nargs="+", metavar="FILE", help="manifest files (YAML)")
    parser.add_argument("--show", action="store_true",
                        help="also print each valid cloud's nodes, roles and addresses")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    failed = False
    for path in args.files:
        try:
            # the secrets live on the pool hosts, not necessarily here
            cloud = load_cloud(path, catalog(), with_secrets=False)
        except ConfigError as exc:
            failed = True
            for problem in exc.problems:
                print(problem, file=out)
            continue
        print(f"{path}: ok", file=out)
        if args.show:
            show(cloud, out=out)
    return 1 if failed else 0


def show(cloud: Cloud, *, out: TextIO) -> None:
    """A table of what the cloud would run."""
    hosts = ", ".join(f"{h.name} ({h.address})" for h in cloud.pool)
    print(f"  cloud {cloud.name}: type {cloud.type}, ensure {cloud.ensure.value}, "
          f"pool {hosts}", file=out)
    for role, e in cloud.elastic.items():
        print(f"    {role}: elastic, {e.min} to {e.max} of its {len(cloud.candidates(role))} "
              f"candidates below in use (idle_after {e.idle_after:g} s, cooldown "
              f"{e.cooldown:g} s)", file=out)
    rows = [("ROLE", "NODE", "ADDRESS", "MiB", "CPU", "HOST", "RUN", "IMAGE")]
    for n in cloud.nodes:
        image = n.image or "-"
        if n.overlay:
            image += f" (overlay of {n.base_image})"
        if not n.managed:
            image = "(existing machine, not managed)"
        rows.append(("+".join(n.roles), n.name, n.address, str(n.memory_mib), str(n.vcpus),
                     n.host or "any", n.run.value, image))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r, widths, strict=False)]
        print("    " + "  ".join([*cells, r[-1]]), file=out)
