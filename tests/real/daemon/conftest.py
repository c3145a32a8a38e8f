"""Fixtures the daemon's real-process tests share with its fast tests (tests/daemon)."""

from shared.apiserver import server, sock_dir

__all__ = ["server", "sock_dir"]
