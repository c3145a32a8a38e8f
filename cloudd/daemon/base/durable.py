"""The daemon's door to the one durable write, `cloudd.durable` (it lives below vmctl so that
the host agent's term file can use it too)."""

from cloudd.durable import TermFile, fsync_dir, replace_durable, write_durable

__all__ = ["TermFile", "fsync_dir", "replace_durable", "write_durable"]
