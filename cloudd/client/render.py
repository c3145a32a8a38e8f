"""The inspect document and the event stream as text for a terminal.

Pure: every function takes what it shows, `now`, whether to colour and the width, and returns
text, so the same document always prints the same way (and tests compare whole screens). Words
that mean something (alive, dead, fatal, stale...) get one colour each, wherever they appear.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from cloudd.client.inspectdoc import (
    CloudView,
    EventView,
    FindingView,
    InspectDoc,
    LivenessView,
    Source,
)

_SGR = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "cyan": "36"}
_STYLE = {
    "alive": "green", "running": "green", "stable": "green", "yes": "green", "leader": "green",
    "suspect": "yellow", "electing": "yellow", "starting": "yellow", "backoff": "yellow",
    "stopping": "yellow", "shutting-down": "yellow", "paused": "yellow", "local": "yellow",
    "dead": "red", "no-quorum": "red", "fatal": "red", "crashed": "red", "exited": "red",
    "no": "red", "stale": "red", "failure": "red", "undefined": "dim", "stopped": "dim",
    "restart": "yellow", "election": "cyan", "command": "cyan", "ok": "green",
    "failing": "red",
}
Cell = tuple[str, str]
"""Plain text and a style name ("" for none)."""


#: Characters a terminal acts on (C0 and C1 controls, DEL): text that came from a node (a
#: provider's finding, a service's last error, an event's reason) may hold them, and a
#: tenant's VM must not write escape sequences to an operator's terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def shown(text: str) -> str:
    """`text` with every control character written out as `\\xNN`, so it prints as it is."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def paint(text: str, style: str, *, color: bool) -> str:
    """`text` in ANSI colour `style` when `color`; the text unchanged otherwise."""
    if not color or not style or not text:
        return text
    return f"\x1b[{_SGR[style]}m{text}\x1b[0m"


def styled(text: str) -> Cell:
    """A cell coloured by what its word means (alive green, dead red, ...)."""
    return text, _STYLE.get(text, "")


def ago(seconds: float) -> str:
    """A short duration: 42s, 4m12s, 2h03m, 5d02h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def clock(t: float, *, now: float) -> str:
    """UTC time of day when `t` is within a day of `now`; the date as well otherwise."""
    d = datetime.fromtimestamp(t, UTC)
    return d.strftime("%H:%M:%SZ" if abs(now - t) < 86400 else "%Y-%m-%d %H:%MZ")


def table(rows: list[list[Cell]], *, color: bool, width: int | None,
          indent: str = "  ") -> list[str]:
    """Aligned columns; a line wider than `width` loses the end of its last cell."""
    if not rows:
        return []
    ncol = max(len(r) for r in rows)
    padded = [[*((shown(t), st) for t, st in r), *[("", "")] * (ncol - len(r))] for r in rows]
    widths = [max(len(r[i][0]) for r in padded) for i in range(ncol - 1)]
    lines = []
    for row in padded:
        *cells, (last_text, last_style) = row
        lead = indent + "".join(c[0].ljust(w) + "  " for c, w in zip(cells, widths,
                                                                     strict=True))
        if width is not None and len(lead) + len(last_text) > width:
            room = width - len(lead)
            last_text = last_text[:room - 1] + "…" if room > 1 else ""
        parts = [paint(c[0].ljust(w), c[1], color=color) + "  "
                 for c, w in zip(cells, widths, strict=True)]
        lines.append((indent + "".join(parts) + paint(last_text, last_style,
                                                      color=color)).rstrip())
    return lines


def _yes(flag: bool) -> Cell:
    return styled("yes" if flag else "no")


def _cloud_header(c: CloudView, doc: InspectDoc, *, now: float, color: bool) -> list[str]:
    def p(text: str, style: str = "") -> str:
        return paint(text, style, color=color)

    head = f"cloud {p(c.name, 'bold')}  type {c.type}  ensure {c.ensure}"
    if c.manifest is not None:
        m = c.manifest
        manifest = (f"  manifest generation {m.generation}, sha256 {m.digest[:12]}, loaded "
                    f"{clock(m.loaded_at, now=now)} ({ago(now - m.loaded_at)} ago)")
    else:
        manifest = "  manifest " + p("none loaded", "yellow")
    old = ago(now - c.observed_at)
    view = {Source.LEADER: f"cluster view from the leader, observed {old} ago",
            Source.LOCAL: "cluster view: " + p("this agent's own", "yellow")
                          + " (the leader was not reached)",
            Source.STALE: "cluster view: " + p(f"STALE, the leader's as of {old} ago", "red")}
    L = c.leadership
    lead = f"leader {p(L.leader, 'bold') if L.leader else p('none', 'red')}  term {L.term}"
    if L.since is not None:
        lead += f"  since {clock(L.since, now=now)} ({ago(now - L.since)} ago)"
    state = paint(L.state.value.replace("-", " "), _STYLE[L.state.value], color=color)
    short = L.quorum_reached < L.quorum_needed
    quorum = p(f"{L.quorum_reached}/{L.quorum_needed}", "red" if short else "green")
    lead += f"  election {state}  quorum {quorum} hosts"
    answered = f"  answered by {doc.answered_by} at {clock(doc.generated_at, now=now)}; "
    held = (["  in maintenance: " + p(", ".join(c.maintenance), "yellow")]
            if c.maintenance else [])
    if c.held_for_stop:
        held.append("  " + p("stopping: waiting for the provider's stop (domains and "
                             "services left running meanwhile)", "yellow"))
    lines = [head, manifest, *held, answered + view[c.source], "  " + lead]
    if doc.agent.unproven:
        lines.append("  " + p(f"{doc.answered_by} grants no lease and runs no host command: "
                              f"{doc.agent.unproven}", "red"))
    if doc.agent.events_dropped:
        lines.append("  " + p(f"{doc.answered_by} could not store {doc.agent.events_dropped} "
                              f"event(s) (a full or failing disk); see its log", "yellow"))
    return lines


def scheduler(findings: tuple[FindingView, ...]) -> Cell | None:
    """A node's state in its scheduler with its jobs (`alloc, jobs 12 13`), coloured by the
    finding's verdict; None when no finding is a scheduler's view."""
    for f in findings:
        if f.state:
            jobs = f", jobs {' '.join(f.jobs)}" if f.jobs else ""
            return f"{f.state}{jobs}", "" if f.ok else "red"
    return None


def _nodes(c: CloudView, *, now: float) -> list[list[Cell]]:
    # The scheduler's view of each node, beside cloudd's, when the provider gives one.
    batch = any(scheduler(n.findings) for n in c.nodes)
    rows: list[list[Cell]] = [[(h, "bold") for h in
                               ("NODE", "ROLE", "ADDRESS", "HOST", "DOMAIN", "AGENT", "UP",
                                *(("SCHEDULER",) if batch else ()), "WAITING")]]
    for n in c.nodes:
        up = ago(n.uptime) if n.uptime is not None else "-"
        sched = [scheduler(n.findings) or ("-", "")] if batch else []
        rows.append([(n.name, ""), (n.role, ""), (n.address, ""), (n.host or "-", ""),
                     styled(n.domain_state), styled(n.agent_liveness.value), (up, ""),
                     *sched, (n.waiting, "yellow")])
    return rows


def _checks(c: CloudView) -> list[list[Cell]]:
    """The provider's findings not already shown as a node's scheduler state: each one that
    fails, and every other check; a finding for the whole cloud with its figures (a batch
    queue's: `jobs waiting: 3 job(s) waiting, asking ...`)."""
    rows: list[list[Cell]] = []
    found = [("(cloud)", f) for f in c.findings]
    found += [(n.name, f) for n in c.nodes for f in n.findings]
    for subject, f in found:
        whole = subject == "(cloud)"
        if f.state and f.ok and not whole:
            continue
        said = (f"{f.message}: {f.state}" if whole and f.state and f.state != f.message
                else f.message)
        rows.append([(subject, ""), (f.check, ""), styled("ok" if f.ok else "failing"),
                     (said, "")])
    return rows


def _services(c: CloudView) -> list[list[Cell]]:
    rows: list[list[Cell]] = [[(h, "bold") for h in
                               ("NODE", "SERVICE", "STATE", "READY", "PID", "RESTARTS",
                                "FATAL", "LAST ERROR")]]
    for n in c.nodes:
        for s in n.services:
            rows.append([(n.name, ""), (s.name, ""), styled(s.state), _yes(s.ready),
                         (str(s.pid) if s.pid is not None else "-", ""),
                         (str(s.restarts), "yellow" if s.restarts else ""),
                         (str(s.fatal_count), "red" if s.fatal_count else ""),
                         (s.last_error, "red")])
    return rows


def _not_alive(c: CloudView, *, now: float) -> list[list[Cell]]:
    """Every host and node agent the source does not believe alive: since when and why."""
    seen = [(h.name, "host", h.liveness, h.liveness_since, h.liveness_reason) for h in c.hosts]
    seen += [(n.name, "node", n.agent_liveness, n.agent_liveness_since, n.agent_liveness_reason)
             for n in c.nodes]
    rows: list[list[Cell]] = []
    for name, kind, liveness, since, why in seen:
        if liveness is LivenessView.ALIVE:
            continue
        when = "-" if since is None else f"since {clock(since, now=now)} ({ago(now - since)} ago)"
        rows.append([(name, ""), (kind, ""), styled(liveness.value), (when, ""),
                     (why or "no reason given", "")])
    return rows


def render_cloud(c: CloudView, doc: InspectDoc, *, now: float, color: bool,
                 width: int | None) -> list[str]:
    lines = _cloud_header(c, doc, now=now, color=color)
    hosts: list[list[Cell]] = [[(h, "bold") for h in
                                ("HOST", "ADDRESS", "LIVENESS", "REACHABLE", "FREE MiB",
                                 "DOMAINS")]]
    for h in c.hosts:
        free = str(h.free_memory_mib) if h.free_memory_mib is not None else "-"
        hosts.append([(h.name, ""), (h.address, ""), styled(h.liveness.value),
                      _yes(h.reachable), (free, ""), (str(h.domains), "")])
    for rows in (hosts, _nodes(c, now=now), _services(c)):
        if len(rows) > 1:
            lines += ["", *table(rows, color=color, width=width)]
    checks = _checks(c)
    if checks:
        lines += ["", "  " + paint("PROVIDER CHECKS", "bold", color=color)]
        lines += table(checks, color=color, width=width)
    if c.drains:
        lines += ["", "  " + paint("DRAINED HOSTS", "bold", color=color)]
        lines += _drains(c, now=now, color=color)
    doubts = _not_alive(c, now=now)
    if doubts:
        lines += ["", "  " + paint("AGENTS NOT ALIVE", "bold", color=color)]
        lines += table(doubts, color=color, width=width)
    if c.failed_actions:
        lines += ["", "  " + paint("FAILED ACTIONS", "bold", color=color)]
        failed: list[list[Cell]] = []
        for f in c.failed_actions:
            retry = ("no automatic retry" if f.next_retry is None else
                     "retry now" if f.next_retry <= now else
                     f"retry in {ago(f.next_retry - now)}")
            failed.append([(f"{f.action} {f.subject}", ""),
                           (f"{f.fail_count} failure{'s' if f.fail_count != 1 else ''}",
                            "red"), (retry, ""), (f.last_error, "")])
        lines += table(failed, color=color, width=width)
    if c.events:
        lines += ["", "  " + paint("LAST EVENTS", "bold", color=color)]
        lines += table([event_cells(e, now=now) for e in c.events], color=color, width=width)
    return lines


def _drains(c: CloudView, *, now: float, color: bool) -> list[str]:
    """Each drained host: since when and by whom, then each node still on it with its step
    (done when none is left)."""
    lines = []
    for d in c.drains:
        word = ", stateful nodes move too" if d.move_stateful else ""
        state = (paint(f"{len(d.left)} node{'s' if len(d.left) != 1 else ''} left", "yellow",
                       color=color) if d.left else paint("empty: drain complete", "green",
                                                          color=color))
        lines.append(f"  {d.host}: {state}; drained {clock(d.since, now=now)} "
                     f"({ago(now - d.since)} ago) by {d.by or '?'}{word}")
        lines += [f"    {n.name} ({n.role}): {n.step}" for n in d.left]
    return lines


def event_cells(e: EventView, *, now: float | None = None) -> list[Cell]:
    """One event as table cells; the full date and time when `now` is None."""
    when = (datetime.fromtimestamp(e.time, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
            if now is None else clock(e.time, now=now))
    return [(when, "dim"), (shown(e.cloud), ""), styled(shown(e.kind)), (shown(e.subject), ""),
            (f"term {e.term}", "dim"), (shown(e.reason), "")]


def render(doc: InspectDoc, *, now: float, color: bool = False,
           width: int | None = None) -> str:
    """The whole document as text, ending in a newline. Pure: same inputs, same text."""
    if not doc.clouds:
        return f"no clouds (answered by {doc.answered_by})\n"
    out: list[str] = []
    for i, c in enumerate(doc.clouds):
        if i:
            out.append("")
        out += render_cloud(c, doc, now=now, color=color, width=width)
    return "\n".join(out) + "\n"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def plain(text: str) -> str:
    """`text` without ANSI colour codes."""
    return _ANSI.sub("", text)
