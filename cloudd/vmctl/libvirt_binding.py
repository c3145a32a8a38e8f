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
    return _Connection(_translated(libvirt.open)(uri))


def _translated(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except libvirt.libvirtError as e:
            raise libvirtError(str(e), e.err) from None
    return call


class _Wrapped:
    """The binding's object, its methods raising the wire client's errors."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        return _translated(attr) if callable(attr) else attr


class _Domain(_Wrapped):
    pass


class _Connection(_Wrapped):
    def lookupByName(self, name: str) -> _Domain:
        return _Domain(_translated(self._inner.lookupByName)(name))

    def defineXMLFlags(self, xml: str, flags: int = 0) -> _Domain:
        return _Domain(_translated(self._inner.defineXMLFlags)(xml, flags))

    def listAllDomains(self, flags: int = 0) -> list[_Domain]:
        return [_Domain(d) for d in _translated(self._inner.listAllDomains)(flags)]

    def registerCloseCallback(self, cb: Callable[..., None], opaque: Any) -> int:
        return int(_translated(self._inner.registerCloseCallback)(
            lambda _conn, reason, op: cb(self, reason, op), opaque))

    def domainEventRegisterAny(self, dom: _Domain | None, event_id: int,
                               cb: Callable[..., None], opaque: Any) -> int:
        return int(_translated(self._inner.domainEventRegisterAny)(
            None if dom is None else dom._inner, event_id,
            lambda _conn, d, event, detail, op: cb(self, _Domain(d), event, detail, op), opaque))
