"""The one tar writer and extractor of the helper: a checkpoint's rootfs-diff.tar, image layers
and checkpoint archives in a registry all go through here.

Writing: entries in a fixed (byte-sorted, depth-first) order, with numeric owners only (the
host's user names mean nothing inside a container) and whole-second times, so the same tree
gives the same bytes. Extracting: every member confined below the destination
(storage/paths.py), whatever stands at its place removed first rather than written through
(a symlink, another name of a hardlinked file), hardlinks only to members inside, and
directories' own attributes set once everything is written into them. Reading an archive
from elsewhere: through a CappedReader (at most so many bytes of tar, however well they
compress) with BoundedTarInfo (no header that tarfile would hold in memory is larger than
MAX_HEADER_BYTES).
"""
from __future__ import annotations

import copy
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sidecar.errors import ContentTooLarge, HelperError
from sidecar.storage.paths import ROOTFS, member

# Python >= 3.11.4 takes an extraction filter. Paths are confined here, member by member, and
# the "tar"/"data" filters would strip setuid, sticky and group/other-write bits off the files.
_EXTRACT_KW: dict[str, Any] = (
    {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {})
# overlayfs marks a directory whose lower content is hidden with one of these
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")


# --- overlay upper directories ---------------------------------------------------------------
def is_whiteout(st: os.stat_result) -> bool:
    """An overlay whiteout (a deleted path): a character device 0/0."""
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


# --- writing ---------------------------------------------------------------------------------
def _entries(root: Path, rel: str) -> list[tuple[str, os.stat_result]]:
    with os.scandir(root / rel) as it:
        names = sorted((e.name for e in it), key=os.fsencode)
    return [(f"{rel}/{n}" if rel else n, os.lstat(root / rel / n)) for n in names]


def walk(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every path below `root` as (relative name, lstat), depth first, a directory before its
    content, names byte-sorted."""
    stack = [iter(_entries(root, ""))]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        yield item
        if stat.S_ISDIR(item[1].st_mode):
            stack.append(iter(_entries(root, item[0])))


def add(tar: tarfile.TarFile, path: Path, arcname: str, *, root_owner: bool = False
        ) -> tarfile.TarInfo | None:
    """Add `path` (not following it; a directory without its content) as `arcname`. Sockets
    are left out (whoever listens on one creates it again): None then."""
    if stat.S_ISSOCK(os.lstat(path).st_mode):
        return None
    info = tar.gettarinfo(str(path), arcname=arcname)  # a second name of an inode: a hardlink
    info.uname = info.gname = ""
    if root_owner:
        info.uid = info.gid = 0
    info.mtime = int(info.mtime)
    if info.isreg():
        with open(path, "rb") as f:
            tar.addfile(info, f)
    else:
        tar.addfile(info)
    return info


def marker(name: str, mtime: float) -> tarfile.TarInfo:
    """An empty regular file standing for something else (a whiteout, an opaque directory)."""
    info = tarfile.TarInfo(name)
    info.mode = 0o600
    info.mtime = int(mtime)
    return info


# --- reading, bounded ------------------------------------------------------------------------
#: tarfile reads pax headers and GNU long names whole into memory: none may be larger
MAX_HEADER_BYTES = 1 << 20
_HEADER_TYPES = frozenset({tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                           tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK})


class BoundedTarInfo(tarfile.TarInfo):
    """tarfile's member header, refusing extended headers larger than MAX_HEADER_BYTES before
    tarfile reads them (pass it as `tarinfo=` to tarfile.open)."""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> BoundedTarInfo:
        info = super().frombuf(buf, encoding, errors)
        if info.type in _HEADER_TYPES and info.size > MAX_HEADER_BYTES:
            raise ContentTooLarge(
                f"the archive has an extended header of {info.size} bytes (at most "
                f"{MAX_HEADER_BYTES} are read)", limit_bytes=MAX_HEADER_BYTES)
        return info


class CappedReader:
    """A read-only file that passes on at most `limit` bytes of `stream` and raises
    ContentTooLarge as soon as there are more: what an archive expands to is bounded however
    well it compresses, and no read asks `stream` for more than one byte past the limit."""

    def __init__(self, stream: Any, limit: int, what: str) -> None:
        self.stream = stream
        self.limit = limit
        self.what = what
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        room = self.limit - self.count + 1
        want = room if size is None or size < 0 else min(size, room)
        data: bytes = self.stream.read(want)
        self.count += len(data)
        if self.count > self.limit:
            raise ContentTooLarge(
                f"{self.what} expands to more than {self.limit} bytes; it is refused (a "
                "decompression bomb, or a limit to raise)", limit_bytes=self.limit)
        return data

    def readable(self) -> bool:
        return True


# --- extracting ------------------------------------------------------------------------------
def remove(path: Path) -> None:
    """Remove `path` without following it: a directory with its content, anything else
    unlinked."""
    if stat.S_ISDIR(os.lstat(path).st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


class Extractor:
    """Writes archive members below `dest`, each one confined; `error` is raised, naming
    `source`, for a member that would lead outside (or, with `plain_only`, for anything but
    files and directories). `modes` (directory, file) replace the members' own."""

    def __init__(self, dest: Path, *, source: str, error: type[HelperError],
                 outside: str = ROOTFS, plain_only: bool = False,
                 modes: tuple[int, int] | None = None) -> None:
        self.dest = dest
        self.source = source
        self.error = error
        self.outside = outside
        self.plain_only = plain_only
        self.modes = modes
        self._dirs: list[tuple[Path, tarfile.TarInfo]] = []

    def path(self, name: str, *, container_view: bool = False,
             allow_root: bool = False) -> Path:
        """Where a name of this archive (or of a list that goes with it) lands."""
        return member(self.dest, name, source=self.source, error=self.error,
                      container_view=container_view, allow_root=allow_root,
                      outside=self.outside)

    def extract(self, tar: tarfile.TarFile, info: tarfile.TarInfo) -> bool:
        """Write one member; False for the destination itself, whose attributes stay."""
        target = self.path(info.name, allow_root=True)
        if target == self.dest:
            return False
        if self.plain_only and not (info.isreg() or info.isdir()):
            raise self.error(f"refusing member {info.name!r} of {self.source}: not a file or "
                             "a directory")
        self._clear_for(target, info)
        if info.islnk():
            self._hardlink(info, target)
            return True
        confined = copy.copy(info)
        confined.name = target.relative_to(self.dest).as_posix()
        tar.extract(confined, self.dest, set_attrs=not info.isdir(), numeric_owner=True,
                    **_EXTRACT_KW)
        if info.isdir():
            self._dirs.append((target, confined))
        elif self.modes is not None:
            os.chmod(target, self.modes[1])
        return True

    def finish(self) -> None:
        """Directory owner, mode and time, deepest first, once nothing more is written into
        them."""
        for path, info in sorted(self._dirs, key=lambda d: str(d[0]), reverse=True):
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                continue
            if self.modes is not None:
                os.chmod(path, self.modes[0])
                continue
            if os.geteuid() == 0:
                os.chown(path, info.uid, info.gid, follow_symlinks=False)
            os.chmod(path, info.mode & 0o7777)
            os.utime(path, (info.mtime, info.mtime), follow_symlinks=False)
        self._dirs.clear()

    @staticmethod
    def _clear_for(target: Path, info: tarfile.TarInfo) -> None:
        """Remove what is at target unless a directory meets a directory: extraction must
        neither fail on it nor write through a symlink or into another name of a hardlinked
        file."""
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            return
        if info.isdir() and stat.S_ISDIR(st.st_mode):
            return
        remove(target)

    def _hardlink(self, info: tarfile.TarInfo, target: Path) -> None:
        source = self.path(info.linkname)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(source, target, follow_symlinks=False)
