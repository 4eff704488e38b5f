"""The files a container changed relative to its image: its overlay upper directory.

At checkpoint the upper directory becomes `rootfs-diff.tar` (created and changed files) and
`deleted.files` (a JSON list of paths the container deleted: overlay whiteouts, plus opaque
directories, whose old content must go before the new content is unpacked), the layout CRI-O
uses. At restore both are applied to the target container's root filesystem before CRIU runs,
so files the restored processes hold open exist with the contents they had.
"""
from __future__ import annotations

import json
import os
import stat
import tarfile
from pathlib import Path

from sidecar.errors import DumpFailed, RestoreFailed
from sidecar.storage.tar import Extractor, add, is_opaque, is_whiteout, walk

DIFF_TAR = "rootfs-diff.tar"
DELETED_FILES = "deleted.files"
_SOURCE = "the checkpoint's rootfs diff"


def write_diff(upper: Path, dest_dir: Path) -> list[str]:
    """Write rootfs-diff.tar and deleted.files for `upper` into dest_dir; return the deletions."""
    deleted: list[str] = []
    try:
        with tarfile.open(dest_dir / DIFF_TAR, "w", format=tarfile.PAX_FORMAT) as tar:
            for rel, st in walk(upper):
                if is_whiteout(st):
                    deleted.append("/" + rel)
                    continue
                info = add(tar, upper / rel, rel)
                if info is not None and info.isdir() and is_opaque(upper / rel):
                    deleted.append("/" + rel)
    except OSError as exc:
        raise DumpFailed(f"cannot copy the container's changed files from {upper} into the "
                         f"checkpoint: {exc}") from exc
    (dest_dir / DELETED_FILES).write_text(json.dumps(deleted))
    os.chmod(dest_dir / DIFF_TAR, 0o600)
    os.chmod(dest_dir / DELETED_FILES, 0o600)
    return deleted


def diff_size_estimate(upper: Path) -> int:
    """About how many bytes write_diff will write for `upper`, at most: a tar header per entry
    plus each regular file's content rounded up to tar's blocks (hard links counted in full),
    from lstat alone (nothing is read). 0 when `upper` cannot be read."""
    total = 0
    try:
        for _rel, st in walk(upper):
            total += 3 * tarfile.BLOCKSIZE  # the header, and a pax header with long names
            if stat.S_ISREG(st.st_mode):
                total += -(-st.st_size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    except OSError:
        return total
    return total


def apply_diff(checkpoint: Path, rootfs: Path) -> bool:
    """Apply a checkpoint's rootfs diff onto `rootfs`. Returns False when it has none.

    Every member's name and kind is checked before anything is touched (a device node is
    ContentRefused); then the deletions, then the members, each made in a directory reached
    beneath rootfs (storage/tar.py), setuid and setgid dropped."""
    tar_path = checkpoint / DIFF_TAR
    if not tar_path.exists():
        return False
    deleted_path = checkpoint / DELETED_FILES
    deleted = json.loads(deleted_path.read_text()) if deleted_path.exists() else []
    try:
        with Extractor(rootfs, source=_SOURCE, error=RestoreFailed) as diff, \
                tarfile.open(tar_path) as tar:
            members = tar.getmembers()
            for info in members:
                diff.check(info)
            for name in deleted:
                diff.delete(str(name), container_view=True)
            for info in members:
                diff.extract(tar, info)
            diff.finish()
    except (OSError, tarfile.TarError) as exc:
        raise RestoreFailed(f"cannot apply the checkpoint's file changes to {rootfs}: {exc}"
                            ) from exc
    return True
