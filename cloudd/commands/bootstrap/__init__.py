"""`cloudd-cli bootstrap HOST`: install the agent on a fresh Debian host over SSH.

The operator's machine holds the cluster CA and cloudd (installed, or a checkout); this
command makes the wheels once, checks the host key against the operator's known_hosts, and
leaves HOST running the agent with its settings and certificate. Each step is printed as it
is done, marked `changed` or `ok`; a second run prints `ok` everywhere. A refusal is one
line on stderr, exit code 1, and (when it comes before the connection) nothing changed
anywhere.

The package: `target` (what goes where), `prepare` (checked and made here before connecting),
`wheels` (cloudd's and its dependencies'), `remote` (the SSH connection) and `steps` (what is
done on the target, in order); `cloudd.service` is the unit it installs.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from cloudd.commands.bootstrap.target import BootstrapError, Options, Step, Target
from cloudd.commands.bootstrap.wheels import Checkout, running_source
from cloudd.config.agent import DEFAULT_PORT
from cloudd.pki import DEFAULT_DIR, PkiError


def _wheelhouse() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "cloudd" / "wheels"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bootstrap", help="install the agent on a fresh Debian host over SSH",
        description="Over SSH (host key checked against --known-hosts only): ensure "
                    "python3-venv, serve time to the host's nodes with chrony (installed if "
                    "missing), install cloudd into /opt/cloudd/venv from wheels built "
                    "here, write /etc/cloudd/agent.yaml and /etc/cloudd/pki (a certificate for "
                    "HOST issued with the cluster CA, and the node issuer a host signs its "
                    "nodes' certificates with), install cloudd.service and start the "
                    "agent (systemd when it runs there, else a background process). "
                    "Idempotent: what is already right is left alone.")
    parser.add_argument("host", metavar="HOST", help="the member's name, as in the manifests")
    parser.add_argument("--address", required=True, metavar="IP",
                        help="the host's IP address: SSH goes there and the agent listens there")
    parser.add_argument("--port", type=int, default=22, help="SSH port (default 22)")
    parser.add_argument("--user", default="root", help="SSH user, must be root (default root)")
    parser.add_argument("--identity", type=Path, metavar="KEYFILE",
                        help="SSH private key (default: ~/.ssh/id_*)")
    parser.add_argument("--known-hosts", type=Path, required=True, metavar="FILE",
                        help="known_hosts that must already hold the host's key")
    parser.add_argument("--pki-dir", type=Path, default=DEFAULT_DIR, metavar="DIR",
                        help=f"the cluster CA folder (default {DEFAULT_DIR})")
    parser.add_argument("--settings-template", type=Path, metavar="FILE",
                        help="agent.yaml template with $name, $address, $port, $root")
    parser.add_argument("--listen-port", type=int, default=DEFAULT_PORT,
                        help=f"the agent's port, for the template (default {DEFAULT_PORT})")
    parser.add_argument("--source", type=Path, metavar="DIR",
                        help="cloudd checkout to install (default: the cloudd running this: "
                             "its checkout when installed editable, else the installed "
                             "package itself)")
    parser.add_argument("--wheelhouse", type=Path, default=_wheelhouse(), metavar="DIR",
                        help=f"cache of built wheels (default {_wheelhouse()})")
    time = parser.add_mutually_exclusive_group()
    time.add_argument("--time-clients", action="append", metavar="CIDR",
                      help="a network this host serves time to with chrony, its nodes' "
                           "(repeat for more; default: the /24, or /64, of --address)")
    time.add_argument("--no-time-server", action="store_true",
                      help="leave the host's time setup alone (its nodes then need another "
                           "NTP server on their network)")
    parser.add_argument("--root", default="", metavar="DIR",
                        help="prefix of every path written on the target (for tests)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, *, out: TextIO | None = None,
        err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    target = Target(name=args.host, address=args.address, port=args.port, user=args.user,
                    identity=args.identity, known_hosts=args.known_hosts,
                    root=args.root.rstrip("/"))

    def report(step: Step) -> None:
        mark = "changed" if step.changed else "ok"
        print(f"{args.host}: {step.name:<13} {mark:<8} {step.detail}", file=out, flush=True)

    # the steps speak SSH (asyncssh, cryptography): loaded by this command only, not by every
    # `cloudd-cli` that builds its parser
    from cloudd.commands.bootstrap.steps import bootstrap

    try:
        source = Checkout(args.source) if args.source is not None else running_source()
        options = Options(source=source, wheelhouse=args.wheelhouse, pki_dir=args.pki_dir,
                          listen_port=args.listen_port,
                          settings_template=args.settings_template,
                          time_clients=() if args.no_time_server else (
                              tuple(args.time_clients) if args.time_clients else None))
        steps = asyncio.run(bootstrap(target, options, now=dt.datetime.now(dt.UTC),
                                      report=report))
    except (BootstrapError, PkiError) as exc:
        print(f"cloudd-cli bootstrap: {exc}", file=err)
        return 1
    except OSError as exc:
        print(f"cloudd-cli bootstrap: {exc.filename or ''}: {exc.strerror or exc}", file=err)
        return 1
    changed = [s.name for s in steps if s.changed]
    print(f"{args.host}: " + (f"bootstrapped ({', '.join(changed)} changed)" if changed
                              else "already bootstrapped, nothing changed"), file=out)
    return 0
