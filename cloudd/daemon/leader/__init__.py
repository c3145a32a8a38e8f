"""The leader's duties, performed only while this agent acts for the current term: the
controller that runs the pure planner and performs its actions through the hosts, role
assignment in the type's dependency order, rendering each node's domain from the cloud's
template (with `cloudd.vmctl.domains`, the code the hosts check it with), fencing a dead
host, and copying a node's image to the host that will run it. The leader talks to hosts
and nodes through callables it is given, never the transport."""
