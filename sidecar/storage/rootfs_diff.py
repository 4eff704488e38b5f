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
import shutil
import stat
import tarfile
from pathlib import Path

from sidecar.errors import DumpFailed, RestoreFailed

DIFF_TAR = "rootfs-diff.tar"
DELETED_FILES = "deleted.files"
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")


def upper_dir(pid: int) -> Path | None:
    """The overlay upper directory of the root mount of process `pid`, if it has one."""
    try:
        lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or fields[4] != "/":
            continue
        fstype, _source, *rest = right.split()
        if fstype != "overlay" or not rest:
            continue
        for opt in rest[0].split(","):
            if opt.startswith("upperdir="):
                return Path(opt.split("=", 1)[1])
    return None


def is_whiteout(st: os.stat_result) -> bool:
    """An overlay whiteout: a character device 0/0."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(path: Path) -> bool:
    """An overlay directory marked opaque: the lower layers' content under it is hidden."""
    for name in OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


def write_diff(upper: Path, dest_dir: Path) -> list[str]:
    """Write rootfs-diff.tar and deleted.files for `upper` into dest_dir; return the deletions."""
    deleted: list[str] = []
    try:
        with tarfile.open(dest_dir / DIFF_TAR, "w", format=tarfile.PAX_FORMAT) as tar:
            for dirpath, dirnames, filenames in os.walk(upper):
                dirnames.sort()
                base = Path(dirpath)
                for name in sorted(dirnames) + sorted(filenames):
                    path = base / name
                    rel = path.relative_to(upper).as_posix()
                    st = path.lstat()
                    if is_whiteout(st):
                        deleted.append("/" + rel)
                        continue
                    if stat.S_ISDIR(st.st_mode) and is_opaque(path):
                        deleted.append("/" + rel)
                    tar.add(path, arcname=rel, recursive=False)
    except OSError as exc:
        raise DumpFailed(f"cannot copy the container's changed files from {upper} into the "
                         f"checkpoint: {exc}") from exc
    (dest_dir / DELETED_FILES).write_text(json.dumps(deleted))
    os.chmod(dest_dir / DIFF_TAR, 0o600)
    os.chmod(dest_dir / DELETED_FILES, 0o600)
    return deleted


def inside(rootfs: Path, rel: str, source: str = "the checkpoint's rootfs diff") -> Path:
    """rootfs/rel, refused when `..` or a symlink in its parent directories leads outside.

    The target container controls its own root filesystem, so a parent such as
    `/data -> /etc` must not turn a deletion into one on the host."""
    norm = os.path.normpath("/" + rel).lstrip("/")
    if not norm:
        raise RestoreFailed(f"refusing path {rel!r} from {source}")
    path = rootfs / norm
    root_real = os.path.realpath(rootfs)
    parent_real = os.path.realpath(path.parent)
    if parent_real != root_real and not parent_real.startswith(root_real + os.sep):
        raise RestoreFailed(f"refusing path {rel!r} from {source}: "
                            f"it leads outside the container's root filesystem")
    return path


def _extract(tar: tarfile.TarFile, rootfs: Path) -> None:
    if hasattr(tarfile, "tar_filter"):  # Python >= 3.11.4 and backports
        tar.extractall(rootfs, filter="tar")
        return
    # older Pythons (Debian 12's 3.11.2): refuse members that would land outside rootfs
    for member in tar.getmembers():
        inside(rootfs, member.name)
        if member.islnk():
            inside(rootfs, member.linkname)
    tar.extractall(rootfs)


def apply_diff(checkpoint: Path, rootfs: Path) -> bool:
    """Apply a checkpoint's rootfs diff onto `rootfs`. Returns False when it has none."""
    tar_path = checkpoint / DIFF_TAR
    if not tar_path.exists():
        return False
    deleted_path = checkpoint / DELETED_FILES
    deleted = json.loads(deleted_path.read_text()) if deleted_path.exists() else []
    try:
        for rel in deleted:
            target = inside(rootfs, rel)
            if target.is_symlink() or target.is_file():
                target.unlink()
            elif target.is_dir():
                shutil.rmtree(target)
        with tarfile.open(tar_path) as tar:
            _extract(tar, rootfs)
    except (OSError, tarfile.TarError) as exc:
        raise RestoreFailed(f"cannot apply the checkpoint's file changes to {rootfs}: {exc}"
                            ) from exc
    return True
