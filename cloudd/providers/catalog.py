"""The catalog of cloud types that `cloudd.config.manifest.load_cloud` validates against."""

from __future__ import annotations

from types import MappingProxyType

from cloudd.config.catalog import Catalog
from cloudd.providers.appscale.spec import SPEC as APPSCALE
from cloudd.providers.slurm.spec import SPEC as SLURM
from cloudd.providers.torque.spec import SPEC as TORQUE
from cloudd.providers.web.spec import SPEC as WEB

#: type name -> TypeSpec, for every type this cloudd knows.
CATALOG: Catalog = MappingProxyType({s.name: s for s in (TORQUE, SLURM, APPSCALE, WEB)})


def catalog() -> Catalog:
    """The real catalog (a function so that callers do not depend on the constant's name)."""
    return CATALOG
