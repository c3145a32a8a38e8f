"""`cloudd-cli pki init|issue|issuer`: make the cluster CA and the agents' certificates.

Run once per cluster on the operator's machine (`init`: the root CA and its node issuer),
then once per member (`issue`); copy `ca.crt`, `NAME.crt` and `NAME.key` to that member's
/etc/cloudd/pki, and to each pool host the node issuer too (`nodes-ca.crt`, `nodes-ca.key`:
`cloudd-cli bootstrap` does both). The root key never needs to leave the machine it was made
on. `issuer` makes a new node issuer for an existing root. Every refusal is one line on
stderr, exit code 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any, TextIO

from cloudd.pki import (
    CA_DAYS,
    DEFAULT_DIR,
    ISSUER_CERT,
    ISSUER_KEY,
    MEMBER_DAYS,
    MemberKind,
    PkiError,
    init_ca,
    init_node_issuer,
    issue,
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "pki", help="make the cluster CA and agent certificates",
        description="The cluster's certificate authority and each agent's key and certificate "
                    "for mutual TLS between agents.")
    sub = parser.add_subparsers(dest="pki_command", metavar="ACTION", required=True)

    init = sub.add_parser(
        "init", help="create the cluster CA (ca.crt, ca.key) and its node issuer",
        description=f"Create the cluster's root CA in DIR, and the node issuer below it "
                    f"({ISSUER_CERT}, {ISSUER_KEY}: the intermediate CA pool hosts hold to "
                    "sign their nodes' certificates); keys are written 0600.")
    _common(init, default_days=CA_DAYS)
    init.set_defaults(func=run_init)

    issuer = sub.add_parser(
        "issuer", help=f"make a new node issuer ({ISSUER_CERT}, {ISSUER_KEY}) for the CA",
        description="Make the node issuer of the CA in DIR (the one whose key is DIR/ca.key) "
                    "anew: for a CA folder without one, or to replace the key pool hosts "
                    "hold. Hand the new files to every pool host.")
    _common(issuer, default_days=CA_DAYS)
    issuer.set_defaults(func=run_issuer)

    iss = sub.add_parser(
        "issue", help="make an agent's key and certificate, signed by the CA",
        description="Make NAME.key (0600) and NAME.crt, signed by the CA in DIR (the one "
                    "whose key is DIR/ca.key, when DIR/ca.crt is a bundle of CAs). The "
                    "certificate names the agent as CN, URI cloudd://member/NAME, DNS NAME "
                    "and each --address, and its kind as URI cloudd://kind/KIND (a node's "
                    "also its cloud, cloudd://cloud/CLOUD).")
    iss.add_argument("name", metavar="NAME", help="the member's name, as in the manifest")
    iss.add_argument("--kind", required=True, choices=[k.value for k in MemberKind],
                     help="who holds it: a pool host, a node of one cloud, or an operator")
    iss.add_argument("--cloud", default="", metavar="CLOUD",
                     help="the cloud a node certificate belongs to (nodes only)")
    iss.add_argument("--address", action="append", default=[], metavar="IP",
                     help="an IP address of the member (repeatable)")
    _common(iss, default_days=MEMBER_DAYS)
    iss.set_defaults(func=run_issue)


def _common(parser: argparse.ArgumentParser, *, default_days: int) -> None:
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                        help=f"PKI directory (default {DEFAULT_DIR})")
    parser.add_argument("--days", type=int, default=default_days,
                        help=f"validity in days (default {default_days})")
    parser.add_argument("--force", action="store_true", help="replace existing files")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def run_init(args: argparse.Namespace, *, out: TextIO | None = None,
             err: TextIO | None = None) -> int:
    def act() -> list[Path]:
        files = init_ca(args.dir, now=_now(), days=args.days, force=args.force)
        return [files.cert, files.key, args.dir / ISSUER_CERT, args.dir / ISSUER_KEY]
    return _run(act, out=out or sys.stdout, err=err or sys.stderr)


def run_issuer(args: argparse.Namespace, *, out: TextIO | None = None,
               err: TextIO | None = None) -> int:
    def act() -> list[Path]:
        files = init_node_issuer(args.dir, now=_now(), days=args.days, force=args.force)
        return [files.cert, files.key]
    return _run(act, out=out or sys.stdout, err=err or sys.stderr)


def run_issue(args: argparse.Namespace, *, out: TextIO | None = None,
              err: TextIO | None = None) -> int:
    def act() -> list[Path]:
        files = issue(args.dir, args.name, now=_now(), kind=MemberKind(args.kind),
                      cloud=args.cloud, days=args.days, addresses=args.address,
                      force=args.force)
        return [files.cert, files.key]
    return _run(act, out=out or sys.stdout, err=err or sys.stderr)


def _run(act: Any, *, out: TextIO, err: TextIO) -> int:
    try:
        paths: list[Path] = act()
    except PkiError as exc:
        print(f"cloudd-cli pki: {exc}", file=err)
        return 1
    except OSError as exc:
        print(f"cloudd-cli pki: {exc.filename or ''}: {exc.strerror or exc}", file=err)
        return 1
    for path in paths:
        print(f"wrote {path}", file=out)
    return 0
