"""BatchLab's manifest: the shipped example of the type with only the lab's names, places,
disks and secret files in it; what an operator declares (roles' other fields, resources,
settings, users, secret names) stays as shipped."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from cloudd_lab.batchlab import BatchLab, pool_size, shipped

from cloudd.config.manifest import load_cloud
from cloudd.images.store import Image
from cloudd.providers.catalog import CATALOG

MEMBERS = [("pm1", None, "10.239.99.2"), ("pm2", None, "10.239.99.3"),
           ("pm3", None, "10.239.99.4"), ("lab-head-1", None, "10.239.99.5"),
           ("lab-compute-1", None, "10.239.99.6"), ("lab-compute-2", None, "10.239.99.7")]


@pytest.mark.parametrize("kind", ["slurm", "torque"])
def test_the_lab_runs_the_shipped_manifest_with_its_own_names_and_places(
        kind: str, tmp_path: Path) -> None:
    image = Image("node-shared-0123456789abcdef", tmp_path / "cache")
    hosts = pool_size(kind)
    lab = BatchLab("h23u", hosts=hosts, cloud_type=kind, subnet="10.239.99.0/24",
                   cloud_name="h23u", image=image)
    try:
        lab.template_values = {"bridge": "h23ubr", **lab.boot_values()}
        members = [m for m in MEMBERS if not m[0].startswith("pm")
                   or int(m[0][2:]) <= hosts]
        doc = yaml.safe_load(lab.manifest(members))
        ship = shipped(kind)
        for kept in ("type", "resources", "settings", "users", "apiVersion", "kind"):
            assert doc[kept] == ship[kept], kept
        assert set(doc["secrets"]) == set(ship.get("secrets") or {})
        assert all(Path(ref["file"]).parent == lab.root / "secrets"
                   for ref in doc["secrets"].values())
        assert [h["name"] for h in doc["pool"]] == [h["name"] for h in ship["pool"]]
        assert doc["roles"]["head"][0]["name"] == "lab-head-1"
        assert [n["address"] for n in doc["roles"]["compute"]] == ["10.239.99.6", "10.239.99.7"]
        head_extra = {k: v for k, v in ship["roles"]["head"][0].items()
                      if k not in ("name", "address", "image")}
        assert head_extra.items() <= doc["roles"]["head"][0].items()  # a pin stays
        assert all(n["base_image"] == str(image.qcow2) and n["overlay"]
                   for n in doc["roles"]["compute"])
        assert doc["template_values"]["kernel"] == str(image.kernel)
        # What the lab writes is a manifest the agents take.
        path = lab.root / "lab.yaml"
        path.write_text(lab.manifest(members))
        cloud = load_cloud(path, CATALOG, with_template=False, with_secrets=False)
        assert cloud.name == "h23u" and [u.name for u in cloud.users] == ["alice"]
        assert lab.user == "alice"
    finally:
        shutil.rmtree(lab.root)


def test_a_new_daemon_is_told_apart_per_scheduler() -> None:
    from cloudd_lab.batchlab import SCHEDULERS

    slurm, torque = SCHEDULERS["slurm"], SCHEDULERS["torque"]
    # Slurm's value names the daemon (its start time): any change is a new one
    assert slurm.anew("2026-12-04T17:00:00", "2026-12-04T17:01:09", killed_at=0.0)
    assert not slurm.anew("2026-12-04T17:00:00", "2026-12-04T17:00:00", killed_at=0.0)
    # TORQUE's is when the last report came: only one later than the kill is a new pbs_mom
    assert torque.anew("1000", "1010", killed_at=1005.0)
    assert not torque.anew("1000", "1006", killed_at=1005.0)  # within the 2 s of slack
    assert not torque.anew("1000", "1001", killed_at=1005.0)  # the old pbs_mom's last word
    assert not torque.anew("1000", "soon", killed_at=0.0)


def _scontrol(job: int, state: str, start: str, end: str) -> str:
    return (f"JobId={job} JobName=burst-{job} JobState={state} "
            f"SubmitTime=2026-12-05T02:59:01 StartTime={start} EndTime={end}")


SCONTROL = "\n".join([
    _scontrol(4, "COMPLETED", "2026-12-05T02:59:02", "2026-12-05T03:00:02"),
    _scontrol(5, "RUNNING", "2026-12-05T03:00:03", "2026-12-06T03:00:03"),
    _scontrol(6, "PENDING", "2026-12-05T03:01:03", "Unknown"),
    _scontrol(7, "NODE_FAIL", "2026-12-05T02:59:02", "2026-12-05T02:59:30")]) + "\n"

QSTAT = """<Data>
<Job><Job_Id>1.lab-head-1</Job_Id><job_state>C</job_state><exit_status>0</exit_status>
<qtime>1000</qtime><start_time>1001</start_time><comp_time>1061</comp_time></Job>
<Job><Job_Id>2.lab-head-1</Job_Id><job_state>R</job_state><qtime>1000</qtime>
<start_time>1062</start_time></Job>
<Job><Job_Id>3.lab-head-1</Job_Id><job_state>Q</job_state><qtime>1000</qtime></Job>
<Job><Job_Id>4.lab-head-1</Job_Id><job_state>C</job_state><exit_status>271</exit_status>
<qtime>1000</qtime><start_time>1001</start_time><comp_time>1002</comp_time></Job>
</Data>"""


def test_the_jobs_states_and_times_as_each_head_shows_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from cloudd_lab.batchlab import SCHEDULERS, JobState, SlurmOnVms, TorqueOnVms

    monkeypatch.setattr(SlurmOnVms, "_client", lambda self, lab, *argv, user=None: SCONTROL)
    monkeypatch.setattr(TorqueOnVms, "_client", lambda self, lab, *argv, user=None: QSTAT)
    slurm = SCHEDULERS["slurm"].job_states(None)  # type: ignore[arg-type]
    submitted = slurm["4"].submitted
    assert submitted is not None
    # a running job's EndTime is its limit and a waiting one's StartTime a guess: not kept
    assert slurm == {
        "4": JobState("done", submitted, submitted + 1, submitted + 61),
        "5": JobState("running", submitted, submitted + 62, None),
        "6": JobState("waiting", submitted, None, None),
        "7": JobState("failed", submitted, None, None)}
    assert SCHEDULERS["torque"].job_states(None) == {  # type: ignore[arg-type]
        "1.lab-head-1": JobState("done", 1000.0, 1001.0, 1061.0),
        "2.lab-head-1": JobState("running", 1000.0, 1062.0, None),
        "3.lab-head-1": JobState("waiting", 1000.0, None, None),
        "4.lab-head-1": JobState("failed", 1000.0, 1001.0, None)}
