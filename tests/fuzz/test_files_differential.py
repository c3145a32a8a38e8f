"""The files an agent keeps of the wire's messages, read and written with the codec's checks
(`checks.Shape`) instead of a pydantic TypeAdapter: a node's saved assignment and a pool
host's held record. Files written before the change read back as equal values, and the
bytes written now are those pydantic wrote, for messages generated from the annotations.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pydantic
from hypothesis import assume, given
from hypothesis import strategies as st

from cloudd.daemon.member import keeper, record
from cloudd.daemon.member.record import Held
from cloudd.daemon.network.catalogue import RoleAssignment
from cloudd.daemon.node.saved_assignment import ASSIGNMENT_FILE, load_assignment, save_assignment
from tests.fuzz.profile import fuzz, timeout
from tests.fuzz.test_codec_differential import BODIES, new_body

pytestmark = timeout

ASSIGNMENT = pydantic.TypeAdapter(RoleAssignment)
HELD = pydantic.TypeAdapter(Held)


def message(name: str, data: st.DataObject) -> object:
    """A valid message of type `name`, generated from its annotations."""
    msg = new_body(name, json.dumps(data.draw(BODIES[name], label="body")).encode())
    assume(not isinstance(msg, str))  # refused: not a message
    return msg


@fuzz(100)
@given(data=st.data())
def test_a_saved_assignment_is_the_file_pydantic_wrote(data: st.DataObject) -> None:
    a = message("cloudd.role-assignment", data)
    assert isinstance(a, RoleAssignment)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        save_assignment(root, a)
        assert (root / ASSIGNMENT_FILE).read_bytes() == ASSIGNMENT.dump_json(a)
        (root / ASSIGNMENT_FILE).write_bytes(ASSIGNMENT.dump_json(a))
        assert load_assignment(root, node=a.node, cloud=a.cloud) == a


@fuzz(100)
@given(data=st.data(), promised=st.integers(0, 2**63 - 1))
def test_a_held_record_is_the_file_pydantic_wrote(data: st.DataObject, promised: int) -> None:
    push = message("cloudd.record-push", data)
    held = Held(push.record, promised)  # type: ignore[attr-defined]
    assume(record.malformed(held.record) is None)  # else set aside, whoever reads it
    assert keeper.dump(held) == HELD.dump_json(held)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / keeper.FILE
        path.write_bytes(HELD.dump_json(held))
        assert keeper.load(path, held.record.cloud) == held
