"""The soak's faults, drawn from a seed: the same seed, duration and targets give the same
schedule, whatever the machine does while it runs.

A fault has a kind, a target, a start (`at`, seconds from the soak's start) and an end
(`until`): the runner makes it at `at` and undoes it at `until` (a killed agent is started
again, a frozen one continued, a cut link restored...). Faults follow one another after a
random gap, and at most `concurrency` are in force at once, never two on the same target (the
operator's commands share one target, `cloud`: one at a time). Nothing here reads a clock or
does I/O: `plan` is a pure function, `steps` orders what the runner does.

With VM nodes (`Targets.vms`), three more kinds hit them: kill -9 and SIGSTOP of a node's
qemu, and a restart of the machine's libvirtd. They all hold one more pseudo-member, `vm`: one
of them at a time, and a killed qemu's hold is long enough for its guest to boot again under
TCG before the next (a soak's point is whether the cloud recovers, not how many reboots it can
stack on two cores).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

#: kind -> (weight, shortest hold, longest hold) in seconds; the hold is how long the fault is
#: in force before the runner undoes it (0-ish for one-shot faults: a service killed is
#: restarted by cloudd, a generation applied stays).
KINDS: dict[str, tuple[int, float, float]] = {
    "agent_kill": (4, 2.0, 10.0),        # kill -9 of an agent; started again at the end
    "agent_stop": (3, 1.0, 8.0),         # SIGSTOP of an agent; SIGCONT at the end
    "service_kill": (3, 3.0, 6.0),       # kill -9 of nginx, WEBrick or MariaDB
    "service_stop": (2, 1.0, 6.0),       # SIGSTOP of a service; SIGCONT at the end
    "isolate": (3, 2.0, 10.0),           # a member's link down; up at the end
    "split": (2, 2.0, 10.0),             # two pool hosts cannot reach each other
    "loss": (2, 4.0, 15.0),              # random packet loss in a member's namespace
    "disk_full": (2, 3.0, 12.0),         # a member's state folder's file system full
    "clock_step": (1, 5.0, 20.0),        # one member's wall clock stepped, then back
    "cpu_starve": (2, 3.0, 12.0),        # busy loops pinned to a pool host agent's CPU
    "maintenance": (1, 2.0, 10.0),       # cloudd-cli maintenance on (cloud or node) / off
    "generation": (1, 1.0, 3.0),         # cloudd-cli apply of a new generation
    "stop_start": (1, 4.0, 12.0),        # cloudd-cli stop, then apply with ensure: running
    "qemu_kill": (4, 120.0, 210.0),      # kill -9 of a VM node's qemu; the leader restarts it
    "qemu_stop": (3, 5.0, 45.0),         # SIGSTOP of a VM node's qemu; SIGCONT at the end
    "libvirtd_restart": (2, 1.0, 5.0),   # libvirtd stopped (SIGTERM); started again at the end
}
#: the kinds that hit VMs (drawn only when there are some)
VM_KINDS = ("qemu_kill", "qemu_stop", "libvirtd_restart")
#: seconds between the start of one fault and the next, drawn uniformly
GAP = (1.0, 6.0)
#: the same with VM nodes: TCG guests on two cores need the time between faults
VM_GAP = (5.0, 20.0)
#: the programs a node runs, by role (the web site's)
SERVICES = {"database": "mariadbd", "server": "ruby", "balancer": "nginx"}


@dataclass(frozen=True)
class Targets:
    """What the faults may hit, by name."""

    hosts: tuple[str, ...]
    #: node agents in namespaces, by node name (lab-ROLE-N)
    nodes: tuple[str, ...]
    #: members whose state folder is a small file system of its own (disk_full)
    disks: tuple[str, ...]
    #: the member whose wall clock the lab can step (clock_step); "" for none
    clock: str = ""
    #: nodes that are VMs (their agents inside the guests, out of the lab's reach)
    vms: tuple[str, ...] = ()

    def of(self, kind: str) -> tuple[str, ...]:
        """The targets a fault of `kind` may take."""
        members = self.hosts + self.nodes
        if kind in ("agent_kill", "agent_stop", "isolate", "loss"):
            return members
        if kind in ("service_kill", "service_stop"):
            return tuple(f"{n}/{SERVICES[role_of(n)]}" for n in self.nodes
                         if role_of(n) in SERVICES)
        if kind == "split":
            return tuple(f"{a}|{b}" for i, a in enumerate(self.hosts) for b in self.hosts[i + 1:])
        if kind == "disk_full":
            return self.disks
        if kind == "clock_step":
            return (self.clock,) if self.clock else ()
        if kind == "cpu_starve":
            return self.hosts
        if kind in ("qemu_kill", "qemu_stop"):
            return tuple(f"{n}/qemu" for n in self.vms)
        if kind == "libvirtd_restart":
            return ("libvirtd",) if self.vms else ()
        if kind == "maintenance":
            return ("cloud", *(f"cloud/{n}" for n in self.nodes + self.vms))
        return ("cloud",)  # generation, stop_start


@dataclass(frozen=True)
class Fault:
    id: int
    kind: str
    target: str
    at: float
    until: float
    #: the kind's parameter: loss probability, clock step in seconds (signed), busy loops
    arg: float = 0.0

    def holds(self, other: Fault) -> bool:
        """Whether the two share a member (they must not overlap in time)."""
        return bool(members_of(self.target) & members_of(other.target))


@dataclass(frozen=True)
class Step:
    """One thing the runner does: make fault `fault` (`inject`) or undo it (`recover`)."""

    at: float
    action: str
    fault: Fault


def role_of(node: str) -> str:
    """The role in a lab node's name (lab-ROLE-N)."""
    parts = node.split("-")
    return parts[1] if len(parts) == 3 else ""


def members_of(target: str) -> set[str]:
    """The members a target names: `pm1`, `pm1|pm2`, `lab-server-1/ruby`, `cloud/lab-server-1`;
    the operator's commands all name `cloud`; a VM fault (`lab-server-1/qemu`, `libvirtd`)
    also names `vm`, which one VM fault holds at a time."""
    if target.startswith("cloud"):
        return {"cloud"}
    if target == "libvirtd":
        return {"libvirtd", "vm"}
    found = {t.split("/")[0] for t in target.split("|")}
    return found | {"vm"} if target.endswith("/qemu") else found


def _arg(kind: str, rng: random.Random) -> float:
    if kind == "loss":
        return round(rng.uniform(0.1, 0.5), 2)
    if kind == "clock_step":
        return float(rng.choice((-1, 1)) * rng.randint(30, 300))
    if kind == "cpu_starve":
        return float(rng.randint(1, 3))
    return 0.0


def plan(seed: int, duration: float, targets: Targets, *, concurrency: int = 2,
         gap: tuple[float, float] | None = None) -> list[Fault]:
    """The faults of a soak of `duration` seconds: each starts before `duration` and is undone
    by it (the runner then waits for the cloud to converge). `gap`: the seconds between two
    faults' starts (default `GAP`, `VM_GAP` with VM targets)."""
    if duration <= 0:
        raise ValueError(f"a soak's duration must be positive, not {duration}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, not {concurrency}")
    gap = gap or (VM_GAP if targets.vms else GAP)
    rng = random.Random(seed)
    kinds = [k for k in KINDS if targets.of(k)]
    weights = [KINDS[k][0] for k in kinds]
    faults: list[Fault] = []
    t = rng.uniform(*gap)
    while t < duration:
        live = [f for f in faults if f.until > t]
        if len(live) < concurrency:
            kind = rng.choices(kinds, weights)[0]
            _, shortest, longest = KINDS[kind]
            hold = round(rng.uniform(shortest, longest), 2)
            choices = [x for x in targets.of(kind) if not any(
                f.holds(Fault(0, kind, x, t, t)) for f in live)]
            if choices and t + hold <= duration:
                faults.append(Fault(len(faults) + 1, kind, rng.choice(choices), round(t, 2),
                                    round(t + hold, 2), _arg(kind, rng)))
        t += rng.uniform(*gap)
    return faults


def steps(faults: list[Fault]) -> list[Step]:
    """Every inject and recover, in time order (a recover before an inject at the same time,
    then by fault)."""
    out = [Step(f.at, "inject", f) for f in faults] + [Step(f.until, "recover", f)
                                                        for f in faults]
    return sorted(out, key=lambda s: (s.at, s.action != "recover", s.fault.id))


def counts(faults: list[Fault]) -> dict[str, int]:
    """How many faults of each kind."""
    return dict(sorted(Counter(f.kind for f in faults).items()))
