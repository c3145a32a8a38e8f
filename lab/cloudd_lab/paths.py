"""Where the lab finds its files: its own as package data, the examples in the checkout.

- The lab's own files (the test guest's `/init` scripts under `guest/`, its domain templates
  under `templates/`) are package data of `cloudd_lab`, found with `importlib.resources`.
  They must be real files on disk, since QEMU and the agents read a domain template by its
  path; they are, because the lab is installed from its folder (`pip install -e lab/`, by
  scripts/setup.sh), never from a zip, and `resource` refuses anything else.
- The product's example files (`manifests/templates/<type>.xml`, the domain templates of the
  example clouds) belong to the checkout, not to the lab. `checkout()` finds it as the folder
  that holds the lab's folder, and checks that its pyproject.toml is cloudd's. That lookup is
  legal here only: cloudd_lab is a development tool that exists in a checkout and nowhere
  else, whereas the product finds its files as package data of the wheel.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path


class LabFilesError(RuntimeError):
    """The lab is not installed the way it is meant to be (from a cloudd checkout)."""


def resource(*parts: str) -> Path:
    """A file of the lab's package data, as a path on disk."""
    found = resources.files("cloudd_lab").joinpath(*parts)
    if not isinstance(found, Path):
        raise LabFilesError(f"cloudd_lab's {'/'.join(parts)} is not a file on disk ({found!r}):"
                            " install the lab from its folder (pip install -e lab/)")
    return found


def checkout() -> Path:
    """The cloudd checkout this lab is part of (its `lab/` folder's parent)."""
    repo = Path(__file__).resolve().parents[2]
    try:
        name = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["name"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        name = None
    if name != "cloudd":
        raise LabFilesError(f"cloudd_lab runs from {Path(__file__).parent}, which is not the "
                            "lab/ folder of a cloudd checkout: the lab needs the checkout's "
                            "example manifests")
    return repo


def example_template(cloud_type: str) -> Path:
    """The example domain template of a cloud type, from the checkout's manifests/templates."""
    return checkout() / "manifests" / "templates" / f"{cloud_type}.xml"
