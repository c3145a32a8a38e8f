"""The operator's interface: the local API server on a root-only Unix socket, the operator's
commands (apply, stop, cleanup, maintenance, plan, history, diff, rollback) routed to the
leader that performs them, the inspect view built from the snapshot a member publishes, and
the Prometheus metrics fed from the same snapshot. The top room: it may use every room below it."""
