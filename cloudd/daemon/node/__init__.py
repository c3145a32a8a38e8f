"""The node side: what an agent inside a VM (or on a `managed: false` machine) does. Booting
from its identity and asking the hosts for the manifest, taking role assignments from the
leader, converging its role and supervising the role's services, keeping its role's secrets,
and reporting its phase. The phase machine is a pure table beside the shell that feeds it."""
