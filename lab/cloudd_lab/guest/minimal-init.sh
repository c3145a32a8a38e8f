#!/bin/busybox sh
# The minimal test guest: a domain that boots and stays running, nothing more.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "cloudd-init: minimal guest up"
while :; do sleep 3600; done
