"""Structured logging: one event per line, fixed keys, readable by a person in journalctl.

On a terminal the output is coloured key=value text; anywhere else (journald, a file, a pipe)
it is one JSON object per line. The keys that name things are fixed so that a failover can be
followed with a grep: `cloud`, `node`, `term`, `peer`, `role`, `domain`, `host`, `service`.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

# structlog's dev and tracebacks modules import rich (and pygments with it) when it is
# installed, as it is in a development virtualenv: 5-6 MiB of every agent's memory for
# pretty tracebacks that cloudd never renders (not a dependency of cloudd). They load with
# structlog, here, with rich hidden; rich itself stays importable for whatever else wants it.
_RICH = "rich"
_hidden = _RICH not in sys.modules
if _hidden:
    sys.modules[_RICH] = None  # type: ignore[assignment]  # `import rich` -> ImportError
try:
    import structlog
finally:
    if _hidden:
        del sys.modules[_RICH]

#: The keys that name the subject of an event. Use these, not synonyms.
FIXED_KEYS = ("cloud", "node", "term", "peer", "role", "domain", "host", "service")

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def configure(*, level: str = "info", stream: TextIO | None = None,
              json: bool | None = None) -> None:
    """Set up structlog once for the process.

    `json=None` chooses by the stream: JSON lines unless it is a terminal.
    """
    out = stream if stream is not None else sys.stderr
    use_json = (not out.isatty()) if json is None else json
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if use_json:
        processors += [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
    else:
        processors += [structlog.dev.ConsoleRenderer(colors=out.isatty())]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def get(name: str, **bound: Any) -> Any:
    """A logger for one component, with `component=name` and any fixed keys bound."""
    return structlog.get_logger(component=name, **bound)
