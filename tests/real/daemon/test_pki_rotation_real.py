"""The certificate procedures of docs/security.md ("Rotating the CA, renewing, revoking"),
followed step by step as an operator would, against real agents in network namespaces: three
pool hosts and one node's agent, each with its own copies of its PKI files (`own_pki`), the
lab's first CA standing for the operator's.

- Rotate the CA: `cloudd-cli pki init --dir NEW`; append NEW's `ca.crt` to every member's
  bundle and restart them one at a time; `pki issue --dir NEW` for every member, copy the
  certificate and key over the member's and restart them one at a time; replace every bundle
  with NEW's `ca.crt` and restart once more. After every restart the cloud has one leader and
  every agent sees every other alive. A certificate from the old CA gets in while the bundle
  still holds it, and is refused once it is dropped.
- Renew: `pki issue NAME ... --force`, copy, restart: the agent rejoins and presents the new
  certificate.
- Revoke: `cloudd-cli apply` of the manifest without the member: each agent takes the new
  roster with the generation, without a restart, and from then on refuses the removed
  member's messages (`message_refused`, peer = its name, "not in the roster"); the leader
  stays.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cloudd_lab.agentlab import CLI, AgentLab

from cloudd.config.agent import DEFAULT_PORT
from cloudd.daemon.network.codec import PROTOCOL_VERSION, FrameDecoder, default_codec
from cloudd.daemon.network.tls import Hello
from cloudd.pki import PkiFiles

pytestmark = pytest.mark.netns

PREFIX, SUBNET = "h11r", "10.242.11.0/24"
#: Generous bound on every wait for the real processes (the machine is shared).
BOUND = 60.0
#: The node that runs an agent (the others are manifest entries only).
NODE = "lab-server-2"
#: A node of the manifest that runs no agent: the tests' TLS client speaks as it.
CLIENT = "lab-server-1"


@pytest.fixture
def lab() -> Iterator[AgentLab]:
    with AgentLab(PREFIX, hosts=3, subnet=SUBNET, own_pki=True, agent_nodes=(NODE,),
                  nodes={"balancer": 1, "server": 2, "database": 1}) as lab:
        lab.start_all()
        yield lab


# -- the operator's side ----------------------------------------------------------------------

def pki(*args: str | Path) -> str:
    """`cloudd-cli pki ARGS`, as the operator runs it; its output."""
    done = subprocess.run([CLI, "pki", *map(str, args)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, f"cloudd-cli pki {args}: {done.stderr}"
    return done.stdout


def issue_args(lab: AgentLab, name: str) -> list[str]:
    """`pki issue` arguments for a member of the lab, as its first certificate was made."""
    address = next(a for n, _, a in lab.members if n == name)
    kind = (["--kind", "host"] if name.startswith("pm") else
            ["--kind", "node", "--cloud", lab.cloud_name])
    return [name, *kind, "--address", address]


def install(source: Path, target: Path) -> None:
    """Replace a member's file the way an operator copies one in: aside, then renamed."""
    aside = target.with_name(f".{target.name}.new")
    shutil.copy2(source, aside)
    aside.replace(target)


def settled(lab: AgentLab, what: str, names: list[str] | None = None) -> tuple[str, int]:
    """Waits until one agent leads, every agent of `names` (default: the running ones)
    follows it, and every one of them sees every other one alive."""
    names = names or lab.running()

    def check() -> tuple[str, int] | None:
        found = lab.one_leader(names)
        views = lab.statuses(names)
        for name, view in views.items():
            members = (view or {}).get("members") or {}
            if any(members.get(other) != "alive" for other in names if other != name):
                return None
        return found
    found: tuple[str, int] = lab.wait_for(what, check, timeout=BOUND)
    return found


def restart_each(lab: AgentLab, step: str) -> None:
    """Restart the agents one at a time, the cloud settled after each."""
    for name in list(lab.agents):
        lab.restart(name)
        settled(lab, f"{step}: one leader and everyone alive after restarting {name}")


# -- a client that speaks TLS with a given certificate ----------------------------------------

def context(trust: Path, files: PkiFiles) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(trust))
    ctx.load_cert_chain(certfile=str(files.cert), keyfile=str(files.key))
    return ctx


def hello_back(ip: str, ctx: ssl.SSLContext, member: str) -> object | None:
    """TLS with `ctx`, then our Hello as `member`: the server's first frame, or None when it
    refused us (a TLS alert, a reset, or the connection closed before its Hello)."""
    decoder = FrameDecoder(default_codec)
    with socket.create_connection((ip, DEFAULT_PORT), timeout=BOUND) as raw:
        try:
            with ctx.wrap_socket(raw) as sock:
                sock.sendall(default_codec.encode(Hello(member, PROTOCOL_VERSION)))
                got: list[object] = []
                while not got:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return None
                    got = decoder.feed(chunk)
                return got[0]
        except ssl.SSLCertVerificationError:
            raise  # our side refused the server: not what these checks are about
        except TimeoutError:
            raise AssertionError(f"{ip} neither answered nor closed within {BOUND} s") from None
        except (OSError, ssl.SSLError):
            return None


def presented(ip: str, trust: Path, files: PkiFiles) -> dict[str, Any]:
    """The certificate the agent at `ip` presents (verified against `trust`)."""
    with socket.create_connection((ip, DEFAULT_PORT), timeout=BOUND) as raw, \
            context(trust, files).wrap_socket(raw) as sock:
        cert = sock.getpeercert()
        assert cert, "the agent presented no certificate"
        return cert


def serial(path: Path) -> str:
    out = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return out.strip().partition("=")[2].upper()


def logged(lab: AgentLab, agent: str, event: str, reason: str, *, peer: str | None = None,
           since: float) -> dict[str, Any]:
    """`agent`'s log line `event` whose reason contains `reason` (and about `peer`), logged
    after `since`; waited for, bounded."""
    def find() -> dict[str, Any] | None:
        for e in lab.log_events():
            if (e["agent"] == agent and e.get("event") == event and e["at"] >= since
                    and reason in str(e.get("reason", ""))
                    and (peer is None or e.get("peer") == peer)):
                return e
        return None
    found: dict[str, Any] = lab.wait_for(f"{event} ({reason}) in {agent}'s log", find,
                                         timeout=BOUND, interval=0.2)
    return found


# -- the procedures ---------------------------------------------------------------------------

def test_rotate_the_ca_then_renew(lab: AgentLab, tmp_path: Path) -> None:
    old, new = lab.root / "pki", tmp_path / "new-ca"
    everyone = list(lab.agents)
    assert NODE in everyone and len(everyone) == 4
    settled(lab, "a first leader, everyone alive")
    target = lab.agents["pm1"].ns.ip
    old_client = PkiFiles.for_member(old, CLIENT)

    # 1. the new CA, in a folder of its own
    assert "wrote" in pki("init", "--dir", new)
    assert (old / "ca.crt").read_bytes() != (new / "ca.crt").read_bytes()

    # 2. every member trusts both CAs, restarted one at a time
    for name in everyone:
        bundle = lab.pki_files(name).ca
        bundle.write_bytes(bundle.read_bytes() + (new / "ca.crt").read_bytes())
    restart_each(lab, "bundle of both CAs")

    # 3. every member gets a certificate from the new CA, restarted one at a time
    for name in everyone:
        pki("issue", *issue_args(lab, name), "--dir", new)
        mine, issued = lab.pki_files(name), PkiFiles.for_member(new, name)
        install(issued.cert, mine.cert)
        install(issued.key, mine.key)
    restart_each(lab, "certificates from the new CA")
    # the agents present the new CA's certificates: a client trusting the new CA only agrees
    pki("issue", *issue_args(lab, CLIENT), "--dir", new)
    new_client = PkiFiles.for_member(new, CLIENT)
    assert presented(target, new / "ca.crt", new_client)["serialNumber"] == serial(
        lab.pki_files("pm1").cert)
    # while the bundles still hold the old CA, its certificates still get in
    assert isinstance(hello_back(target, context(new / "ca.crt", old_client), CLIENT), Hello)

    # 4. the old CA dropped from every bundle, restarted once more
    for name in everyone:
        install(new / "ca.crt", lab.pki_files(name).ca)
    restart_each(lab, "the new CA alone")

    # a certificate from the old CA is refused at the handshake; one from the new CA is not
    t0 = time.time()
    assert hello_back(target, context(new / "ca.crt", old_client), CLIENT) is None
    logged(lab, "pm1", "handshake_failed", "unable to get local issuer certificate", since=t0)
    assert isinstance(hello_back(target, context(new / "ca.crt", new_client), CLIENT), Hello)
    # and the agents no longer present anything the old CA vouches for
    with pytest.raises(ssl.SSLCertVerificationError):
        presented(target, old / "ca.crt", old_client)

    # renew: a host's and the node agent's certificates, each replaced and its agent restarted
    for name in ("pm2", NODE):
        before = serial(lab.pki_files(name).cert)
        pki("issue", *issue_args(lab, name), "--dir", new, "--force")
        issued, mine = PkiFiles.for_member(new, name), lab.pki_files(name)
        install(issued.cert, mine.cert)
        install(issued.key, mine.key)
        lab.restart(name)
        settled(lab, f"{name} rejoins with its renewed certificate")
        now = presented(lab.agents[name].ns.ip, new / "ca.crt", new_client)["serialNumber"]
        assert now == serial(mine.cert) != before


def test_revoke_a_member_by_removing_it_from_the_manifest(lab: AgentLab,
                                                         tmp_path: Path) -> None:
    leader, _ = settled(lab, "a first leader, everyone alive")
    hosts = [n for n in lab.agents if n.startswith("pm")]

    # the operator applies the manifest without the node, from a pool host
    (tmp_path / "templates").mkdir()
    shutil.copy(lab.agents["pm1"].folder / "manifests" / "templates" / "domain.xml",
                tmp_path / "templates" / "domain.xml")
    without = tmp_path / "lab.yaml"
    without.write_text(lab.manifest([m for m in lab.members if m[0] != NODE]))
    done = lab.cli("pm1", "apply", str(without))
    assert done.returncode == 0, done.stderr
    assert f"{leader} carries on" in done.stdout

    t0 = time.time()

    def in_force(host: str) -> bool:
        text = (lab.agents[host].folder / "manifests" / "lab.yaml").read_text()
        return CLIENT in text and NODE not in text
    lab.wait_for("every host has the generation without the node",
                 lambda: all(in_force(h) for h in hosts), timeout=BOUND)

    # no restart: with the generation, every host takes the new roster; the removed node's
    # agent still runs and still speaks, and is refused everywhere; the leader stays
    for host in hosts:
        refused = logged(lab, host, "message_refused", f"not in the roster of {lab.cloud_name}",
                         peer=NODE, since=t0)
        print(f"\n{host}: message_refused peer={refused['peer']} reason={refused['reason']!r}")
        lab.wait_for(f"{host} no longer lists {NODE}", lambda h=host: (
            (view := lab.status(h)) is not None and NODE not in view["members"]),
            timeout=BOUND)
    assert lab.agents[NODE].proc is not None and lab.agents[NODE].proc.poll() is None
    after, _ = settled(lab, "the same leader after the revocation", hosts)
    assert after == leader
