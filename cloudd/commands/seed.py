"""`cloudd-cli seed NODE --manifest FILE --out ISO`: a node's NoCloud seed, made by the operator.

A pool host makes the seed of every node whose domain it defines. A node whose domain the
operator defines by hand (from the built image, typically a `managed: false` node of the
manifest) gets its seed from this command instead, the same seed a host would make: its
identity from the manifest (term 0: no leader defined it), a fresh key and a certificate
signed by the node issuer in `--dir` (`nodes-ca.crt`, `nodes-ca.key`; the root's key is not
needed), the CA file beside it (`ca.crt`). The ISO is written 0600, for the domain's cdrom;
the network configuration matches the MAC the templates give the node unless `--mac` says
otherwise. Every refusal is one line on stderr, exit code 1, and nothing is written.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from pathlib import Path
from typing import Any, TextIO

from cloudd.config.agent import DEFAULT_PORT
from cloudd.config.manifest import load_cloud
from cloudd.errors import ConfigError, PermanentError
from cloudd.pki import DEFAULT_DIR, MEMBER_DAYS, NodeIssuer
from cloudd.providers.catalog import catalog
from cloudd.vmctl.nodeseed import make_seed
from cloudd.vmctl.template import node_mac

_MAC = re.compile(r"^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "seed", help="make a node's NoCloud seed ISO (identity, key, certificate)",
        description="Make the NoCloud seed of NODE, as a pool host makes it when it defines "
                    "the node's domain: identity from the manifest, a fresh key, a "
                    "certificate from the node issuer in DIR. For a domain defined by hand: "
                    "attach ISO as its cdrom.")
    parser.add_argument("node", metavar="NODE", help="the node's name, as in the manifest")
    parser.add_argument("--manifest", required=True, type=Path, metavar="FILE",
                        help="the cloud's manifest")
    parser.add_argument("--out", required=True, type=Path, metavar="ISO",
                        help="the seed ISO to write (mode 0600)")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                        help=f"PKI directory with ca.crt and the node issuer "
                             f"(default {DEFAULT_DIR})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"the pool hosts' agent port (default {DEFAULT_PORT})")
    parser.add_argument("--mac", default="",
                        help="the MAC of the node's NIC (default: the one templates give it)")
    parser.add_argument("--days", type=int, default=MEMBER_DAYS,
                        help=f"the certificate's validity in days (default {MEMBER_DAYS})")
    parser.add_argument("--force", action="store_true", help="replace an existing ISO")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, *, out: TextIO | None = None,
        err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        written, mac = _make(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"cloudd-cli seed: {problem}", file=err)
        return 1
    except PermanentError as exc:
        print(f"cloudd-cli seed: {exc}", file=err)
        return 1
    except OSError as exc:
        print(f"cloudd-cli seed: {exc.filename or ''}: {exc.strerror or exc}", file=err)
        return 1
    print(f"wrote {written} (attach it as the domain's cdrom; its NIC's MAC: {mac})", file=out)
    return 0


def _make(args: argparse.Namespace) -> tuple[Path, str]:
    mac = args.mac.lower()
    if mac and not _MAC.match(mac):
        raise PermanentError(f"bad --mac {args.mac!r}: six hex pairs separated by ':'")
    if not 1 <= args.port <= 65535:
        raise PermanentError(f"bad --port {args.port}: must be 1-65535")
    if args.out.exists() and not args.force:
        raise PermanentError(f"{args.out} already exists: use --force to replace it")
    cloud = load_cloud(args.manifest, catalog(), with_template=False, with_secrets=False)
    node = next((n for n in cloud.nodes if n.name == args.node), None)
    if node is None:
        raise PermanentError(f"node {args.node} is not in the manifest of cloud {cloud.name} "
                             f"({', '.join(n.name for n in cloud.nodes)})")
    issuer = NodeIssuer.load(args.dir)
    ca = (args.dir / "ca.crt").read_text()
    mac = mac or node_mac(cloud.name, node.name)
    written = make_seed(cloud, node, term=0, port=args.port, issuer=issuer, ca_pem=ca,
                        out=args.out, now=dt.datetime.now(dt.UTC), mac=mac, days=args.days)
    return written, mac
