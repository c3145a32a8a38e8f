"""cloudd keeps whole distributed infrastructures alive on a pool of libvirt hosts."""

__version__ = "0.1.0"
