"""What the build changes in the tree: nothing of one machine, no way in, the agent enabled."""

from __future__ import annotations

import pytest

from cloudd.images import rootfs
from cloudd.images.packages import ImageBuildError
from cloudd.images.rootfs import UNIT_PATH, WANTS, Link, Remove, Write, changes, lock_root

UNIT = "[Service]\nExecStart=/opt/cloudd/venv/bin/cloudd --config /etc/cloudd/agent.yaml\n"
CHANGES = changes(unit=UNIT, units_off=("nginx.service", "apt-daily.timer"))


def _writes() -> dict[str, Write]:
    return {c.path: c for c in CHANGES if isinstance(c, Write)}


def test_the_agent_s_unit_is_written_and_enabled_with_a_getty_on_the_serial_console() -> None:
    assert _writes()[UNIT_PATH].text == UNIT
    links = {c.path: c.target for c in CHANGES if isinstance(c, Link)}
    assert links == {
        "/etc/systemd/system/multi-user.target.wants/cloudd.service": UNIT_PATH,
        "/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service":
            "/lib/systemd/system/serial-getty@.service",
    }
    assert "After=cloud-init.service" in _writes()[UNIT_PATH + ".d/10-node-image.conf"].text


def test_nothing_of_one_machine_and_no_key_stays_in_the_image() -> None:
    writes = _writes()
    assert (writes["/etc/machine-id"].text, writes["/etc/machine-id"].mode) == ("", 0o444)
    removed = {c.pattern for c in CHANGES if isinstance(c, Remove)}
    assert {"/etc/ssh/ssh_host_*", "/root/.ssh", "/var/lib/dbus/machine-id",
            "/var/lib/systemd/random-seed"} <= removed
    assert not any(".ssh" in path or "key" in path for path in writes)


def test_units_the_agent_runs_itself_are_disabled_wherever_they_were_wanted() -> None:
    removed = {c.pattern for c in CHANGES if isinstance(c, Remove)}
    assert {WANTS + "nginx.service", WANTS + "apt-daily.timer"} <= removed


def test_the_root_filesystem_is_found_by_label_and_cloud_init_looks_for_nocloud_only() -> None:
    writes = _writes()
    assert writes["/etc/fstab"].text == "LABEL=cloudd-root / ext4 errors=remount-ro 0 1\n"
    assert "datasource_list: [NoCloud, None]" in writes["/etc/cloud/cloud.cfg.d/90_cloudd.cfg"].text


def test_the_changes_are_data_that_compare_equal_for_equal_inputs() -> None:
    # The cache key hashes their text: the same inputs must print the same.
    again = changes(unit=UNIT, units_off=("nginx.service", "apt-daily.timer"))
    assert repr(again) == repr(CHANGES)
    assert repr(changes(unit=UNIT + "#", units_off=())) != repr(CHANGES)


SHADOW = "root:{}:20790:0:99999:7:::\ndaemon:*:20790:0:99999:7:::\n"


@pytest.mark.parametrize(("before", "after"), [
    ("*", "!*"),                              # Debian's: no password, now marked locked
    ("$y$j9T$salt$hash", "!$y$j9T$salt$hash"),  # a password: kept but locked, as passwd -l
    ("!", "!"),                               # already locked: unchanged
    ("!*", "!*"),
])
def test_root_is_locked_as_passwd_does_and_other_lines_are_kept(before: str, after: str) -> None:
    assert lock_root(SHADOW.format(before)) == SHADOW.format(after)


def test_a_shadow_without_root_is_refused() -> None:
    with pytest.raises(ImageBuildError, match="no root entry"):
        lock_root("daemon:*:20790:0:99999:7:::\n")


def test_a_node_images_agent_starts_from_its_seeds_identity_after_cloud_init() -> None:
    drop = next(c for c in rootfs.changes(unit="[Unit]\n", units_off=(), venv="/opt/v")
                if isinstance(c, rootfs.Write) and c.path.endswith("10-node-image.conf"))
    lines = drop.text.splitlines()
    assert "After=cloud-init.service" in lines
    # the settings-file assertion and command of bootstrap's unit are reset, then replaced
    assert lines.index("AssertPathExists=") < lines.index(
        f"AssertPathExists={rootfs.IDENTITY}")
    assert lines.index("ExecStart=") < lines.index(
        f"ExecStart=/opt/v/bin/cloudd --from-identity {rootfs.IDENTITY}")


def test_cloud_inits_empty_stages_wait_for_an_idle_guest() -> None:
    for stage in rootfs.IDLE_STAGES:
        text = _writes()[f"/etc/systemd/system/{stage}.d/10-idle.conf"].text
        assert "CPUSchedulingPolicy=idle" in text and "Nice=19" in text


def test_a_node_lifts_the_two_restrictions_of_the_agent_s_unit_that_would_bind_users_jobs(
) -> None:
    """Jobs are children of slurmd or pbs_mom, children of the agent: they inherit the unit's
    no_new_privs and its setuid ban unless the node image lifts them (a pool host keeps both)."""
    from cloudd.commands.bootstrap.prepare import render_unit
    from cloudd.commands.bootstrap.target import Layout

    host_unit = render_unit(Layout("")).splitlines()
    assert {"NoNewPrivileges=yes", "RestrictSUIDSGID=yes"} <= set(host_unit)
    drop = _writes()[rootfs.JOBS_DROP_IN_PATH]
    assert rootfs.JOBS_DROP_IN_PATH == UNIT_PATH + ".d/20-node-jobs.conf"
    settings = [line for line in drop.text.splitlines() if line and not line.startswith("#")]
    assert settings == ["[Service]", "NoNewPrivileges=no", "RestrictSUIDSGID=no"]
    # every other restriction of the unit stays in force on a node
    assert "ProtectKernelModules=yes" in host_unit


def test_the_key_munge_s_package_made_is_not_shared_by_every_node() -> None:
    removed = {c.pattern for c in CHANGES if isinstance(c, Remove)}
    assert "/etc/munge/munge.key" in removed
