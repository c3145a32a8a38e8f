"""Fixtures the daemon's fast tests share with its real-process tests (tests/real/daemon)."""

from shared.apiserver import server, sock_dir

__all__ = ["server", "sock_dir"]
