"""The jobs waiting in pbs_server's queues, summed (`cloudd.providers.batchqueue`). Pure.

The head runs `qstat -x` (every job, as XML) and sums those that wait: queued (`Q`), held
(`H`), waiting for their start time (`W`) or moving between queues (`T`); running, exiting
and finished jobs are not counted; only a queued one waits for nodes. A job asks for nodes
with `-l nodes=N:ppn=P` (or names nodes: `tq-c1+tq-c2`, one each) or `-l procs=P`; its nodes
are `Resource_List.nodect` when pbs_server gives it, its CPUs the sum over the nodes spec of
count times ppn, else `procs`, else one per node.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from cloudd.errors import PermanentError
from cloudd.providers.batchqueue import Queue, summed

#: TORQUE's state letters of a job that waits, and the word shown for each.
WAITING = {"Q": "queued", "H": "held", "W": "waiting for its start time", "T": "moving"}
_PART = re.compile(r"^(?:(\d+)|[A-Za-z0-9.-]+)((?::[^:+]+)*)\Z")


def parse_qstat_x(text: str) -> Queue:
    """`qstat -x` summed over the jobs that wait (no output: no job at all)."""
    if not text.strip():
        return Queue()
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise PermanentError(f"qstat -x printed no XML: {exc}") from None
    jobs = []
    for job in root.iter("Job"):
        state = (job.findtext("job_state") or "").strip()
        if state not in WAITING:
            continue
        nodes, cpus = asked(job.find("Resource_List"))
        jobs.append((nodes, cpus, WAITING[state], state == "Q"))
    return summed(jobs)


def asked(resources: ET.Element | None) -> tuple[int, int]:
    """(nodes, CPUs) a job's Resource_List asks for; (1, 1) when it says nothing."""
    if resources is None:
        return 1, 1
    spec = (resources.findtext("nodes") or "").strip()
    nodes = cpus = 0
    for part in filter(None, spec.split("+")):
        m = _PART.match(part)
        if m is None:
            raise PermanentError(f"qstat -x gives nodes {spec[:60]!r}, not TORQUE's spec")
        count = int(m.group(1) or 1)
        ppn = next((int(p[4:]) for p in m.group(2).split(":")
                    if p.startswith("ppn=") and p[4:].isdigit()), 1)
        nodes, cpus = nodes + count, cpus + count * ppn
    nodect = (resources.findtext("nodect") or "").strip()
    procs = (resources.findtext("procs") or "").strip()
    if nodect.isdigit():
        nodes = int(nodect)
    if not cpus and procs.isdigit():
        cpus = int(procs)
    nodes = nodes or 1
    return nodes, cpus or nodes
