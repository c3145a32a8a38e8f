"""The network: how agents talk to each other. The codec (length-prefixed, versioned frames of
frozen dataclasses, validated on decode), the catalogue of every message agents exchange, TLS
contexts bound to member certificates, and the transport (one mutual-TLS connection per peer,
redialled with backoff, failures reported as events). Only this room opens sockets or touches
`ssl`; the rooms above get `send` and `request` callables."""
