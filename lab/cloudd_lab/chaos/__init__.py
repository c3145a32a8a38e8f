"""A chaos soak: a web cloud of real agents in namespaces under a seeded random schedule of
faults, with its safety checked all the time from outside (the agents' local APIs, their event
logs, libvirt on the machine, a client's ledger of acknowledged writes).

- `schedule`: the faults as a pure function of a seed (the seed reproduces the schedule);
- `invariants`: the checkers, pure, fed observations; each breach is a `Breach`;
- `faults`: the lab (`ChaosLab`) and what each fault does to it, and undoes;
- `runner`: the soak itself (`python -m cloudd_lab.chaos --seed N --duration S`).
"""
