#!/usr/bin/env bash
# Installs what cloudd's tests and demo need on a Debian 12 machine, as root. Idempotent:
# packages already present and a virtualenv already up to date are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3-venv python3-dev gcc pkg-config libvirt-dev
  libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils
  linux-image-cloud-amd64 busybox-static cpio kmod
  iproute2 iptables procps psmisc curl
  nginx mariadb-server mariadb-client ruby ruby-webrick ruby-mysql2
  munge slurmctld slurmd slurm-client
  openssh-server openssh-client etcd-server genisoimage
  # chronyd -x in the labs' pool host namespaces serves their VMs (this machine's clock is
  # never touched; the policy below keeps the package from starting a chronyd of its own)
  chrony
  mmdebstrap e2fsprogs
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then echo "setup: run as root to install packages" >&2; exit 1; fi
  # Keep package scripts from starting services: cloudd starts what it needs itself.
  created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  stamp=/var/lib/apt/periodic/cloudd-update-stamp
  if [ ! -e "$stamp" ] || [ -n "$(find "$stamp" -mmin +360)" ]; then
    apt-get update -q && mkdir -p "$(dirname "$stamp")" && touch "$stamp"
  fi
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

# Debian's own Python 3.11, so that the agent runs the same inside test guests (which share
# the host's filesystem) and on hosts where cloudd is installed from a package.
PY=/usr/bin/python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.cloudd-installed
if [ ! -e "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ lab/pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  # The labs (namespaces, test guests, the demo) are their own package, never in the wheel.
  .venv/bin/pip install -q --no-deps -e lab/
  touch "$stamp"
fi
scripts/fetch-appscale-tools.sh
echo "setup: ready (.venv/bin/cloudd, .venv/bin/cloudd-cli)"
