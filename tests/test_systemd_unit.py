"""systemd/cloudd.service is a valid notify unit that systemd accepts, that leaves the
cloud's services running across restarts of the agent, and keeps the agent's folders private."""

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


def test_a_restart_or_stop_of_the_agent_leaves_the_services_running() -> None:
    """What the unit's comment promises: only the agent gets SIGTERM; the services it
    supervises stay in the cgroup for the next agent to adopt (a restart, a crash, a
    watchdog kill, an upgrade), and systemd never gives up restarting it."""
    s, u = unit()["Service"], unit()["Unit"]
    assert s["KillMode"] == "process"
    assert s.get("KillSignal", "SIGTERM") == "SIGTERM"
    assert s.get("SendSIGKILL", "yes") == "yes"  # the agent alone, if it hangs on its way out
    assert s["Restart"] == "always" and s["RestartSec"] == "1s"
    assert u["StartLimitIntervalSec"] == "0"  # no start limit: restarted however often
    assert int(s["TimeoutStopSec"].removesuffix("s")) >= 30
    # Only the agent notifies; MariaDB speaks sd_notify too and must not be taken for it.
    assert s["NotifyAccess"] == "main"
    assert "ExecStop" not in s  # a stop of the agent must not stop the cloud


def test_the_agents_folders_are_private() -> None:
    s = unit()["Service"]
    assert s["ConfigurationDirectory"] == "cloudd" and s["ConfigurationDirectoryMode"] == "0700"
    assert s["RuntimeDirectoryMode"] == "0700"
    # 0711: services under their own users reach their data below it, nobody lists it.
    assert s["StateDirectoryMode"] == "0711"


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
