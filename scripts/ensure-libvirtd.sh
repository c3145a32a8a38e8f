#!/usr/bin/env bash
# Starts virtlogd and libvirtd when they are not running (machines without systemd), and waits
# until qemu:///system answers.
set -euo pipefail
if ! pgrep -x virtlogd >/dev/null; then virtlogd -d; fi
if ! pgrep -x libvirtd >/dev/null; then libvirtd -d; fi
for _ in $(seq 1 100); do
  if virsh -c qemu:///system uri >/dev/null 2>&1; then exit 0; fi
  sleep 0.1
done
echo "libvirtd did not answer on qemu:///system" >&2
exit 1
