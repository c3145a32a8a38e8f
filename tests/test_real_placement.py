"""The collection guard of tests/conftest.py: a test marked as real outside tests/real and
tests/e2e stops the run at collection, whatever `-m` selects, and names the test to move."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).with_name("conftest.py")
MARKERS = ("libvirt", "netns", "services", "e2e")
TEST = "import pytest\n\n\n{mark}def test_it() -> None:\n    pass\n"


@pytest.fixture
def tree(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A copy of the suite's layout with the suite's own conftest: fast, real and e2e tests."""
    # The inner runs need pytest alone: hypothesis and the rest would load again on every run.
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makeini("[pytest]\naddopts = --strict-markers -p no:cacheprovider\nmarkers =\n"
                     + "".join(f"    {m}: a real marker\n" for m in MARKERS))
    pytester.makeconftest(CONFTEST.read_text())
    for rel, mark in (("daemon/test_fast.py", ""), ("real/daemon/test_agents.py", "netns"),
                      ("real/providers/web/test_services.py", "services"),
                      ("e2e/test_vms.py", "e2e")):
        _write(pytester.path / rel, mark)
    return pytester


def _write(path: Path, mark: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TEST.format(mark=f"@pytest.mark.{mark}\n" if mark else ""))


def test_real_tests_in_their_places_collect(tree: pytest.Pytester) -> None:
    result = tree.runpytest("--collect-only", "-q")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["4 tests collected*"])


@pytest.mark.parametrize("mark", MARKERS)
@pytest.mark.parametrize("select", [(), ("-m", "not libvirt and not netns and not services "
                                            "and not e2e")], ids=["everything", "unit"])
def test_a_real_test_elsewhere_stops_the_run(tree: pytest.Pytester, mark: str,
                                             select: tuple[str, ...]) -> None:
    _write(tree.path / "daemon" / "test_misplaced.py", mark)
    result = tree.runpytest("--collect-only", "-q", *select)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*belong in tests/real/*", "  daemon/test_misplaced.py::test_it"])
    assert "test_agents" not in result.stderr.str()
