"""What the helper does, as plain functions (no HTTP objects): checkpoint, restore, rootfs
commits, the catalogue, retention, remote copies and events. Built on sidecar.node,
sidecar.storage, sidecar.registry and sidecar.kube."""
