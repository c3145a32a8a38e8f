"""How long the test guest takes to boot under TCG: to userland, and to Python answering.

Each run defines a test guest on a NetLab bridge whose command is `python3 -m http.server`,
starts it and polls, from the host side of the bridge, (a) the serial log for /init's first
line (userland) and (b) the HTTP port (Python answering). Prints one row per run and the
medians. Needs root and a running libvirtd (qemu:///system).

    .venv/bin/python bench/guest_boot.py [--runs 3] [--memory-mib 512]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import libvirt
from cloudd_lab.netlab import NetLab
from cloudd_lab.testguest import GuestBoot, TestGuestDomain, build_test_guest, domain_xml

from cloudd.vmctl.template import node_mac

CACHE = Path("/var/tmp/cloudd-testguest-bench")
PORT = 8080
TIMEOUT = 180.0


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def one_run(conn: libvirt.virConnect, lab: NetLab, *, memory_mib: int) -> dict[str, float]:
    image = build_test_guest(CACHE)
    name = f"cloudd-bench-{uuid.uuid4().hex[:6]}"
    address = lab.allocate()
    log = CACHE / f"{name}.log"
    spec = TestGuestDomain(
        name=name, image=image, bridge=lab.bridge, mac=node_mac("bench", name),
        serial_log=log, memory_mib=memory_mib,
        boot=GuestBoot(address=str(address), command=f"python3 -m http.server {PORT}"))
    dom = conn.defineXML(domain_xml(spec))
    url = f"http://{address.ip}:{PORT}/"
    row: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        dom.create()
        row["create"] = time.monotonic() - t0
        while time.monotonic() - t0 < TIMEOUT and "python" not in row:
            if not dom.isActive():
                raise RuntimeError(f"{name} stopped; console:\n{log.read_text(errors='replace')}")
            if "userland" not in row and log.exists() and "cloudd-init:" in log.read_text(
                    errors="replace"):
                row["userland"] = time.monotonic() - t0
            if "userland" in row and _answers(url):
                row["python"] = time.monotonic() - t0
            time.sleep(0.05)
        if "python" not in row:
            raise RuntimeError(f"{name}: no answer on {url} within {TIMEOUT:.0f} s")
        console = log.read_text(errors="replace")
        for line in console.splitlines():
            if "step run" in line:  # the guest's own clock: kernel start to the command
                row["guest_run"] = float(line.split("[", 1)[1].split("]", 1)[0])
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()
        log.unlink(missing_ok=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--memory-mib", type=int, default=512)
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    conn = libvirt.open("qemu:///system")
    columns = ("create", "userland", "guest_run", "python")
    rows = []
    try:
        with NetLab("h7bench", subnet="10.231.250.0/24") as lab:
            print(f"test guest boot under TCG, {args.runs} runs, {args.memory_mib} MiB "
                  "(seconds from virDomainCreate; guest_run is the guest's own uptime "
                  "when /init starts the command)")
            print("run " + "".join(f"{c:>11}" for c in columns))
            for i in range(args.runs):
                row = one_run(conn, lab, memory_mib=args.memory_mib)
                rows.append(row)
                print(f"{i + 1:<4}" + "".join(f"{row.get(c, float('nan')):>11.2f}"
                                              for c in columns), flush=True)
    finally:
        conn.close()
    medians = [statistics.median(r[c] for r in rows if c in r) for c in columns]
    print("med " + "".join(f"{m:>11.2f}" for m in medians))
    return 0


if __name__ == "__main__":
    sys.exit(main())
