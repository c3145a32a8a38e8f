"""`cloudd-cli image build`: a node image from Debian's packages with the agent inside.

Run as root on a pool host (or any Debian 12 machine that reaches a Debian mirror and the
Python package index): it makes the agent's wheels from the cloudd running it (as bootstrap
does), TORQUE from its source tarball (`cloudd.images.torque`), then the image
(`cloudd.images.build`), printing one line per stage with its seconds. Every cloud type shares
the one node image.
The image is cached by content; a second run with the same inputs prints `cached` and the
same paths at once. `ensure_image` is the same thing for the tests and the demo.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from cloudd.commands.bootstrap.prepare import render_unit
from cloudd.commands.bootstrap.target import BootstrapError, Layout, Options
from cloudd.commands.bootstrap.wheels import Checkout, Source, build_wheels, running_source
from cloudd.images.build import AgentPayload, Stage, build_image
from cloudd.images.packages import TYPES, ImageBuildError, image_type
from cloudd.images.store import DEFAULT_CACHE, Image, publish
from cloudd.images.torque import default_source, prepare
from cloudd.vmctl.hostagent import DEFAULT_IMAGE_DIRS


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "image", help="build node images",
        description="Disk images for node VMs, built from Debian's own packages.")
    sub = parser.add_subparsers(dest="image_command", metavar="ACTION", required=True)
    build = sub.add_parser(
        "build", help="build (or find in the cache) the node image",
        description="Build a Debian 12 node image: systemd, cloud-init (NoCloud), the agent "
                    "in /opt/cloudd/venv with cloudd.service enabled, every package of every "
                    "cloud type's roles (web, Slurm) and TORQUE built from its source "
                    "tarball; an ext4 filesystem in a qcow2 file, with the kernel, initramfs "
                    "and package list beside it. Needs root. Cached by content: the same "
                    "inputs give the same files at once.")
    build.add_argument("--type", dest="kind", default="web", choices=sorted(TYPES),
                       help="a cloud type the image is for (default web; every type shares "
                            "the one node image)")
    build.add_argument("--torque-source", type=Path, metavar="FILE",
                       help="TORQUE 6.1.3.h5's source tarball, built into /opt/torque by "
                            "scripts/build-torque.sh and copied in (default "
                            "$CLOUDD_TORQUE_SOURCE, else ../shared/third_party/"
                            "torque-6.1.3.h5.tar.gz beside the checkout; without it the "
                            "image has no TORQUE)")
    build.add_argument("--out", type=Path, metavar="DIR",
                       help="put the image's files here too (default: only in the cache)")
    build.add_argument("--cache", type=Path, default=DEFAULT_CACHE, metavar="DIR",
                       help=f"images, trees and wheels already built (default {DEFAULT_CACHE})")
    build.add_argument("--source", type=Path, metavar="DIR",
                       help="cloudd checkout to install (default: the cloudd running this)")
    build.set_defaults(func=run_build)


def agent_for(source: Source, *, cache: Path) -> AgentPayload:
    """The agent the image carries: `source`'s wheels and the unit bootstrap installs."""
    layout = Layout("")
    options = Options(source=source, wheelhouse=cache / "wheels")
    return AgentPayload(wheels=lambda: build_wheels(options), unit=render_unit(layout),
                 venv=layout.venv)


def ensure_image(kind: str = "web", *, cache: Path = DEFAULT_CACHE, out: Path | None = None,
                 source: Path | None = None, torque_source: Path | None = None,
                 report: Callable[[Stage], None] = lambda stage: None) -> Image:
    """The node image (cloud type `kind`'s, which every type shares), built unless the cache
    has it; TORQUE is built first from `torque_source` (default: `torque.default_source`)."""
    kind_ = image_type(kind)
    src = Checkout(source) if source is not None else running_source()
    src.check()
    checkout = src.path if isinstance(src, Checkout) else None
    tarball = torque_source if torque_source is not None else default_source(checkout)
    started = time.monotonic()
    torque_build = prepare(tarball, checkout=checkout, explicit=torque_source is not None)
    if torque_build.prefix is not None:  # without it, the image's torque stage says why
        report(Stage("torque-build", time.monotonic() - started,
                     f"{torque_build.prefix} holds {torque_build.stamp} "
                     "(scripts/build-torque.sh)"))
    image = build_image(kind_, agent=agent_for(src, cache=cache), cache=cache,
                        report=report, torque_build=torque_build,
                        overlay_dirs=DEFAULT_IMAGE_DIRS)
    return publish(image, out) if out is not None else image


def run_build(args: argparse.Namespace, *, out: TextIO | None = None,
              err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    stages: list[Stage] = []

    def report(stage: Stage) -> None:
        stages.append(stage)
        print(f"image: {stage.name:<10} {stage.seconds:6.1f} s  {stage.detail}", file=out,
              flush=True)

    start = time.monotonic()
    try:
        image = ensure_image(args.kind, cache=args.cache, out=args.out, source=args.source,
                             torque_source=args.torque_source, report=report)
    except (ImageBuildError, BootstrapError) as exc:
        print(f"cloudd-cli image build: {exc}", file=err)
        return 1
    except OSError as exc:
        print(f"cloudd-cli image build: {exc.filename or ''}: {exc.strerror or exc}", file=err)
        return 1
    how = "cached" if any(s.name == "cached" for s in stages) else "built"
    print(f"image: {image.name} {how} in {time.monotonic() - start:.1f} s", file=out)
    for label, path in (("disk", image.qcow2), ("kernel", image.kernel),
                        ("initrd", image.initrd), ("packages", image.packages)):
        print(f"  {label:<9}{path}", file=out)
    print(f"  {'boot':<9}-kernel {image.kernel} -initrd {image.initrd} "
          f"-append \"{image.kernel_args}\"", file=out)
    return 0
