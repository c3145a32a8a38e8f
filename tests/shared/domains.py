"""A cloudd domain whose one device is its disk: what the tests of a host's images define
(in the in-memory backend, or in real libvirt without ever starting it)."""

from __future__ import annotations

from cloudd.vmctl.metadata import CloudMeta
from cloudd.vmctl.template import NodeDomain, render_domain

ONE_DISK = """<domain type='qemu'>
  <name>${name}</name><uuid>${uuid}</uuid>
  <memory unit='KiB'>${memory_kib}</memory><vcpu>${vcpus}</vcpu>
  ${metadata}
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='${image}'/><target dev='vda' bus='virtio'/></disk>
  </devices>
</domain>"""


def one_disk_xml(cloud: str, node: str, image: str, *, role: str = "server", term: int = 1,
                 memory_mib: int = 64) -> str:
    """The domain of `node` of `cloud` in `term`, booting nothing from `image`."""
    meta = CloudMeta(cloud=cloud, node=node, role=role, term=term)
    return render_domain(ONE_DISK, NodeDomain(meta=meta, memory_mib=memory_mib, vcpus=1,
                                              image=image))
