#!/bin/busybox sh
# PID 1 of a kernel-matrix guest (xtask/src/vm/guest.rs builds the initramfs).
# Loads the modules in /modules/load-order, mounts the host's root over 9p
# (read-only) under a tmpfs overlay, mounts the run's output share at
# /vm/out, then either runs /vm/job.sh in a chroot (mtx.mode=chroot) or boots
# the host's systemd there (mtx.mode=systemd), whose units run the job.
bb=/bin/busybox
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mount -t devtmpfs devtmpfs /dev
say() { echo "mtx-init: $*" > /dev/console; }
fail() {
  say "FAILED: $*"
  $bb poweroff -f
}
for module in $($bb cat /modules/load-order); do
  $bb insmod "/modules/$module.ko" || fail "insmod $module"
done
$bb mkdir -p /lower /rw /newroot
$bb mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=524288,cache=loose host0 /lower ||
  fail "mounting the host's root over 9p"
$bb mount -t tmpfs -o mode=0755 tmpfs /rw
$bb mkdir -p /rw/upper /rw/work
$bb mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot ||
  fail "mounting the overlay"
$bb mkdir -p /newroot/vm/out
$bb mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 out0 /newroot/vm/out ||
  fail "mounting the output share"
$bb cp /job.sh /newroot/vm/job.sh
$bb cp /config "/newroot/boot/config-$($bb uname -r)"
# The host's fstab names disks this guest does not have.
: > /newroot/etc/fstab
mode=$($bb sed -n 's/.*mtx\.mode=\([a-z]*\).*/\1/p' /proc/cmdline)
say "kernel $($bb uname -r), mode $mode"
# Not a container: the host's root may carry a container marker, which would
# make systemd ignore the kernel command line and skip udev.
$bb rm -f /newroot/.dockerenv /newroot/run/.containerenv
if [ "$mode" = systemd ]; then
  $bb cp -r /units/. /newroot/etc/systemd/system/
  # Timers (apt, man-db, ...) would start jobs of the host's in the guest.
  $bb ln -sf /dev/null /newroot/etc/systemd/system/timers.target
  # tmpfiles' `D /tmp` would empty the host's /tmp in the overlay at boot
  # (slowly, over 9p), and with it a checkout that lives there.
  $bb mkdir -p /newroot/etc/tmpfiles.d
  : > /newroot/etc/tmpfiles.d/tmp.conf
  for fs in proc sys dev; do
    $bb mount --move "/$fs" "/newroot/$fs"
  done
  exec $bb switch_root /newroot /lib/systemd/systemd --unit=mtx.target --show-status=false
fi
$bb mount -t proc proc /newroot/proc
$bb mount -t sysfs sysfs /newroot/sys
$bb mount -t devtmpfs devtmpfs /newroot/dev
$bb mkdir -p /newroot/dev/pts /newroot/dev/shm
$bb mount -t devpts devpts /newroot/dev/pts
$bb mount -t tmpfs tmpfs /newroot/dev/shm
# No tmpfs on /tmp: the overlay is writable, and the checkout under test may
# live in the host's /tmp.
$bb mount -t tmpfs tmpfs /newroot/run
$bb mkdir -p /newroot/run/netns
$bb mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup
$bb mount -t bpf bpf /newroot/sys/fs/bpf
$bb mount -t debugfs debugfs /newroot/sys/kernel/debug
$bb mount -t tracefs tracefs /newroot/sys/kernel/tracing
$bb chroot /newroot /bin/sh /vm/job.sh
code=$?
echo "$code" > /newroot/vm/out/job-exit
say "job exited $code"
$bb sync
$bb poweroff -f
