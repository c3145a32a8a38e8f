"""A stand-in for AppScale's `appscale` executable (appscale-tools 3.8.1), for tests only.

It is not AppScale: it runs no AppController, datastore or app server, and says so on the
first line of everything it prints ("appscale stand-in (cloudd lab): ..."). It follows the
tools' command line and messages for what cloudd's `cloudd.providers.appscale.tools` runs, so
that a test drives the same sequence against real sshd on real (namespaced) nodes:

- `up`: reads ./AppScalefile (refused when missing, with deprecated keys, or with an
  `ips_layout` 3.8.1 refuses: not a list, an address given twice in a set, no or two
  masters, no database, no compute, an unknown role, not an IP address); appends a keyname
  and group when missing, as the tools do; needs `~/.appscale/<keyname>.key` (the tools
  would run the interactive `appscale-add-keypair`: the stand-in refuses instead); refuses
  to start over a running deployment (the secret is there and the head answers) unless
  `force: True`; logs into every node as root over ssh and runs a harmless command there;
  writes `~/.appscale/<keyname>.secret` and `~/.appscale/locations-<keyname>.json` as the
  tools do, and prints what they print.
- `status [--verbose]`: checks each node of the locations file over ssh; a node that
  answers and holds what `up` left there (`MARK`) is reported initialized and loaded with its
  load, any other is a `?` row (a respawned VM has nothing of AppScale on it).
- `down`: stops "AppScale" on each node (an ssh login), then removes the secret and the
  locations file; a node that does not answer fails it, and the state is kept.

Its ssh is the tools' own: `ssh -F /dev/null -i ~/.appscale/<keyname>.key` with their options
(`sshtrust.TOOLS_SSH_OPTIONS`: any host key accepted), the program found on its PATH as the
tools' shell finds it, so that cloudd's wrappers (`sshtrust.tools_wrappers`) are what pins the
host key, as they must be for the real tools.

Every command it receives is appended (argv and cwd, one JSON line) to the file named by
`CLOUDD_LAB_APPSCALE_LEDGER`, when set, so that tests compare the exact sequence.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from cloudd.providers.appscale.sshtrust import TOOLS_SSH_OPTIONS, key_path

LEDGER_ENV = "CLOUDD_LAB_APPSCALE_LEDGER"
BANNER = "appscale stand-in (cloudd lab): not AppScale, a test double of appscale-tools 3.8.1"
VERSION = "3.8.1"
DASHBOARD_PORT = 1080
USAGE = "Usage: appscale command [<args>]\n\n(stand-in: up, status [--verbose], down)"
_DEPRECATED = ("n", "scp", "appengine", "max_memory", "min", "max")
_ROLES = ("master", "database", "appengine", "compute", "open", "zookeeper", "memcache",
          "taskqueue", "search", "search2", "load_balancer", "shadow", "db_master", "db_slave",
          "taskqueue_master", "taskqueue_slave")
#: The harmless command each login runs: the figures `status` prints.
_PROBE = "nproc; cat /proc/loadavg; hostname"
#: What `up` leaves on each node, as AppScale leaves its installed state there: `status`
#: reports a node without it as not reporting (a respawned VM, which has nothing of AppScale),
#: `down` removes it.
MARK = "/root/.appscale-standin"


class Refused(Exception):
    """What the tools would raise: printed with the crash log's note, exit status 1."""


def say(text: str) -> None:
    print(text, flush=True)


def home() -> Path:
    return Path(os.environ.get("HOME") or "/root")


def state_dir() -> Path:
    return home() / ".appscale"


def appscalefile() -> tuple[Path, str]:
    path = Path.cwd() / "AppScalefile"
    try:
        return path, path.read_text()
    except OSError:
        raise Refused("No AppScalefile found in this directory. Please run 'appscale init' "
                      "to generate one and try again.") from None


def load(text: str) -> dict[str, Any]:
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict):
        raise Refused("The AppScalefile is not a mapping of options.")
    return doc


def keyname_of(doc: dict[str, Any]) -> str:
    return str(doc.get("keyname") or "appscale")


# ---- the layout, as 3.8.1's NodeLayout refuses it ---------------------------------------------

def layout(ips_layout: Any) -> list[dict[str, Any]]:
    """The nodes ({public_ip, private_ip, roles}) of an ips_layout, or what 3.8.1 says."""
    if not isinstance(ips_layout, list):
        if isinstance(ips_layout, dict):
            raise Refused("Node layout format was not recognized.")
        raise Refused("ips_layout should be a dictionary or list. Please fix it and try again.")
    nodes: dict[str, list[str]] = {}
    master = None
    for node_set in ips_layout:
        if not isinstance(node_set, dict):
            raise Refused("Node layout format was not recognized.")
        ips = node_set.get("nodes")
        ips = ips if isinstance(ips, list) else [ips]
        roles = node_set.get("roles")
        roles = roles if isinstance(roles, list) else [roles]
        if not ips or ips == [None]:
            raise Refused(f"Node amount cannot be zero for role(s) {node_set.get('roles')}.")
        if len(ips) != len(set(ips)):
            raise Refused("Cannot specify the same IP address more than once.")
        for ip in ips:
            try:
                ipaddress.IPv4Address(str(ip))
            except ValueError:
                raise Refused(f"Role(s) {node_set.get('roles')}: {ip!r} is not an IP "
                              "address.") from None
        if "master" in roles:
            if master is not None or len(ips) > 1:
                raise Refused("Only one master is allowed.")
            master = ips[0]
        for role in roles:
            if role not in _ROLES:
                raise Refused(f"Invalid role: {role}")
        for ip in ips:
            have = nodes.setdefault(str(ip), [])
            have.extend(r for r in roles if r not in have)
    if not any(r in ("database", "db_master", "db_slave") for rs in nodes.values() for r in rs):
        raise Refused("At least one database node must be provided.")
    if master is None:
        raise Refused("Need to specify one master node.")
    if not any("compute" in rs or "appengine" in rs for rs in nodes.values()):
        raise Refused("Need to specify at least one compute node.")
    out = []
    for ip, roles in nodes.items():
        expanded = [{"appengine": "compute"}.get(r, r) for r in roles if r != "master"]
        if "master" in roles:
            expanded += ["shadow", "load_balancer"]
        out.append({"public_ip": ip, "private_ip": ip, "instance_id": "i-APPSCALE",
                    "roles": sorted(set(expanded)), "disk": None})
    return out


# ---- ssh to the nodes -------------------------------------------------------------------------

def ssh(ip: str, keyname: str, command: str) -> subprocess.CompletedProcess[str]:
    key = key_path(PurePosixPath(home()), keyname)
    argv = ["ssh", "-F", "/dev/null", "-i", str(key), *TOOLS_SSH_OPTIONS, f"root@{ip}",
            command]
    return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=60, check=False)


def locations(keyname: str) -> Path:
    return state_dir() / f"locations-{keyname}.json"


def secret(keyname: str) -> Path:
    return state_dir() / f"{keyname}.secret"


def nodes_of(keyname: str) -> list[dict[str, Any]]:
    try:
        info = json.loads(locations(keyname).read_text())
    except (OSError, ValueError):
        raise Refused(f"Couldn't read from locations file, AppScale may not be running with "
                      f"keyname {keyname}") from None
    return list(info.get("node_info", []))


def head(nodes: list[dict[str, Any]]) -> str:
    return next(n["public_ip"] for n in nodes if "shadow" in n["roles"])


# ---- the commands -----------------------------------------------------------------------------

def up() -> None:
    path, text = appscalefile()
    doc = load(text)
    if not (doc.get("keyname") and doc.get("group")):
        # As the tools do: a random keyname and group appended to the file.
        name = f"appscale{uuid.uuid4().hex}"
        text += "\n# Automatically added by the AppScale Tools: "
        text += "".join(f"\n{k} : {name}" for k in ("keyname", "group") if not doc.get(k))
        path.write_text(text)
        doc = load(text)
    for key in doc:
        if key in _DEPRECATED:
            raise Refused(f"'{key}' has been deprecated. Refer to https://www.appscale.com/"
                          "get-started/deploy-appscale#appscalefile to see the full changes.")
    if "ips_layout" not in doc:
        raise Refused("A YAML file is required for virtualized clusters")
    nodes = layout(doc["ips_layout"])
    keyname = keyname_of(doc)
    if not (state_dir() / f"{keyname}.key").exists():
        raise Refused(f"{state_dir() / (keyname + '.key')} does not exist: the tools would run "
                      "the interactive appscale-add-keypair here; the stand-in does not")
    if secret(keyname).exists() and locations(keyname).exists() and doc.get("force") is not True:
        if ssh(head(nodes_of(keyname)), keyname, "true").returncode == 0:
            raise Refused("AppScale is already running. Terminate it, set 'force: True' in "
                          "your AppScalefile, or use the --force flag to run anyways.")
        say(f"AppController not running on {head(nodes_of(keyname))}")
    say("Starting AppScale 3.8")
    master = head(nodes)
    for node in nodes:
        done = ssh(node["public_ip"], keyname, f"touch {MARK} && {_PROBE}")
        if done.returncode != 0:
            raise Refused(f"The machine at {node['public_ip']} cannot be logged into: "
                          f"{done.stderr.strip() or done.returncode}")
    state_dir().mkdir(exist_ok=True)
    secret(keyname).write_text(uuid.uuid4().hex)
    say(f"Log in to your head node: ssh -i {state_dir() / keyname}.key root@{master}")
    infra = {"infrastructure": "xen", "group": str(doc.get("group"))}
    locations(keyname).write_text(json.dumps({"node_info": nodes, "infrastructure_info": infra}))
    if doc.get("admin_user") and doc.get("admin_pass"):
        say("Using the provided admin username/password")
    else:
        say("Using default admin username/password")
    say("AppScale successfully started!")
    say(f"View status information about your AppScale deployment at "
        f"http://{master}:{DASHBOARD_PORT}")


def _row(cells: list[str]) -> str:
    return "  ".join(cells)


def status(args: list[str]) -> None:
    verbose = "--verbose" in args or "-v" in args
    _, text = appscalefile()
    keyname = keyname_of(load(text))
    try:
        nodes = nodes_of(keyname)
        if not secret(keyname).exists():
            raise Refused(f"Couldn't find secret key for keyname {keyname}.")
    except Refused:
        say("AppScale deployment is probably down")
        raise
    seen, unseen = [], []
    for node in nodes:
        done = ssh(node["public_ip"], keyname, f"test -e {MARK} && {{ {_PROBE}; }}")
        lines = done.stdout.split("\n")
        if done.returncode == 0 and len(lines) >= 2:
            cores = lines[0].strip()
            load_avg = " ".join(f"{float(x):.1f}" for x in lines[1].split()[:3])
            seen.append((node, cores, load_avg))
        else:
            unseen.append(node)
    say("-" * 76)
    if verbose:
        say(_row(["PUBLIC IP", "PRIVATE IP", "I/L*", "CPU%xCORES", "MEMORY%", "DISK%",
                  "LOADAVG", "ROLES"]))
        for node, cores, load_avg in seen:
            say(_row([node["public_ip"], node["private_ip"], "+/+", f"0.0x{cores}", "0.0",
                      '"/" => 0.0', load_avg, " ".join(node["roles"])]))
        for node in unseen:
            say(_row(["?", node["private_ip"], *["?"] * 6]))
        say("* I/L means 'Is node Initialized'/'Is node Loaded'")
    if unseen:
        say(f"\nThere are {len(unseen)} nodes that didn't report it's state")
        say(f"Available stats for {len(seen)} nodes: {len(seen)} are initialized, "
            f"{len(seen)} are loaded, 0 of 0 services are started")
    else:
        say(f"\nAppScale is up. All {len(seen)} nodes are loaded")
    say(f"\nAs soon as AppScale Dashboard is started you can visit it at "
        f"http://{head(nodes)}:{DASHBOARD_PORT}/status and see more about your deployment")


def down(args: list[str]) -> None:
    if len(args) > 2 or any(a not in ("--clean", "--terminate") for a in args):
        say("Usage: appscale down [--clean][--terminate]")
        raise SystemExit(1)
    _, text = appscalefile()
    keyname = keyname_of(load(text))
    if not locations(keyname).exists():
        raise Refused(f"Cannot find AppScale's configuration for keyname {keyname}")
    if "--terminate" in args:
        raise Refused("Terminate option is invalid for cluster mode.")
    if not secret(keyname).exists():
        raise Refused(f"AppScale is not running with the keyname {keyname}")
    say(f"Stopping appscale deployment with keyname {keyname}")
    failed = 0
    nodes = nodes_of(keyname)
    for node in nodes:
        if ssh(node["public_ip"], keyname, f"rm -f {MARK}").returncode == 0:
            say(f"Node at {node['public_ip']}: Stopping AppScale finished")
        else:
            say(f"Node at {node['public_ip']}: Stopping AppScale failed")
            failed += 1
    if failed:
        raise Refused(f"{failed} node(s) failed stopping AppScale, head node is still running "
                      "AppScale services.")
    for path in (secret(keyname), locations(keyname)):
        path.unlink(missing_ok=True)
    say("Successfully stopped your AppScale deployment.")


def record(argv: list[str]) -> None:
    ledger = os.environ.get(LEDGER_ENV)
    if ledger:
        with open(ledger, "a") as f:
            f.write(json.dumps({"argv": ["appscale", *argv], "cwd": os.getcwd()}) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    record(args)
    say(BANNER)
    if not args:
        say(USAGE)
        return 1
    command, rest = args[0], args[1:]
    if command in ("--version", "-v"):
        say(f"{VERSION} (stand-in)")
        return 0
    try:
        if command == "up":
            up()
        elif command == "status":
            status(rest)
        elif command == "down":
            down(rest)
        else:
            say(USAGE)
            return 0 if command == "help" else 1
    except (Refused, subprocess.TimeoutExpired) as exc:
        say(str(exc))
        say("\nA log with more information is available at\n(the stand-in keeps no crash log).")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
