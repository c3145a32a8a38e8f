# cloudd: the README's commands. Every target that runs code sets up what it needs first.
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup test unit e2e lint demo bench chaos clean

setup:
	@scripts/setup.sh

# The whole suite: the fast tests, tests/real (namespaces, libvirt, services) and tests/e2e (VMs)
# with one case of each VM scenario; the rest of the VM matrix (e2e_full) runs in `make e2e`.
# TORQUE is built from its source tarball first, once per machine (scripts/build-torque.sh).
test: setup
	@scripts/build-torque.sh
	@scripts/ensure-libvirtd.sh
	@$(PY) -m pytest -m "not e2e_full" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# Pure and fast tests only: no libvirt, no namespaces, no services, no VMs. The real-process tests
# are left out by place (tests/real, tests/e2e: tests/conftest.py refuses them anywhere else)
# and, as a belt, by marker.
unit: setup
	@$(PY) -m pytest --ignore=tests/real --ignore=tests/e2e \
		-m "not libvirt and not netns and not services and not e2e" $(PYTEST_ARGS)

# Every real-VM test, the full matrix included.
e2e: setup
	@scripts/ensure-libvirtd.sh
	@$(PY) -m pytest -m e2e tests/e2e $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check cloudd lab tests bench
	$(VENV)/bin/mypy cloudd
	$(VENV)/bin/lint-imports

demo: setup
	@scripts/build-torque.sh
	@scripts/demo.sh

# Every benchmark, then bench/report.py: their JSON reports merged into bench/results/latest.json
# and the README's benchmark table made from it.
bench: setup
	@scripts/ensure-libvirtd.sh
	@for b in bench/*.py; do [ $$b = bench/report.py ] && continue; \
		echo "== $$b"; $(PY) $$b || exit 1; done
	@$(PY) bench/report.py

# A chaos soak (docs/operations.md, "Chaos soak"): DURATION seconds of seeded faults (default
# 1800) on the web cloud in namespaces; SEED reproduces a schedule (default: a random one, printed).
# VMS=1: the servers and the balancer as VMs from the node image, with qemu and libvirtd faults,
# under the machine's VM lock (one lab of VMs at a time).
chaos: setup
	@scripts/ensure-libvirtd.sh
	@PYTHONPATH=$(CURDIR):$(CURDIR)/lab $(if $(VMS),flock /tmp/cloudd-vm.lock) $(PY) \
		-m cloudd_lab.chaos --duration $(or $(DURATION),1800) $(if $(SEED),--seed $(SEED)) \
		$(if $(VMS),--vms)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
