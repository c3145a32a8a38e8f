"""`cloudd-cli image build`: its options and its one-line refusals."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from cloudd.cli import build_parser
from cloudd.commands.image import run_build
from cloudd.images.store import DEFAULT_CACHE


def test_the_defaults_build_the_web_image_into_the_shared_cache() -> None:
    args = build_parser().parse_args(["image", "build"])
    assert (args.kind, args.cache, args.out, args.source) == ("web", DEFAULT_CACHE, None, None)
    assert args.func is run_build
    assert Path("/var/cache/cloudd/images") == DEFAULT_CACHE


def test_the_options_are_read() -> None:
    args = build_parser().parse_args(["image", "build", "--type", "web", "--out", "/srv/img",
                                      "--cache", "/tmp/c", "--source", "/src/cloudd"])
    assert (args.kind, args.out, args.cache, args.source) == (
        "web", Path("/srv/img"), Path("/tmp/c"), Path("/src/cloudd"))


@pytest.mark.parametrize("argv", [["image"], ["image", "build", "--type", "appscale"],
                                  ["image", "build", "extra"]])
def test_a_bad_command_line_is_refused_by_the_parser(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2


def test_a_source_that_is_not_a_checkout_is_refused_in_one_line_and_nothing_is_made(
        tmp_path: Path) -> None:
    args = build_parser().parse_args(["image", "build", "--source", str(tmp_path / "nowhere"),
                                      "--cache", str(tmp_path / "cache")])
    out, err = io.StringIO(), io.StringIO()
    assert run_build(args, out=out, err=err) == 1
    assert out.getvalue() == ""
    assert err.getvalue() == (f"cloudd-cli image build: source {tmp_path / 'nowhere'}: no "
                              "pyproject.toml, not a cloudd tree\n")
    assert not (tmp_path / "cache").exists()
