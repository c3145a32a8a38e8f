"""`cloudd` with the provider hooks test's provider (`hooks_provider`) among the built-in ones:
the real agent otherwise. Run as a script, so that its own folder is on the import path."""

from __future__ import annotations

import sys

from cloudd.daemon.main import main
from cloudd.providers import registry

# in place of any provider of the appscale type the product may have by then
registry.BUILTIN_MODULES = (*(m for m in registry.BUILTIN_MODULES if ".appscale" not in m),
                            "hooks_provider")

if __name__ == "__main__":
    sys.exit(main())
