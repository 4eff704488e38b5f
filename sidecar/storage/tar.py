"""The one tar writer and extractor of the helper: a checkpoint's rootfs-diff.tar, image layers
and checkpoint archives in a registry all go through here.

Writing: entries in a fixed (byte-sorted, depth-first) order, with numeric owners only (the
host's user names mean nothing inside a container) and whole-second times, so the same tree
gives the same bytes. Extracting (Extractor): the destination opened once and every member
made by name in a directory reached from it beneath the destination (storage/beneath.py), so a
container that swaps a directory for a symlink meanwhile cannot have anything written, changed
or deleted outside; whatever stands at a member's place removed first rather than written
through (a symlink, another name of a hardlinked file), hardlinks only to what is inside,
setuid and setgid dropped, device nodes refused, and directories' own attributes set once
everything is written into them. Reading an archive from elsewhere: through a CappedReader (at
most so many bytes of tar, however well they compress) with BoundedTarInfo (no header that
tarfile would hold in memory is larger than MAX_HEADER_BYTES).
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sidecar.errors import ContentRefused, ContentTooLarge, HelperError
from sidecar.storage.beneath import Root, open_dir, remove_at
from sidecar.storage.paths import ROOTFS, relative_name

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
_T = TypeVar("_T")
#: a name the container makes again as fast as it is removed: given up after so many tries
_RETRIES = 3
_SETID = stat.S_ISUID | stat.S_ISGID


def safe_mode(info: tarfile.TarInfo) -> int:
    """The permission bits a member is written with: its own without setuid and setgid. A
    directory keeps setgid (new entries inherit its group; no program runs with it)."""
    mode = info.mode & 0o7777
    return mode & ~stat.S_ISUID if info.isdir() else mode & ~_SETID


class Extractor:
    """Writes archive members below `dest`, whose content is not trusted (a running container's
    root filesystem): dest is opened once, each member's directory is reached from it beneath
    dest (storage/beneath.py) and the member is made there by name, never by a path that could
    be resolved again. `error` is raised, naming `source`, for a member that would lead outside
    (or, with `plain_only`, for anything but files and directories); ContentRefused for a
    device node. `modes` (directory, file) replace the members' own; otherwise setuid and
    setgid are dropped (safe_mode)."""

    def __init__(self, dest: Path, *, source: str, error: type[HelperError],
                 outside: str = ROOTFS, plain_only: bool = False,
                 modes: tuple[int, int] | None = None) -> None:
        self.dest = dest
        self.source = source
        self.error = error
        self.outside = outside
        self.plain_only = plain_only
        self.modes = modes
        self._root: Root | None = None
        self._dirs: list[tuple[str, tarfile.TarInfo]] = []

    def __enter__(self) -> Extractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._root is not None:
            self._root.close()
            self._root = None

    def _open(self) -> Root:
        if self._root is None:
            self._root = Root(self.dest)
        return self._root

    @contextmanager
    def _confined(self, name: str) -> Iterator[None]:
        """The kernel's (or the walk's) refusals as this archive's error."""
        try:
            yield
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                raise self.error(f"refusing path {name!r} from {self.source}: it leads outside "
                                 f"{self.outside}") from exc
            if exc.errno == errno.ELOOP:
                raise self.error(f"refusing path {name!r} from {self.source}: the way to it "
                                 "goes through a /proc magic link or too many symlinks") from exc
            raise

    # -- names and kinds, before anything is touched
    def name(self, name: str, *, container_view: bool = False, allow_root: bool = False) -> str:
        """A name of this archive (or of a list that goes with it) as a relative path below
        dest; refused when it is absolute or climbs out (paths.relative_name). `allow_root`: ""
        for dest itself, else refused."""
        rel = relative_name(name, source=self.source, error=self.error,
                            container_view=container_view, outside=self.outside)
        if not rel and not allow_root:
            raise self.error(f"refusing path {name!r} from {self.source}")
        return rel

    def check(self, info: tarfile.TarInfo) -> str:
        """The member's relative name ("" for dest itself), once its name (and a hardlink's
        target name) and its kind are acceptable: device nodes (but an overlay whiteout,
        character device 0/0) and kinds tar has no file for are refused with ContentRefused,
        naming the member."""
        rel = self.name(info.name, allow_root=True)
        if info.islnk():
            self.name(info.linkname)  # where it leads is resolved when it is made
        if self.plain_only and not (info.isreg() or info.isdir()):
            raise self.error(f"refusing member {info.name!r} of {self.source}: not a file or "
                             "a directory")
        if info.isblk() or (info.ischr() and (info.devmajor, info.devminor) != (0, 0)):
            kind = "block" if info.isblk() else "character"
            raise ContentRefused(
                f"refusing member {info.name!r} of {self.source}: a {kind} device "
                f"({info.devmajor}, {info.devminor}); device nodes are never written into "
                f"{self.outside}", member=info.name)
        if not (info.isreg() or info.isdir() or info.issym() or info.islnk() or info.isfifo()
                or info.ischr()):
            raise ContentRefused(f"refusing member {info.name!r} of {self.source}: tar entry "
                                 f"type {info.type!r} is not a file, directory, link or FIFO",
                                 member=info.name)
        return rel

    # -- writing
    def extract(self, tar: tarfile.TarFile, info: tarfile.TarInfo) -> bool:
        """Write one member; False for the destination itself, whose attributes stay."""
        rel = self.check(info)
        if not rel:
            return False
        root = self._open()
        with self._confined(info.name):
            parent, name = root.parent(rel, create=True)
        try:
            if info.isdir():
                self._make_dir(parent, name)
                self._dirs.append((rel, info))
            elif info.islnk():
                self._hardlink(root, info, parent, name)
            elif info.isreg():
                self._write_file(tar, info, parent, name)
            else:
                self._make_node(info, parent, name)
        finally:
            os.close(parent)
        return True

    def finish(self) -> None:
        """Directory owner, mode and time, deepest first, once nothing more is written into
        them; each directory reached again beneath dest, and left alone when it is no longer
        one. Closes dest."""
        try:
            for rel, info in sorted(self._dirs, key=lambda d: d[0], reverse=True):
                with self._confined(info.name):
                    try:
                        parent, name = self._open().parent(rel)
                    except (FileNotFoundError, NotADirectoryError):
                        continue
                try:
                    fd = open_dir(parent, name)
                except OSError as exc:
                    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                        continue
                    raise
                finally:
                    os.close(parent)
                try:
                    if self.modes is not None:
                        os.fchmod(fd, self.modes[0])
                        continue
                    if os.geteuid() == 0:
                        os.fchown(fd, info.uid, info.gid)
                    os.fchmod(fd, safe_mode(info))
                    os.utime(fd, (info.mtime, info.mtime))
                finally:
                    os.close(fd)
            self._dirs.clear()
        finally:
            self.close()

    def _create(self, parent: int, name: str, make: Callable[[], _T]) -> _T:
        """make() at `name`, once whatever stood there is removed without being followed: a
        symlink or another name of a hardlinked file is replaced, never written through."""
        for _ in range(_RETRIES):
            _clear(parent, name, keep_dir=False)
            try:
                return make()
            except FileExistsError:
                continue
        raise self.error(f"{name!r} of {self.source} cannot be written: something else keeps "
                         "taking its place")

    def _make_dir(self, parent: int, name: str) -> None:
        for _ in range(_RETRIES):
            if _clear(parent, name, keep_dir=True):
                return  # a directory meets a directory
            try:
                os.mkdir(name, 0o700, dir_fd=parent)  # its attributes: finish()
                return
            except FileExistsError:
                continue
        raise self.error(f"{name!r} of {self.source} cannot be made: something else keeps "
                         "taking its place")

    def _write_file(self, tar: tarfile.TarFile, info: tarfile.TarInfo, parent: int,
                    name: str) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = self._create(parent, name, lambda: os.open(name, flags, 0o600, dir_fd=parent))
        try:
            source = tar.extractfile(info)
            if source is not None:
                with open(fd, "wb", closefd=False) as out:
                    shutil.copyfileobj(source, out, 1 << 20)
            if os.geteuid() == 0:
                os.fchown(fd, info.uid, info.gid)
            os.fchmod(fd, safe_mode(info) if self.modes is None else self.modes[1])
            os.utime(fd, (info.mtime, info.mtime))
        finally:
            os.close(fd)

    def _make_node(self, info: tarfile.TarInfo, parent: int, name: str) -> None:
        """A symlink, a FIFO or a whiteout (character device 0/0); its owner, mode and time set
        through an O_PATH descriptor of the very node made (a symlink: its owner only)."""
        if info.issym():
            kind = stat.S_IFLNK
            self._create(parent, name, lambda: os.symlink(info.linkname, name, dir_fd=parent))
        elif info.isfifo():
            kind = stat.S_IFIFO
            self._create(parent, name, lambda: os.mkfifo(name, 0o600, dir_fd=parent))
        else:
            kind = stat.S_IFCHR
            self._create(parent, name, lambda: os.mknod(name, stat.S_IFCHR | 0o600,
                                                        os.makedev(0, 0), dir_fd=parent))
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            if stat.S_IFMT(os.fstat(fd).st_mode) != kind:
                raise self.error(f"refusing member {info.name!r} of {self.source}: something "
                                 "else took its place while it was written")
            node = f"/proc/self/fd/{fd}"  # the node itself, whatever its name is now
            if os.geteuid() == 0:
                os.chown(node, info.uid, info.gid)
            if kind != stat.S_IFLNK:
                os.chmod(node, safe_mode(info))
                os.utime(node, (info.mtime, info.mtime))
        finally:
            os.close(fd)

    def _hardlink(self, root: Root, info: tarfile.TarInfo, parent: int, name: str) -> None:
        """A second name for what stands at the link's target, which must be below dest too
        (reached the same way); a symlink there is linked itself, not followed."""
        target = self.name(info.linkname)
        with self._confined(info.linkname):
            target_parent, target_name = root.parent(target)
        try:
            self._create(parent, name, lambda: os.link(
                target_name, name, src_dir_fd=target_parent, dst_dir_fd=parent,
                follow_symlinks=False))
        finally:
            os.close(target_parent)

    # -- deleting
    def delete(self, name: str, *, container_view: bool = False) -> bool:
        """Remove what stands at `name` (a whiteout, a line of deleted.files) without following
        it, a directory with its content; False when nothing does."""
        rel = self.name(name, container_view=container_view)
        with self._confined(name):
            try:
                parent, leaf = self._open().parent(rel)
            except (FileNotFoundError, NotADirectoryError):
                return False
        try:
            return remove_at(parent, leaf)
        finally:
            os.close(parent)

    def empty(self, name: str) -> bool:
        """Remove the content of directory `name` ("" for dest; an overlay opaque directory);
        False when `name` is not a directory (a symlink is never followed: it is replaced by
        the archive's directory later)."""
        rel = self.name(name, allow_root=True)
        with self._confined(name):
            try:
                parent, leaf = self._open().parent(rel)
            except (FileNotFoundError, NotADirectoryError):
                return False
        try:
            directory = open_dir(parent, leaf or ".")
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return False
            raise
        finally:
            os.close(parent)
        try:
            for child in sorted(os.listdir(directory)):
                remove_at(directory, child)
        finally:
            os.close(directory)
        return True


def _clear(parent: int, name: str, *, keep_dir: bool) -> bool:
    """Remove what stands at `name` of `parent` unless `keep_dir` and it is a directory (then
    True)."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if keep_dir and stat.S_ISDIR(st.st_mode):
        return True
    remove_at(parent, name)
    return False
