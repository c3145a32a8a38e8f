"""What `libvirt_wire` does not speak, through libvirt's binding, seen as the wire client.

A `test:` URI names a driver inside libvirt.so itself, with no daemon to speak to: only the
binding reaches it (the labs and the tests use it for pool hosts that run no VM); a remote
transport (ssh, tls, tcp) needs the binding's remote driver. This module opens such URIs
through the binding and gives back what `libvirt_wire` gives: the binding's errors become
`libvirt_wire.libvirtError` with the same code, domain and message, and its connections and
domains are wrapped so that the callbacks see wrapped ones too. `libvirt_backend` then catches
one error class, and a host on its local libvirtd never loads the binding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import libvirt

from cloudd.vmctl.libvirt_events import event_loop
from cloudd.vmctl.libvirt_wire import libvirtError


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr unless given a handler: each one is raised (and
    handled or logged) here instead."""


libvirt.registerErrorHandler(_quiet, None)


def open(uri: str) -> Any:
    """A connection to `uri` through the binding (libvirt's event loop started first, for its
    lifecycle events)."""
    event_loop()
    return _translated(libvirt.open)(uri)


def _translated(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return _seen(fn(*args, **kwargs))
        except libvirt.libvirtError as e:
            raise libvirtError(str(e), e.err) from None
    return call


def _seen(result: Any) -> Any:
    """A binding's domain or connection as this module's (wrapped), lists of them too."""
    if isinstance(result, libvirt.virDomain):
        return _Domain(result)
    if isinstance(result, libvirt.virConnect):
        return _Connection(result)
    if isinstance(result, list) and result and isinstance(result[0], libvirt.virDomain):
        return [_Domain(d) for d in result]
    return result


class _Wrapped:
    """The binding's object, its methods raising the wire client's errors and giving wrapped
    domains and connections."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        return _translated(attr) if callable(attr) else attr


class _Domain(_Wrapped):
    pass


class _Connection(_Wrapped):
    def registerCloseCallback(self, cb: Callable[..., None], opaque: Any) -> int:
        return int(_translated(self._inner.registerCloseCallback)(
            lambda _conn, reason, op: cb(self, reason, op), opaque))

    def domainEventRegisterAny(self, dom: _Domain | None, event_id: int,
                               cb: Callable[..., None], opaque: Any) -> int:
        return int(_translated(self._inner.domainEventRegisterAny)(
            None if dom is None else dom._inner, event_id,
            lambda _conn, d, event, detail, op: cb(self, _Domain(d), event, detail, op), opaque))
