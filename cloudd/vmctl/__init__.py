"""Virtual machines through libvirt: templates, metadata, the host backend, events, test guests."""
