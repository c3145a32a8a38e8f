#!/usr/bin/env bash
# `make demo`: the main job, shown on this machine from scratch.
# 1. validates the example manifests and shows a bad manifest refused with one placed message;
# 2. runs a web cloud in real VMs (python -m cloudd_lab.demo): builds the node image (Debian 12,
#    systemd, cloud-init, the agent, nginx/WEBrick/MariaDB; cached once built), makes the lab
#    (bridge, namespaces, PKI, three host agents on this machine's libvirtd), shows the VMs
#    boot and serve the site through the balancer, kills a VM while a client writes every
#    100 ms and prints the downtime and the writes lost, stops the cloud cleanly and removes
#    everything; each stage's seconds at the end. Needs root (namespaces, libvirt).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== cloudd-cli validate --show manifests/*.yaml"
.venv/bin/cloudd-cli validate --show manifests/*.yaml
echo
echo "== a manifest with a typo is refused (exit 1), with file:line:column: field: why"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r manifests/templates "$tmp/"
sed 's/192.0.2.176/192.0.2.300/' manifests/web.yaml > "$tmp/web-typo.yaml"
if .venv/bin/cloudd-cli validate "$tmp/web-typo.yaml"; then
  echo "demo: the bad manifest was accepted" >&2; exit 1
fi
echo
if [ "$(id -u)" -ne 0 ]; then
  echo "demo: the real-VM part needs root (network namespaces, qemu:///system)" >&2; exit 1
fi
echo "== starting libvirtd if it is not running"
scripts/ensure-libvirtd.sh
echo
echo "== a web cloud in real VMs: python -m cloudd_lab.demo"
exec .venv/bin/python -m cloudd_lab.demo "$@"
