"""`cloudd` with the provider hooks test's provider (`hooks_provider`) among the built-in ones,
and its type in the catalog: the real agent otherwise. Run as a script, so that its own
folder is on the import path."""

from __future__ import annotations

import sys
from types import MappingProxyType

from hooks_provider import SPEC

from cloudd.daemon.main import main
from cloudd.providers import catalog, registry

# in place of any provider of the appscale type the product may have by then
registry.BUILTIN_MODULES = (*(m for m in registry.BUILTIN_MODULES if ".appscale" not in m),
                            "hooks_provider")
catalog.CATALOG = MappingProxyType({**catalog.CATALOG, SPEC.name: SPEC})

if __name__ == "__main__":
    sys.exit(main())
