"""Checkpoints on disk: the directory format and manifest, the catalogue, path confinement,
and the tar archives (rootfs diffs, image layers, checkpoint archives)."""
