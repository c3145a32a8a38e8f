"""A whole TLS handshake between two of the agents' own contexts (`tls.server_context`,
`tls.client_context`), in memory: what the contexts accept and refuse, without sockets."""

from __future__ import annotations

import ssl


class Refused(Exception):
    """One side failed the handshake: "server: ..." or "client: ..." and OpenSSL's reason."""


def handshake(server: ssl.SSLContext,
              client: ssl.SSLContext) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Run the handshake over memory BIOs; (server side, client side) once both are done."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    s = server.wrap_bio(s_in, s_out, server_side=True)
    c = client.wrap_bio(c_in, c_out, server_side=False)
    done = {"s": False, "c": False}
    for _ in range(20):
        for name, side in (("c", c), ("s", s)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError as exc:
                    raise Refused(f"{'server' if name == 's' else 'client'}: {exc}") from None
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return s, c
    raise AssertionError("the handshake did not finish")
