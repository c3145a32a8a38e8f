"""AppScale's own parser, loaded from appscale-tools 3.8.1's source distribution.

The tools are Python 2 code that cloudd never runs; these tests load the parts that judge a
deployment's layout and its AppScalefile under Python 3, unchanged but for a few Python 2
idioms rewritten at load time (each rewrite must still find its text, so a different file
fails here instead of silently loading something else), and with the tools' other modules
replaced by minimal stand-ins: `node_layout.py` (`NodeLayout`, the judge of `ips_layout`),
`parse_args.py` (`ParseArgs`, the judge of the `up` command line), `custom_exceptions.py`,
and `appscale.py` (`AppScale.up`, which turns the AppScalefile into that command line). Of
`local_state.py`, only `LocalState.ensure_appscalefile_is_up_to_date` (which rewrites an
AppScalefile lacking `keyname` or `group`) is taken, as written.

scripts/fetch-appscale-tools.sh (run by `make setup`) puts the archive in the cache; without
it these tests fail, never skip.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tarfile
import textwrap
import types
import warnings
from collections.abc import Iterator, Mapping
from contextlib import chdir
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

CACHE = Path(os.environ.get("CLOUDD_THIRD_PARTY", "/var/cache/cloudd/third_party"))
SDIST = CACHE / "appscale-tools-3.8.1.tar.gz"
SHA256 = "277d882b18dcb70603467dd66f2665878347274915bc82dabe975ea6e729dbb0"
TOOLS = "appscale-tools-3.8.1/appscale/tools/"

#: file -> (Python 2 text, Python 3 text): the only changes made to the tools' code.
PY2_IDIOMS: Mapping[str, tuple[tuple[str, str], ...]] = {
    "node_layout.py": ((".iteritems()", ".items()"), ("xrange(", "range(")),
    # base64 takes and gives bytes in Python 3; the command line wants text
    "appscale.py": (("base64.b64encode(yaml.dump(value))",
                     "base64.b64encode(yaml.dump(value).encode()).decode()"),),
}


class Prompted(AssertionError):
    """The tools asked the operator something: cloudd's files must never make them."""


def _sources() -> dict[str, str]:
    if not SDIST.is_file():
        pytest.fail(f"{SDIST} is missing: run `make setup` (scripts/fetch-appscale-tools.sh)")
    data = SDIST.read_bytes()
    assert hashlib.sha256(data).hexdigest() == SHA256, f"{SDIST} is not the pinned archive"
    wanted = ("node_layout.py", "parse_args.py", "custom_exceptions.py", "appscale.py",
              "local_state.py")
    with tarfile.open(SDIST) as archive:
        out = {}
        for name in wanted:
            member = archive.extractfile(TOOLS + name)
            assert member is not None
            out[name] = member.read().decode("utf-8")
    return out


def _py3(name: str, text: str) -> str:
    for old, new in PY2_IDIOMS.get(name, ()):
        assert old in text, f"{name} no longer holds {old!r}: the rewrite list is stale"
        text = text.replace(old, new)
    return text


def _module(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    module.__path__ = []  # a package, so that submodules may be stood in too
    return module


def _exec(name: str, text: str, modules: Mapping[str, types.ModuleType]) -> types.ModuleType:
    module = types.ModuleType(f"appscale.tools.{name.removesuffix('.py')}")
    module.__package__ = "appscale.tools"
    module.__file__ = f"{SDIST}/{TOOLS}{name}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tools' regexes are not raw strings
        code = compile(_py3(name, text), module.__file__, "exec")
    with mock.patch.dict(sys.modules, modules):
        exec(code, module.__dict__)
    return module


def _method(source: str, name: str, namespace: dict[str, Any]) -> Any:
    """One method of the tools' code, as written, compiled in `namespace`. Taken by its text
    (the file around it is Python 2): its decorators, its `def` line and every line indented
    below it."""
    lines = source.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith(f"def {name}("))
    indent = len(lines[start]) - len(lines[start].lstrip())
    first = start
    while lines[first - 1].lstrip().startswith("@"):
        first -= 1
    end = start + 1
    while end < len(lines) and (not lines[end].strip()
                                or len(lines[end]) - len(lines[end].lstrip()) > indent):
        end += 1
    text = textwrap.dedent("\n".join(lines[first:end]))
    exec(compile(text, f"{SDIST}/{TOOLS}local_state.py:{name}", "exec"), namespace)
    return namespace[name]


@dataclass
class AppScaleParser:
    """The tools' judges, loaded once: `verdict` for an ips_layout, `up` for an AppScalefile."""

    node_layout: types.ModuleType
    appscale: types.ModuleType
    bad_configuration: type[Exception]
    appscalefile_error: type[Exception]
    warned: list[str] = field(default_factory=list)
    ran: list[Any] = field(default_factory=list)

    def verdict(self, ips_layout: list[dict[str, Any]], replication: int | None = None
                ) -> str | None:
        """NodeLayout's reason for refusing this layout, or None when it accepts it."""
        try:
            self.node_layout.NodeLayout({"ips": ips_layout, "replication": replication})
        except self.bad_configuration as e:
            return str(e)
        return None

    def up(self, folder: Path) -> Any:
        """`appscale up` in `folder` up to the start of the deployment: the options the tools
        would start it with (after ParseArgs accepted them and NodeLayout accepted their
        layout). SSH to the nodes is taken as working (cloudd's SSH trust provides it)."""
        self.ran.clear()
        with chdir(folder):
            self.appscale.AppScale().up()
        (options,) = self.ran
        self.node_layout.NodeLayout(options)
        return options


def _load() -> AppScaleParser:
    src = _sources()
    warned: list[str] = []
    ran: list[Any] = []

    class AppScaleLogger:
        @staticmethod
        def warn(message: object) -> None:
            warned.append(str(message))

        @staticmethod
        def log(message: object) -> None:
            pass

        success = verbose = log

    exceptions = _exec("custom_exceptions.py", src["custom_exceptions.py"], {})

    class LocalState:
        @classmethod
        def confirm_or_abort(cls, message: str) -> None:
            raise Prompted(message)

    namespace = {"os": os, "yaml": __import__("yaml"), "uuid": __import__("uuid"),
                 "AppScalefileException": exceptions.AppScalefileException}
    LocalState.ensure_appscalefile_is_up_to_date = _method(  # type: ignore[attr-defined]
        src["local_state.py"], "ensure_appscalefile_is_up_to_date", namespace)

    class Agent:
        DISALLOWED_INSTANCE_TYPES: list[str] = []
        DEFAULT_ZONE = "us-central1-a"
        OPERATION_RUN = "run"

    class InfrastructureAgentFactory:
        VALID_AGENTS = ["azure", "ec2", "euca", "gce"]

    class AppScaleTools:
        @staticmethod
        def run_instances(options: Any) -> None:
            ran.append(options)

        @staticmethod
        def add_keypair(options: Any) -> None:
            raise Prompted("add-keypair asks for each node's root password")

    stand_ins = {
        "appscale": _module("appscale"),
        "appscale.agents": _module("appscale.agents"),
        "appscale.agents.factory": _module("appscale.agents.factory",
                                           InfrastructureAgentFactory=InfrastructureAgentFactory),
        "appscale.agents.base_agent": _module("appscale.agents.base_agent", BaseAgent=Agent),
        "appscale.agents.ec2_agent": _module("appscale.agents.ec2_agent", EC2Agent=Agent),
        "appscale.agents.gce_agent": _module("appscale.agents.gce_agent", GCEAgent=Agent),
        "appscale.agents.azure_agent": _module("appscale.agents.azure_agent", AzureAgent=Agent),
        "appscale.tools": _module("appscale.tools", __file__=f"{SDIST}/{TOOLS}__init__.py"),
        "appscale.tools.appscale_logger": _module("appscale.tools.appscale_logger",
                                                  AppScaleLogger=AppScaleLogger),
        "appscale.tools.custom_exceptions": exceptions,
        "appscale.tools.local_state": _module("appscale.tools.local_state",
                                              LocalState=LocalState, APPSCALE_VERSION="3.8.1"),
        "appscale.tools.appscale_tools": _module("appscale.tools.appscale_tools",
                                                 AppScaleTools=AppScaleTools),
    }
    parse_args = _exec("parse_args.py", src["parse_args.py"], stand_ins)
    stand_ins["appscale.tools.parse_args"] = parse_args
    node_layout = _exec("node_layout.py", src["node_layout.py"], stand_ins)
    stand_ins["appscale.tools.node_layout"] = node_layout
    for name, attr in (("appengine_helper", "AppEngineHelper"), ("appscale_stats", "show_stats"),
                       ("registration_helper", "RegistrationHelper"),
                       ("remote_helper", "RemoteHelper"), ("admin_api.client", "AdminError")):
        stand_ins[f"appscale.tools.{name}"] = _module(f"appscale.tools.{name}", **{attr: None})
    stand_ins["appscale.tools.admin_api"] = _module("appscale.tools.admin_api")
    appscale = _exec("appscale.py", src["appscale.py"], stand_ins)
    # Logging into the nodes over SSH is the SSH trust's part, not the AppScalefile's.
    appscale.AppScale.valid_ssh_key = lambda self, config, options: True
    return AppScaleParser(node_layout=node_layout, appscale=appscale,
                          bad_configuration=exceptions.BadConfigurationException,
                          appscalefile_error=exceptions.AppScalefileException,
                          warned=warned, ran=ran)


@pytest.fixture(scope="session")
def appscale_parser() -> Iterator[AppScaleParser]:
    """appscale-tools 3.8.1's parser (fails the test when the archive is missing)."""
    yield _load()
