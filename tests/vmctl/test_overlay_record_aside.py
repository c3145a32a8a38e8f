"""An overlay record that cannot be read is set aside for the operator (it names files this
host made), and the host starts with an empty one rather than inventing or stopping."""

from __future__ import annotations

from pathlib import Path

import structlog

from cloudd.vmctl.overlays import OVERLAYS_FILE, OverlayRecord


def test_an_unreadable_record_is_kept_aside_and_read_as_empty(tmp_path: Path) -> None:
    path = tmp_path / OVERLAYS_FILE
    path.write_text('{"/var/lib/cloudd/images/web2.qcow2": "c1-web2", trunc')
    with structlog.testing.capture_logs() as logs:
        record = OverlayRecord(path)
    assert record.entries() == ()
    assert [e["event"] for e in logs] == ["overlay_record_unreadable", "state_file_set_aside"]
    (kept,) = tmp_path.glob(f"{OVERLAYS_FILE}.corrupt-*")
    assert "web2.qcow2" in kept.read_text() and not path.exists()
    record.add("/var/lib/cloudd/images/web3.qcow2", "c1-web3")
    assert OverlayRecord(path).entries() == (("/var/lib/cloudd/images/web3.qcow2", "c1-web3"),)
