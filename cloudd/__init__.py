"""cloudd keeps whole distributed infrastructures alive on a pool of libvirt hosts."""

import warnings

__version__ = "0.1.0"

# asyncssh (image copies, bootstrap) still names DSA key types, which recent cryptography
# releases deprecate: a warning on the stderr of every command that loads it, which tells an
# operator nothing (cloudd makes and accepts no DSA key). Silenced for asyncssh's modules alone.
warnings.filterwarnings("ignore", message="DSA is deprecated", module=r"asyncssh(\.|$)")
