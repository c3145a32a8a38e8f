"""Where the test guest tests build their images: the fast ones and the real boots share the
cache, so a real run boots what the fast run already built."""

from __future__ import annotations

from pathlib import Path

CACHE = Path("/var/tmp/cloudd-testguest-tests")
