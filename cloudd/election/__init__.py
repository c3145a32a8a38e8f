"""Pure cores of agreement: SWIM membership, the bully election, terms and quorum.

Nothing here does I/O or reads a clock: callers pass events and `now`, and get back the
messages to send and the decisions taken (STYLE.md practice 1).
"""

from cloudd.election.agent import AgentCore, Output
from cloudd.election.authority import Refusal
from cloudd.election.config import Timing
from cloudd.election.members import Member, Roster
from cloudd.election.states import ElectionEvent, ElectionRole
from cloudd.election.swim import Status

__all__ = [
           "AgentCore",
           "ElectionEvent",
           "ElectionRole",
           "Member",
           "Output",
           "Refusal",
           "Roster",
           "Status",
           "Timing",
]
