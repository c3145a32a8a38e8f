#!/bin/busybox sh
# /init of cloudd's test guest (see cloudd/vmctl/testguest.py).
#
# 1. mount proc, sys, dev; load the modules listed in /etc/modules, in order;
# 2. mount the host's / (virtiofs tag "hostroot") read-only in spirit: as the lower layer of an
#    overlay whose upper layer is a tmpfs, so that the guest never writes to the host;
# 3. configure eth0 from cloudd.ip / cloudd.gw on the kernel command line;
# 4. run the base64 command of cloudd.cmd64 with /bin/sh -c, chrooted into the overlay.
# Every step is logged to the console; any failure, and the command's exit, powers the guest
# off (the domain's on_poweroff is destroy), so a broken guest never hangs a test.

/bin/busybox --install -s /bin
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root

log() {
    read -r up _ < /proc/uptime 2>/dev/null
    echo "cloudd-init: [${up:-?}] $*"
}
fail() {
    log "FAILED: $*"
    sync
    poweroff -f
    sleep 3600
}

mount -t proc proc /proc || fail "mount /proc"
mount -t sysfs sysfs /sys || fail "mount /sys"
mount -t devtmpfs devtmpfs /dev || fail "mount /dev"
log "step mounts: proc sys dev"

IP=; GW=; HOSTNAME=testguest; TMPFS=; CMD64=; TAG=hostroot
for word in $(cat /proc/cmdline); do
    case "$word" in
        cloudd.ip=*) IP="${word#cloudd.ip=}" ;;
        cloudd.gw=*) GW="${word#cloudd.gw=}" ;;
        cloudd.hostname=*) HOSTNAME="${word#cloudd.hostname=}" ;;
        cloudd.tmpfs=*) TMPFS="${word#cloudd.tmpfs=}" ;;
        cloudd.cmd64=*) CMD64="${word#cloudd.cmd64=}" ;;
        cloudd.fs=*) TAG="${word#cloudd.fs=}" ;;
    esac
done
[ -n "$CMD64" ] || fail "no cloudd.cmd64 on the kernel command line"
CMD="$(echo "$CMD64" | base64 -d)" || fail "cloudd.cmd64 is not base64"

while read -r mod; do
    [ -n "$mod" ] || continue
    insmod "/lib/modules/$mod" || fail "insmod $mod"
done < /etc/modules
log "step modules: $(tr '\n' ' ' < /etc/modules)"

mount -t virtiofs -o ro "$TAG" /lower || fail "mount virtiofs $TAG"
mount -t tmpfs -o mode=0755 upper /upper || fail "mount tmpfs upper"
mkdir -p /upper/data /upper/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work /newroot \
    || fail "mount overlay"
mount -t proc proc /newroot/proc || fail "mount /newroot/proc"
mount -t sysfs sysfs /newroot/sys || fail "mount /newroot/sys"
mount -t devtmpfs devtmpfs /newroot/dev || fail "mount /newroot/dev"
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts || fail "mount /newroot/dev/pts"
mount -t tmpfs -o mode=1777 shm /newroot/dev/shm || fail "mount /newroot/dev/shm"
# A fresh /run (the host's sockets and pid files mean nothing here). /tmp stays the host's,
# seen through the overlay like the rest: a checkout or virtualenv may live there, and the
# guest's writes stay in its own upper layer anyway.
for dir in /run $(echo "$TMPFS" | tr ',' ' '); do
    mkdir -p "/newroot$dir" || fail "mkdir $dir"
    mount -t tmpfs -o mode=0755 tmpfs "/newroot$dir" || fail "mount tmpfs $dir"
done
log "step root: host / over virtiofs ($TAG) under a tmpfs overlay"

hostname "$HOSTNAME"
echo "$HOSTNAME" > /newroot/etc/hostname
ip link set lo up || fail "lo up"
if [ -n "$IP" ]; then
    n=0
    while [ ! -e /sys/class/net/eth0 ]; do
        n=$((n + 1))
        [ "$n" -le 50 ] || fail "no eth0 after 10 s"
        sleep 0.2
    done
    ip addr add "$IP" dev eth0 || fail "address $IP on eth0"
    ip link set eth0 up || fail "eth0 up"
    if [ -n "$GW" ]; then
        ip route add default via "$GW" || fail "default route via $GW"
    fi
    log "step network: eth0 $IP gateway ${GW:-none}"
fi

log "step run: $CMD"
# Through a pipe, not the console itself: the command's output is a log, not a terminal (so
# structlog writes JSON lines); pipefail keeps the command's own exit status.
set -o pipefail
chroot /newroot /bin/sh -c "$CMD" < /dev/null 2>&1 | cat > /dev/console
status=$?
log "command exited with status $status"
sync
poweroff -f
sleep 3600
