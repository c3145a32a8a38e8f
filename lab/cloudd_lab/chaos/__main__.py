"""`python -m cloudd_lab.chaos --seed N --duration S`: one soak (see runner.py); exit 1 at the
first breach, with the seed and the last events."""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from dataclasses import asdict
from pathlib import Path

from cloudd_lab.chaos.runner import ChaosBreach, run


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m cloudd_lab.chaos")
    parser.add_argument("--seed", type=int, default=None,
                        help="the schedule's seed (default: a random one, printed)")
    parser.add_argument("--duration", type=float, default=1800.0,
                        help="seconds of faults (default 1800)")
    parser.add_argument("--log", type=Path, default=None,
                        help="the JSON lines log (default /tmp/cloudd-chaos/seed-N.jsonl)")
    parser.add_argument("--concurrency", type=int, default=2,
                        help="faults in force at once, at most (default 2)")
    parser.add_argument("--vms", action="store_true",
                        help="the servers and the balancer as real VMs from the node image, "
                             "with qemu and libvirtd faults (run it under "
                             "`flock /tmp/cloudd-vm.lock`)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else secrets.randbelow(1_000_000)
    print(f"chaos soak: seed {seed}, {args.duration:g} s of faults"
          + (", servers and balancer in VMs" if args.vms else ""), flush=True)
    try:
        summary = run(seed, args.duration, vms=args.vms, log_path=args.log,
                      concurrency=args.concurrency,
                      progress=lambda line: print(line, flush=True))
    except ChaosBreach as e:
        print(f"chaos soak FAILED: {e}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(summary), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
