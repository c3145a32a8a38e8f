"""What an AppScale node's agent does, run inside a test node's namespaces: converge its
assignment, or do one of its role's actions and print the answer as JSON.

    python -m cloudd_lab.asnode converge ASSIGNMENT.json
    python -m cloudd_lab.asnode act ASSIGNMENT.json ACTION '{"arg": "value"}'

The assignment file holds `Assignment`'s fields as JSON (paths and addresses as text, peers
as lists). Run through the node's `NodeNs.argv`, the files the provider writes at system paths
(/etc/ssh, /root/.ssh) land in the node's private copies, and a job it starts stays in the
node's namespaces. Test tooling only.
"""

from __future__ import annotations

import asyncio
import json
import sys
from ipaddress import ip_address
from pathlib import Path

from cloudd.errors import ClouddError
from cloudd.providers.appscale.provider import PROVIDER
from cloudd.providers.base import ACT_WITHIN, Assignment, Peer, converge
from cloudd.providers.registry import Registry


def load(path: str) -> Assignment:
    d = json.loads(Path(path).read_text())
    return Assignment(
        cloud=d["cloud"], node=d["node"], role=d["role"], roles=tuple(d["roles"]),
        address=ip_address(d["address"]), root=Path(d["root"]),
        secrets_dir=Path(d["secrets_dir"]), settings=d["settings"],
        peers=tuple(Peer(p[0], p[1], ip_address(p[2]), p[3], tuple(p[4]))
                    for p in d["peers"]))


async def run(argv: list[str]) -> int:
    a = load(argv[1])
    if argv[0] == "converge":
        await converge(PROVIDER, a)
        return 0
    from cloudd.daemon.node import actions  # what a node agent checks before acting

    action, args = argv[2], json.loads(argv[3])
    role = actions.acting_role(Registry([PROVIDER]).get("appscale"), a.role, a.roles, action)
    why = actions.refusal(role, action, tuple(sorted(args.items())), node=a.node)
    if why is not None:
        print(json.dumps({"error": why}))
        return 1
    try:
        async with asyncio.timeout(ACT_WITHIN):
            answer = await role.act(a.as_role(role.name), action, args)
    except ClouddError as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    print(json.dumps(dict(answer)))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(run(sys.argv[1:])))
