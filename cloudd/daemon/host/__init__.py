"""The pool host's duties: its libvirt connection through `cloudd.vmctl`'s host agent, the
fenced host commands the leader sends it, and its domain events forwarded to the leader at
once. Independent of the leader and node rooms; it sends through a callable it is given."""
