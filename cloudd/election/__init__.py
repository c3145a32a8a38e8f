"""Pure cores of agreement: SWIM membership, the bully election, terms and quorum.

Nothing here does I/O or reads a clock: callers pass events and `now`, and get back the
messages to send and the decisions taken (STYLE.md practice 1).
"""
