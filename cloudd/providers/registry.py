"""The providers the agent knows, keyed by cloud type.

The daemon looks a cloud's provider up here by the manifest's `type`; the built-in ones are
imported lazily by module name so that one provider failing to import (a missing optional
program binding, say) is reported for its type and does not take the others down.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

from cloudd.errors import PermanentError
from cloudd.providers.base import Provider

#: Modules that define a provider as a module-level `PROVIDER`.
BUILTIN_MODULES: tuple[str, ...] = (
    "cloudd.providers.web.provider",
    "cloudd.providers.slurm.provider",
    "cloudd.providers.torque.provider",
    "cloudd.providers.appscale.provider",
)


class Registry:
    """Providers by cloud type."""

    def __init__(self, providers: Iterable[Provider] = ()) -> None:
        self._by_type: dict[str, Provider] = {}
        for p in providers:
            self.register(p)

    def register(self, provider: Provider) -> None:
        if not provider.cloud_type:
            raise PermanentError(f"{type(provider).__name__} has no cloud_type")
        if provider.cloud_type in self._by_type:
            raise PermanentError(f"a provider for cloud type {provider.cloud_type!r} "
                                 "is already registered")
        # Checked now, not at the first reconcile: a cycle in role dependencies is a bug.
        provider.role_order  # noqa: B018
        self._by_type[provider.cloud_type] = provider

    def get(self, cloud_type: str) -> Provider:
        try:
            return self._by_type[cloud_type]
        except KeyError:
            known = ", ".join(self.types()) or "none"
            raise PermanentError(
                f"no provider for cloud type {cloud_type!r} (known: {known})"
            ) from None

    def types(self) -> tuple[str, ...]:
        return tuple(sorted(self._by_type))

    def __contains__(self, cloud_type: object) -> bool:
        return cloud_type in self._by_type


def load(name: str) -> Provider:
    """The `PROVIDER` of module `name`; PermanentError (one sentence) when the module cannot
    be imported or defines none."""
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # an install's fault, said as one sentence
        raise PermanentError(f"provider module {name} cannot be imported: "
                             f"{type(exc).__name__}: {exc}") from None
    provider = getattr(module, "PROVIDER", None)
    if not isinstance(provider, Provider):
        raise PermanentError(f"module {name} defines no PROVIDER")
    return provider


def default_registry(modules: Iterable[str] | None = None) -> Registry:
    """A registry with the built-in providers (`BUILTIN_MODULES` as it is when called)."""
    registry = Registry()
    for name in BUILTIN_MODULES if modules is None else modules:
        registry.register(load(name))
    return registry


def unprovided(types: Iterable[str], modules: Iterable[str] | None = None) -> list[str]:
    """One sentence per cloud type of `types` that has no provider here (its module missing,
    failing to import, or naming another type): the agent's start refuses them all."""
    problems: list[str] = []
    found: set[str] = set()
    for name in BUILTIN_MODULES if modules is None else modules:
        try:
            found.add(load(name).cloud_type)
        except PermanentError as exc:
            problems.append(str(exc))
    return problems + [f"cloud type {t!r} is accepted by validation but has no provider here"
                       for t in sorted(set(types) - found)]
