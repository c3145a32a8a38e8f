"""What an agent loads before it knows its kind: nothing only a pool host or a leader uses.

Every agent imports `cloudd.daemon.main`; a pool host loads libvirt when it opens its
connection, the leader the image-copy code when it first copies an image, a host the
certificate code when it signs a node's certificate, and the metrics room loads
prometheus_client only when metrics are on. A node agent, which does none of that, must not
pay for them: this checks the import closure in a fresh interpreter, as the agent starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: What no agent loads until its kind or its settings ask for it; and what none loads at all:
#: rich and pygments, which structlog would load for its console tracebacks when installed
#: (a development virtualenv has them), though cloudd never renders with them.
LATER = ("libvirt", "asyncssh", "prometheus_client", "cryptography", "cloudd.certs",
         "cloudd.vmctl.libvirt_backend", "cloudd.vmctl.libvirt_wire", "cloudd.vmctl.images",
         "cloudd.daemon.leader.imagecopy", "cloudd.daemon.operator.metrics", "rich", "pygments")


def loaded_after(*modules: str) -> set[str]:
    """The modules a fresh interpreter holds after importing `modules` (this checkout's)."""
    code = ("import importlib, json, sys\n"
            f"for m in {list(modules)!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(sys.modules)))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120, check=True)
    return set(json.loads(done.stdout))


def test_the_agents_common_imports_leave_out_what_only_hosts_and_leaders_use() -> None:
    loaded = loaded_after("cloudd.daemon.main")
    # the closure is the agent's whole wiring, node side included
    assert {"cloudd.daemon.member.cloudmember", "cloudd.daemon.node.converge",
            "cloudd.daemon.network.transport", "cloudd.pki"} <= loaded
    assert sorted(m for m in loaded if m.split(".")[0] in LATER or m in LATER) == []


#: The leader's and the pool host's parts: only a pool host builds them (`CloudMember`), and
#: only then imports them; a node holds stand-ins (`cloudd.daemon.member.standins`).
LEADING = ("cloudd.daemon.leader.controller", "cloudd.daemon.leader.hooks",
           "cloudd.daemon.leader.hookplan", "cloudd.daemon.leader.elasticity",
           "cloudd.daemon.leader.elastic", "cloudd.daemon.leader.hostcalls",
           "cloudd.daemon.leader.fencing", "cloudd.daemon.leader.desired",
           "cloudd.daemon.host.duties", "cloudd.daemon.host.admission")

#: A node's member and a pool host's, built in a fresh interpreter (the member tests' fakes).
MEMBER = """\
import asyncio, json, sys, tempfile
from pathlib import Path
from cloudd.daemon.base.eventlog import EventLog
from cloudd.daemon.member.cloudmember import CloudMember
from cloudd.daemon.member.clouds import timing_for
from tests.daemon.member.fakes import FakeNodeSide, Wire, settings, shop

async def build(name):
    tmp = Path(tempfile.mkdtemp())
    agent = settings(tmp, name)
    agent.state_dir.mkdir(parents=True)
    wire = Wire()
    CloudMember(settings=agent, cloud=shop(tmp / "manifests"), timing=timing_for(agent),
                send=wire.send, request=wire.request,
                events=EventLog.in_state_dir(agent.state_dir), node_side=FakeNodeSide)

asyncio.run(build(sys.argv[1]))
print(json.dumps(sorted(sys.modules)))
"""


def member_loads(name: str) -> set[str]:
    """The modules a fresh interpreter holds after building the shop cloud's member `name`."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", MEMBER, name], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120, check=True)
    return set(json.loads(done.stdout))


def test_a_node_builds_and_imports_none_of_the_leaders_and_the_hosts_parts() -> None:
    assert sorted(set(LEADING) & loaded_after("cloudd.daemon.main")) == []
    assert sorted(set(LEADING) & member_loads("shop-server-1")) == []
    # the same check on a pool host finds them all: the test can fail
    assert set(LEADING) <= member_loads("pm1")


def test_the_node_knows_its_own_certificate_without_cryptography(tmp_path: Path) -> None:
    """`identity_of_file` reads the agent's certificate with `ssl`: the same identity as
    cryptography's reading, and cryptography never loaded."""
    import datetime as dt

    from cloudd.pki import Identity, MemberKind, identity_of_cert, init_ca, issue

    init_ca(tmp_path, now=dt.datetime.now(dt.UTC))
    files = issue(tmp_path, "web1", now=dt.datetime.now(dt.UTC), kind=MemberKind.NODE,
                  cloud="shop")
    from cryptography import x509

    by_cryptography = identity_of_cert(x509.load_pem_x509_certificate(files.cert.read_bytes()))
    code = ("import sys\nfrom pathlib import Path\nfrom cloudd.pki import identity_of_file\n"
            f"i = identity_of_file(Path({str(files.cert)!r}))\n"
            "print(i.name, i.kind.value, i.cloud, 'cryptography' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, timeout=60,
                          check=True)
    assert by_cryptography == Identity("web1", MemberKind.NODE, "shop")
    assert done.stdout.split() == ["web1", "node", "shop", "False"]



def test_rich_stays_importable_for_others_after_the_agent_hid_it_from_structlog() -> None:
    """cloudd.log hides rich from structlog only while structlog loads: rich itself is
    installed here (the test proves nothing otherwise) and imports afterwards."""
    code = ("import importlib.util, sys\n"
            "import cloudd.log\n"
            "print(importlib.util.find_spec('rich') is not None, 'rich' in sys.modules)\n"
            "import rich\n"
            "print(rich.__name__)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, timeout=60,
                          check=True)
    assert done.stdout.split() == ["True", "False", "rich"]


def test_no_agent_loads_pydantic_a_node_s_member_nor_a_host_s() -> None:
    """pydantic cost every agent about 10.5 MiB: the wire, the settings, the manifest and the
    types' settings are read by cloudd's own checks (docs/operations.md, "An agent's
    footprint"); the pool host's member parses and checks the whole manifest too."""
    for loaded in (loaded_after("cloudd.daemon.main"), member_loads("shop-server-1"),
                   member_loads("pm1")):
        assert sorted(m for m in loaded if m.split(".")[0] in ("pydantic", "pydantic_core")) == []


def test_the_command_line_loads_ssh_only_for_the_commands_that_speak_it() -> None:
    """Every `cloudd-cli` builds its whole parser: `bootstrap` and `image` load asyncssh (and
    cryptography with it) only when they run, not for every other command."""
    code = ("import json, sys\nfrom cloudd.cli import build_parser\nbuild_parser()\n"
            "print(json.dumps(sorted(sys.modules)))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, timeout=120,
                          check=True)
    loaded = set(json.loads(done.stdout))
    assert "cloudd.commands.bootstrap" in loaded
    assert sorted(m for m in loaded if m.split(".")[0] in ("asyncssh", "cryptography")) == []


def test_a_host_s_domain_templates_load_no_web_client() -> None:
    """xml.sax.saxutils loads urllib.request, http.client and email (1.3 MiB): the templates
    escape their values themselves, so a pool host's member and its libvirt side load none."""
    loaded = member_loads("pm1") | loaded_after("cloudd.vmctl.libvirt_backend",
                                                "cloudd.vmctl.hostagent")
    assert "cloudd.vmctl.template" in loaded
    assert sorted(m for m in loaded if m in ("urllib.request", "http.client", "xml.sax")
                  or m.split(".")[0] == "email") == []


def test_a_host_s_libvirt_side_loads_no_binding() -> None:
    """A pool host speaks libvirt's protocol itself (`libvirt_wire`): the binding, with its
    ~12 MiB of shared libraries, is loaded only for libvirt's in-process test driver."""
    loaded = loaded_after("cloudd.vmctl.libvirt_backend", "cloudd.vmctl.hostagent",
                          "cloudd.vmctl.libvirt_migration")
    assert "cloudd.vmctl.libvirt_wire" in loaded
    assert sorted(m for m in loaded if m.split(".")[0] in ("libvirt", "libvirtmod",
                                                          "libvirtaio")) == []
    assert "libvirt" in loaded_after("cloudd.vmctl.libvirt_binding")  # the test can fail
