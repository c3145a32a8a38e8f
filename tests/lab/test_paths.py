"""The lab finds its own files as package data and the examples in the checkout."""

from __future__ import annotations

from pathlib import Path

from cloudd_lab import agentlab, testguest, vmlab
from cloudd_lab.paths import checkout, example_template, resource

REPO = Path(__file__).resolve().parents[2]


def test_the_lab_files_are_package_data_on_disk() -> None:
    lab = Path(agentlab.__file__).parent
    assert resource("guest", "init.sh") == lab / "guest" / "init.sh"
    assert lab / "templates" / "testguest.xml" == testguest.TEMPLATE
    assert lab / "templates" / "testguest-agent.xml" == vmlab.AGENT_TEMPLATE
    for path in (testguest.TEMPLATE, vmlab.AGENT_TEMPLATE):
        assert "${name}" in path.read_text()


def test_the_examples_come_from_the_checkout_the_lab_is_part_of() -> None:
    assert checkout() == REPO
    assert example_template("web") == REPO / "manifests" / "templates" / "web.xml"
    assert example_template("web").is_file()
