"""Node images: the disk a node VM boots, built from Debian's own packages.

A node VM has no package index, so everything its roles need is in its image: Debian with
systemd and cloud-init (NoCloud), the agent in its own virtualenv with `cloudd.service`
enabled, and the packages of every role of one cloud type. The image is an ext4 filesystem
without a partition table in a qcow2 file, booted by direct kernel boot with the kernel and
initramfs left beside it; a node's identity comes later, on its own seed.

`packages` says what goes in per cloud type, `recipe` turns the inputs into the content key
the cache is named by, `rootfs` is what the build changes in the root tree (pure text), and
`build` runs the stages (mmdebstrap, the agent, the filesystem, qcow2) under a cache lock.
"""
