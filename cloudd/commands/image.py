"""`cloudd-cli image test-guest [--out DIR] [--minimal]`: build the project's test guest.

Prints the kernel and initrd paths for a domain template (manifests/templates/testguest.xml).
The files are cached by content hash in DIR, so running it again is instant and prints the
same paths until busybox, the kernel, its modules or the guest's /init change.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from cloudd_lab.testguest import GuestBuildError, build_minimal_guest, build_test_guest

#: Where the images go by default: with the other images cloudd's domains boot from.
DEFAULT_OUT = Path("/var/lib/cloudd/images/testguest")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("image", help="build guest images",
                                   description="Build guest images from what this host has.")
    images = parser.add_subparsers(dest="image", metavar="IMAGE", required=True)
    guest = images.add_parser(
        "test-guest", help="the test guest: the host's cloud kernel and a busybox initramfs",
        description="Build the test guest (kernel + initramfs) and print their paths. It "
                    "boots the host's / over virtiofs and runs the command given on its "
                    "kernel command line; --minimal only boots and sleeps.")
    guest.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                       help=f"directory for the files (default {DEFAULT_OUT})")
    guest.add_argument("--minimal", action="store_true",
                       help="the minimal guest: mounts proc, sys and dev, then sleeps")
    guest.set_defaults(func=run_test_guest)


def run_test_guest(args: argparse.Namespace, *, out: TextIO | None = None,
                   err: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    target: Path = args.out
    if target.exists() and not target.is_dir():
        print(f"cloudd-cli image test-guest: --out {target} exists and is not a directory",
              file=err)
        return 2
    build = build_minimal_guest if args.minimal else build_test_guest
    try:
        image = build(target)
    except (GuestBuildError, OSError) as exc:
        print(f"cloudd-cli image test-guest: {exc}", file=err)
        return 1
    print(f"kernel: {image.kernel}", file=out)
    print(f"initrd: {image.initrd}", file=out)
    return 0
