"""bench/report.py: the README's benchmark table made from the benchmarks' JSON reports."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load_report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_report", BENCH / "report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = load_report()

README = f"""# cloudd

## Benchmarks

Intro kept as written.

{report.BEGIN}
| stale | table |
{report.END}

## Layout
"""


def write(folder: Path) -> None:
    report.write_result(
        "failover", folder=folder, what="kill -9 of the leader | 3 agents",
        figure="0.48 s; etcd 1.32 s (ratio 0.36)",
        tables=[report.table("failover", ["size", "system", "median"],
                             [[3, "cloudd", 0.48], [3, "etcd", 1.32]])])
    report.write_result(
        "idle_agent", folder=folder, what="an idle agent", figure="host 48 MiB; etcd 28 MiB",
        tables=[report.table("side by side", ["group", "RSS MiB"], [["host", 48.0]])],
        notes=["the leader changed"])


def test_the_table_is_made_from_the_reports_and_replaces_the_old_one(tmp_path: Path) -> None:
    write(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert report.main(["--results", str(tmp_path), "--readme", str(readme)]) == 0
    latest = json.loads((tmp_path / "latest.json").read_text())
    assert sorted(latest["benches"]) == ["failover", "idle_agent"]
    assert latest["benches"]["failover"]["tables"][0]["rows"] == [[3, "cloudd", 0.48],
                                                                   [3, "etcd", 1.32]]
    text = readme.read_text()
    assert "stale" not in text
    assert text.startswith("# cloudd\n\n## Benchmarks\n\nIntro kept as written.\n\n")
    assert text.endswith(f"{report.END}\n\n## Layout\n")
    rows = [line for line in text.splitlines() if line.startswith("| `bench/")]
    assert len(rows) == 2
    # a `|` inside a cell is escaped, so the row keeps its four cells
    assert rows[0].startswith("| `bench/failover.py` | kill -9 of the leader \\| 3 agents | "
                              "0.48 s; etcd 1.32 s (ratio 0.36) | ")
    assert rows[1].startswith("| `bench/idle_agent.py` | an idle agent | host 48 MiB; etcd 28 MiB")
    # the same reports give the same README: running it twice changes nothing
    assert report.main(["--results", str(tmp_path), "--readme", str(readme)]) == 0
    assert readme.read_text() == text


def test_a_row_of_the_wrong_width_is_refused() -> None:
    with pytest.raises(report.ReportError, match="a row of 1 cells for 2 columns"):
        report.table("t", ["a", "b"], [[1]])


@pytest.mark.parametrize("readme", ["no markers here\n",
                                    f"{report.END}\n{report.BEGIN}\n",
                                    f"{report.BEGIN}\n{report.END}\n{report.BEGIN}\n"])
def test_a_readme_without_one_pair_of_markers_is_left_alone(tmp_path: Path, readme: str) -> None:
    write(tmp_path)
    path = tmp_path / "README.md"
    path.write_text(readme)
    assert report.main(["--results", str(tmp_path), "--readme", str(path)]) == 1
    assert path.read_text() == readme


def test_a_broken_report_is_named(tmp_path: Path) -> None:
    (tmp_path / "plan_cost.json").write_text("{\"script\": \"bench/plan_cost.py\"}")
    with pytest.raises(report.ReportError, match=r"plan_cost\.json: no what, figure, at, load"):
        report.merge(tmp_path)
