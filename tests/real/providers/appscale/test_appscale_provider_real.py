"""The `appscale` provider's whole lifecycle, for real, against the lab's stand-in for the
AppScale tools (`cloudd_lab.appscale_standin`, not AppScale: its platform cannot run here).

Three test nodes (network, hostname and private /root, /etc/ssh, /run of their own): the
master holds master, database and zookeeper (one node, three roles), two nodes hold compute.
Each node's side runs as its agent would, inside the node (`cloudd_lab.asnode`): converge
writes the deployment's sshd host key and drop-in, and on the master the AppScalefile and the
tools' key; the node's real sshd then starts. The leader's hooks run here with the nodes'
actions as their channel:
- configure: every node trusts the master's key (asked of the master, handed to each node),
  then `appscale up` runs as a job on the master until it is done;
- monitor: `appscale status --verbose` turns into a finding per node, each loaded;
- a compute node is respawned (its sshd killed, root's ~/.ssh gone, unhealthy, then converged
  again and healthy): configure runs the tools' down then up;
- stop: `appscale down`, waited for.
The stand-in's ledger shows the exact command sequence the tools received.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
from aslab import KEYNAME, ASLab
from cloudd_lab.appscale_standin import LEDGER_ENV

from cloudd.errors import ClouddError, PermanentError, TemporaryError
from cloudd.providers.appscale import sshtrust
from cloudd.providers.appscale.provider import AppScaleProvider
from cloudd.providers.base import ClusterView, Finding, Peer

pytestmark = [pytest.mark.netns, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[4]
CLOUD = "as1"
#: label -> (roles, the role its name comes from)
ROLES = {"m": ("master", "database", "zookeeper"), "w1": ("compute",), "w2": ("compute",)}
PASSWORD = "h24a-admin-password"
BOUND = 120.0


class Deployment:
    """The leader's side of the lab: assignments, the nodes' actions, the hooks' loop."""

    def __init__(self, lab: ASLab) -> None:
        self.lab = lab
        self.provider = AppScaleProvider()  # its memory of who went away is this test's
        self.health = dict.fromkeys(ROLES, True)
        self.ledger = lab.nodes.root / "provider-ledger.jsonl"
        self.tools = lab.nodes.root / "appscale-standin"
        self.tools.write_text(
            f"#!{sys.executable}\nimport os\nos.environ[{LEDGER_ENV!r}] = {str(self.ledger)!r}\n"
            "from cloudd_lab.appscale_standin import main\nraise SystemExit(main())\n")
        self.tools.chmod(0o755)
        seeds = {name: base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
                 for name in (sshtrust.CLIENT_SEED.name, sshtrust.HOST_SEED.name)}
        for label in ROLES:
            folder = self.secrets(label)
            folder.mkdir(mode=0o700)
            wanted = {"secret.key": "k" * 32, sshtrust.HOST_SEED.name:
                      seeds[sshtrust.HOST_SEED.name]}
            if label == "m":
                wanted |= {sshtrust.CLIENT_SEED.name: seeds[sshtrust.CLIENT_SEED.name],
                           "admin": PASSWORD}
            for name, text in wanted.items():
                (folder / name).write_text(text + "\n")
                (folder / name).chmod(0o600)
        (lab.nodes.root / "roles").mkdir(mode=0o755)

    def secrets(self, label: str) -> Path:
        return self.lab.nodes.root / f"secrets-{label}"

    def name(self, label: str) -> str:
        return self.lab.ns[label].hostname

    @property
    def settings(self) -> dict[str, object]:
        return {"admin_password_ref": "admin", "keyname": KEYNAME, "tools": str(self.tools),
                "sshd_reload": ["pkill", "-HUP", "-F", "/run/sshd.pid"]}

    def peer(self, label: str) -> list[object]:
        roles = ROLES[label]
        return [self.name(label), roles[0], self.lab.ip(label), self.health[label], roles]

    def assignment(self, label: str) -> Path:
        roles = ROLES[label]
        path = self.lab.nodes.root / f"assignment-{label}.json"
        path.write_text(json.dumps({
            "cloud": CLOUD, "node": self.name(label), "role": roles[0], "roles": roles,
            "address": self.lab.ip(label), "root": str(self.lab.nodes.root / "roles" / label),
            "secrets_dir": str(self.secrets(label)), "settings": self.settings,
            "peers": [self.peer(other) for other in ROLES if other != label]}))
        return path

    def node(self, label: str, *argv: str) -> subprocess.CompletedProcess[str]:
        env = {"PYTHONPATH": f"{REPO}:{REPO / 'lab'}", "PATH": os.environ["PATH"]}
        return subprocess.run(self.lab.ns[label].argv(
            ["/usr/bin/env", *(f"{k}={v}" for k, v in env.items()), sys.executable, "-m",
             "cloudd_lab.asnode", *argv]), capture_output=True, text=True, timeout=60,
            check=False)

    def converge(self, label: str) -> None:
        done = self.node(label, "converge", str(self.assignment(label)))
        assert done.returncode == 0, done.stderr[-2000:]

    async def ask(self, name: str, action: str, args: Mapping[str, str]) -> Mapping[str, str]:
        label = next(k for k in ROLES if self.name(k) == name)
        done = self.node(label, "act", str(self.assignment(label)), action, json.dumps(args))
        try:
            answer = json.loads(done.stdout.strip().splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            raise AssertionError(f"{name} {action}: {done.stdout} {done.stderr[-2000:]}") \
                from None
        if "error" in answer:
            raise PermanentError(answer["error"])
        return answer

    def cluster(self) -> ClusterView:
        return ClusterView(cloud=CLOUD, settings=self.settings, ask=self.ask, nodes=tuple(
            Peer(self.name(label), role, self.lab.ns[label].ip, self.health[label])
            for label, roles in ROLES.items() for role in roles))

    async def until_done(self, hook: str) -> list[str]:
        """Run a hook until it returns; the sentences of its retries."""
        said: list[str] = []
        end = time.monotonic() + BOUND
        while True:
            try:
                if hook == "stop":
                    await self.provider.stop(self.cluster())
                else:
                    await self.provider.configure(self.cluster(), "compute")
                return said
            except TemporaryError as exc:
                if not said or said[-1] != str(exc):
                    said.append(str(exc))
            if time.monotonic() > end:
                raise AssertionError(f"{hook} not done within {BOUND:g}s: {said}")
            await asyncio.sleep(0.5)

    def commands(self) -> list[str]:
        lines = self.ledger.read_text().splitlines() if self.ledger.exists() else []
        return [" ".join(json.loads(line)["argv"][1:]) for line in lines]


async def test_the_provider_brings_an_appscale_deployment_up_keeps_it_and_stops_it(
        aslab: ASLab) -> None:
    lab = aslab
    d = Deployment(lab)
    for label in ROLES:
        d.converge(label)
        await lab.start_sshd(label)
    master_root = lab.nodes.root / "roles" / "m"
    appscalefile = master_root / "deployment" / "AppScalefile"
    assert appscalefile.stat().st_mode & 0o777 == 0o600
    text = appscalefile.read_text()
    assert f"admin_pass: {PASSWORD}" in text and f"keyname: {KEYNAME}" in text
    assert "roles: [master, database, zookeeper]" in text, text
    # only the master holds the client key; every node offers the deployment's host key
    assert (master_root / "home" / ".appscale" / f"{KEYNAME}.key").exists()
    assert not (lab.nodes.root / "roles" / "w1" / "home").exists()
    for label in ROLES:
        assert lab.ns[label].outside(sshtrust.HOST_KEY_PATH).exists()

    said = await d.until_done("configure")
    print(f"\nconfigure: {said}")
    assert said[0].startswith(f"appscale up started on {d.name('m')}"), said
    # the last look of the loop: up done, and AppScale's status shows no node lost
    assert d.commands() == ["up", "status --verbose"]
    for label in ROLES:  # the trust, handed out by the leader
        keys = lab.ns[label].outside(sshtrust.AUTHORIZED_KEYS_PATH).read_text()
        assert f'from="{lab.ip("m")}"' in keys and "ssh-ed25519" in keys
    found = await d.provider.monitor(d.cluster())
    per_node = {f.node: f for f in found if f.check == "appscale"}
    assert set(per_node) == {d.name(k) for k in ROLES}, found
    assert all(f.ok and f.state == "loaded" for f in per_node.values()), found
    run: Finding = next(f for f in found if f.check == "appscale-run")
    assert run.ok and run.message.startswith("appscale up: done"), run
    # a configure with nothing changed does nothing
    assert await d.until_done("configure") == []
    assert d.commands() == ["up", *["status --verbose"] * 3]


    # the pin holds for the tools' own ssh: w2 offering another host key is refused through
    # the master's wrapper, where the tools' options alone would log in
    home = master_root / "home"
    key = home / ".appscale" / f"{KEYNAME}.key"
    other = sshtrust.host_key(os.urandom(32), cloud=CLOUD)
    lab.write("w2", sshtrust.HOST_KEY_PATH, other.private_text, 0o600)
    lab.kill_sshd("w2")
    await lab.start_sshd("w2")
    tools_ssh = ["-F", "/dev/null", "-i", str(key), *sshtrust.TOOLS_SSH_OPTIONS,
                 f"root@{lab.ip('w2')}", "true"]
    wrapped = lab.ns["m"].run([str(home / ".cloudd-bin" / "ssh"), *tools_ssh], timeout=60)
    assert wrapped.returncode != 0 and "verification failed" in wrapped.stderr, wrapped
    bare = lab.ns["m"].run(["/usr/bin/ssh", *tools_ssh], timeout=60)
    assert bare.returncode == 0, bare.stderr
    found = await d.provider.monitor(d.cluster())
    (w2,) = [f for f in found if f.check == "appscale" and f.node == d.name("w2")]
    assert not w2.ok, w2
    d.converge("w2")  # its agent puts the deployment's key back
    lab.kill_sshd("w2")
    await lab.start_sshd("w2")

    # a compute node respawned: gone (unhealthy), then back with nothing of its trust
    lab.kill_sshd("w1")
    lab.wipe_root_ssh("w1")
    d.health["w1"] = False
    assert await d.until_done("configure") == []  # nothing runs while a node is down
    d.health["w1"] = True
    d.converge("w1")
    await lab.start_sshd("w1")
    said = await d.until_done("configure")
    assert said[0].startswith(f"appscale respawn started on {d.name('m')} (back: "
                              f"{d.name('w1')})"), said
    ran = d.commands()
    at = ran.index("down")
    assert ran[at:] == ["down", "up", "status --verbose"], ran  # then nothing lost
    assert set(ran[1:at]) == {"status --verbose"}, ran

    said = await d.until_done("stop")
    assert said[0] == f"appscale down started on {d.name('m')}", said
    assert set(said[1:]) <= {f"appscale down runs on {d.name('m')}"}, said
    assert d.commands()[-1] == "down"
    assert await d.until_done("stop") == []  # down done: nothing more


async def test_a_missing_tools_executable_is_refused_with_its_path(aslab: ASLab) -> None:
    lab = aslab
    d = Deployment(lab)
    d.tools.unlink()
    for label in ROLES:
        d.converge(label)
        await lab.start_sshd(label)
    with pytest.raises(ClouddError, match=f"{d.tools}"):
        await d.until_done("configure")
