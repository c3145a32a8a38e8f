"""Helpers that a fast test and a real-process test (tests/real) both use, defined once.

The real-process tests live in their own tree so that `make unit` leaves them out by place; what
both trees need sits here, imported as `shared.<module>` (tests/conftest.py puts tests/ on the
import path, as pytest does for every conftest outside a package).
"""
