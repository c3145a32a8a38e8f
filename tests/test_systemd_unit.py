"""systemd/cloudd.service is a valid notify unit that systemd accepts."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "cloudd.service"


def unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_unit_is_a_watchdogged_notify_service_restarted_always() -> None:
    u = unit()
    assert u["Service"]["Type"] == "notify"
    assert u["Service"]["Restart"] == "always"
    assert u["Service"]["WatchdogSec"]
    assert u["Service"]["ExecStart"] == "/usr/local/bin/cloudd --config /etc/cloudd/agent.yaml"
    assert set(u["Unit"]["After"].split()) == {"network-online.target", "libvirtd.service"}
    assert u["Unit"]["Wants"] == "network-online.target"
    # Hardening must leave the agent able to reach libvirtd's socket and write its state.
    assert "AF_UNIX" in u["Service"]["RestrictAddressFamilies"].split()
    assert u["Service"].get("PrivateNetwork", "no") == "no"
    assert u["Service"].get("ProtectSystem", "no") in ("no", "false")


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart's program exists: point it at this checkout's console
    # script (the installed path is the only difference).
    cloudd = Path(sys.executable).parent / "cloudd"
    assert cloudd.exists(), "the cloudd console script is not installed in this environment"
    copy = tmp_path / "cloudd.service"
    copy.write_text(UNIT.read_text().replace("/usr/local/bin/cloudd", str(cloudd)))
    proc = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr
