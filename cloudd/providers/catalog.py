"""The catalog of cloud types that `cloudd.config.manifest.load_cloud` validates against."""

from __future__ import annotations

from types import MappingProxyType

from cloudd.config.catalog import Catalog
from cloudd.providers.appscale.spec import SPEC as APPSCALE
from cloudd.providers.registry import BUILTIN_MODULES
from cloudd.providers.slurm.spec import SPEC as SLURM
from cloudd.providers.torque.spec import SPEC as TORQUE
from cloudd.providers.web.spec import SPEC as WEB

#: The types with a provider at run time (`cloudd.providers.<type>.provider`, which the
#: registry imports by these names): a type with none is no type of the catalog, so a manifest
#: of it is refused as of an unknown type rather than accepted and never kept.
PROVIDED = frozenset(module.split(".")[2] for module in BUILTIN_MODULES)

#: type name -> TypeSpec, for every type this cloudd knows and runs.
CATALOG: Catalog = MappingProxyType({s.name: s for s in (TORQUE, SLURM, APPSCALE, WEB)
                                     if s.name in PROVIDED})


def catalog() -> Catalog:
    """The real catalog (a function so that callers do not depend on the constant's name)."""
    return CATALOG
