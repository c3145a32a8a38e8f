"""One error tree for the whole agent, so that callers can act on meaning, not on type names.

- `TemporaryError` says "try again after `delay` seconds"; reconcile loops turn it into backoff.
- `PermanentError` says "this will not get better by itself"; the operator is told.
- `ConfigError` is a permanent error in something an operator wrote; it carries the place
  (file, line, column, field) so that the message can be acted on without reading code.
- `ProtocolError` is a peer speaking nonsense on the wire; the shell logs it with the peer and
  drops that connection only.
"""

from __future__ import annotations

from dataclasses import dataclass


class ClouddError(Exception):
    """The root of every error cloudd raises on purpose."""


class TemporaryError(ClouddError):
    """A failure that may go away: retry after `delay` seconds."""

    def __init__(self, message: str, *, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(ClouddError):
    """A failure that retrying will not fix: mark it failed and tell the operator."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a file an operator wrote, with where it is."""

    file: str
    line: int | None
    column: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        field = self.field or "(document)"
        return f"{where}: {field}: {self.message}"


class ConfigError(PermanentError):
    """A manifest or settings file was refused; `problems` lists every reason, each placed."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ProtocolError(ClouddError):
    """A peer sent something that is not a valid cloudd frame or message."""


class RemoteProtocolError(ProtocolError):
    """The other side broke the protocol: drop the connection, log the peer, carry on."""


class LocalProtocolError(ProtocolError):
    """We were about to send something invalid: a bug on this side."""
