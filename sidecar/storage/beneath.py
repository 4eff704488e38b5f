"""Filesystem operations below a directory whose content is not ours: a running container's root
filesystem, whose processes may replace any name in it with a symlink at any moment.

Nothing here checks a path and then uses it. The root is opened once (`Root`); a directory
below it is reached from that descriptor with openat2(2) and RESOLVE_BENEATH |
RESOLVE_NO_MAGICLINKS, so the kernel itself refuses, while it resolves, every step that would
leave the root (an absolute symlink, `..` above it, a /proc magic link): EXDEV or ELOOP.
Without openat2 (ENOSYS: Linux < 5.6, or a seccomp filter that does not know it) the same is
done by hand (`walk`): one component at a time with O_NOFOLLOW, symlinks read and expanded by
us, `..` taken from the directories we came through, never from the filesystem. Every
operation is then made on a name in a directory descriptor (the *at system calls, never
following the last component), so what it touches is in that directory, below the root.
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
import weakref

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
#: how a directory below the root is reached: never out of it, never through /proc's magic
#: links. Mount points below the root are crossed: in the helper's mount namespace they are the
#: runtime's or the administrator's, and a container cannot make one there.
BENEATH = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS
#: as the kernel's path walk: at most 40 symlinks on the way
MAX_SYMLINKS = 40
#: openat2 answers EAGAIN when a rename raced its `..` handling: tried this often, then walked
_AGAIN = 8

_DIR_PATH = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_DIR_READ = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# openat2 is number 437 wherever Linux uses the common system call table (every architecture
# the helper is built for); elsewhere the walk is used
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "arm64": 437, "armv7l": 437, "armv8l": 437,
                "i386": 437, "i686": 437, "riscv64": 437, "s390x": 437, "ppc64le": 437,
                "ppc64": 437, "loongarch64": 437}.get(platform.machine())


class _OpenHow(ctypes.Structure):
    """struct open_how (linux/openat2.h)."""

    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
#: False once openat2 said ENOSYS: the walk from then on
_openat2_works = _SYS_OPENAT2 is not None


def openat2(dir_fd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): a new descriptor for `path` relative to dir_fd, resolved under `resolve`
    (RESOLVE_*). OSError with the kernel's errno; ENOSYS where the helper knows no number."""
    if _SYS_OPENAT2 is None:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS), path)
    how = _OpenHow(flags, mode, resolve)
    fd = _syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_long(dir_fd),
                  ctypes.c_char_p(os.fsencode(path)), ctypes.byref(how),
                  ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def walk(root_fd: int, path: str) -> int:
    """An O_PATH descriptor of directory `path` below root_fd, resolved by hand with the rules
    of RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS: each component opened with O_NOFOLLOW in the
    directory before it; a symlink read and its target resolved the same way (absolute: EXDEV);
    `..` goes back to the directory we came from, and above root_fd is EXDEV. A magic link is
    never followed (its text, read as an ordinary symlink, leads nowhere beneath the root)."""
    todo = [p for p in path.split("/") if p not in ("", ".")]
    todo.reverse()  # a stack: the next component last
    stack = [os.dup(root_fd)]
    links = 0
    try:
        while todo:
            name = todo.pop()
            if name == "..":
                if len(stack) == 1:
                    raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), path)
                os.close(stack.pop())
                continue
            target = _step(stack, name)
            if target is None:
                continue
            links += 1
            if links > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
            if target.startswith("/"):
                raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), path)
            todo.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
        return stack.pop()
    finally:
        for fd in stack:
            os.close(fd)


def _step(stack: list[int], name: str) -> str | None:
    """Directory `name` of stack[-1] pushed onto the stack (None), or, when `name` is a symlink,
    its text. A name that changes between the two questions (a directory again) is asked about
    again."""
    for _ in range(_AGAIN):
        try:
            stack.append(os.open(name, _DIR_PATH | os.O_NOFOLLOW, dir_fd=stack[-1]))
            return None
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            failed = exc
        try:
            return os.readlink(name, dir_fd=stack[-1])
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
        if not stat.S_ISDIR(os.stat(name, dir_fd=stack[-1], follow_symlinks=False).st_mode):
            raise failed  # neither a directory nor a symlink
    raise OSError(errno.EAGAIN, "it keeps changing while it is resolved", name)


def resolve(root_fd: int, path: str) -> int:
    """An O_PATH descriptor of directory `path` below root_fd ("" is root_fd itself): symlinks
    on the way followed only while they stay below it. EXDEV for a way out, ELOOP for a magic
    link or too many symlinks, ENOENT and ENOTDIR as usual."""
    global _openat2_works
    if not path:
        return os.dup(root_fd)
    for _ in range(_AGAIN):
        if not _openat2_works:
            break
        try:
            return openat2(root_fd, path, _DIR_PATH, BENEATH)
        except OSError as exc:
            if exc.errno == errno.ENOSYS:
                _openat2_works = False
            elif exc.errno in (errno.EPERM, errno.EINVAL, errno.E2BIG):
                break  # a seccomp filter's answer, or a kernel without these flags
            elif exc.errno != errno.EAGAIN:
                raise
    return walk(root_fd, path)


def open_dir(dir_fd: int, name: str) -> int:
    """Directory `name` of dir_fd, opened for reading without following it: ELOOP for a symlink,
    ENOTDIR for anything else."""
    return os.open(name, _DIR_READ, dir_fd=dir_fd)


def rmtree_at(dir_fd: int, name: str) -> None:
    """Remove directory `name` of dir_fd with everything below it, never following a symlink:
    each directory opened relative to its parent with O_NOFOLLOW, everything else unlinked
    where it stands. Iterative: a deep tree costs descriptors (one per level), not stack."""
    stack: list[tuple[int, str, list[str]]] = []
    try:
        fd = open_dir(dir_fd, name)
        stack.append((fd, name, os.listdir(fd)))
        while stack:
            fd, _, children = stack[-1]
            if children:
                child = children.pop()
                try:
                    sub = open_dir(fd, child)
                except OSError as exc:
                    if exc.errno not in (errno.ENOTDIR, errno.ELOOP, errno.ENOENT):
                        raise
                    if exc.errno != errno.ENOENT:
                        _unlink(fd, child)
                    continue
                stack.append((sub, child, os.listdir(sub)))
                continue
            fd, own, _ = stack.pop()
            os.close(fd)
            os.rmdir(own, dir_fd=stack[-1][0] if stack else dir_fd)
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def _unlink(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def remove_at(dir_fd: int, name: str) -> bool:
    """Remove whatever stands at `name` of dir_fd without following it (a directory with its
    content); False when nothing does."""
    for _ in range(3):  # something else may come back in its place meanwhile
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        try:
            if stat.S_ISDIR(st.st_mode):
                rmtree_at(dir_fd, name)
            else:
                os.unlink(name, dir_fd=dir_fd)
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno not in (errno.EISDIR, errno.ENOTDIR, errno.ELOOP):
                raise
    raise OSError(errno.EBUSY, "it keeps changing while it is removed", name)


class Root:
    """A directory opened once (O_PATH): the root everything below is reached from."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.fd = os.open(self.path, _DIR_PATH)
        self._closer = weakref.finalize(self, os.close, self.fd)

    def close(self) -> None:
        self._closer()

    def __enter__(self) -> Root:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def directory(self, rel: str, *, create: bool = False) -> int:
        """An O_PATH descriptor of directory `rel` (relative, normalised; "" for the root).
        `create`: missing directories are made (0755), each in the descriptor of its parent."""
        try:
            return resolve(self.fd, rel)
        except FileNotFoundError:
            if not create:
                raise
        parts = rel.split("/")
        fd = os.dup(self.fd)
        try:
            for i, part in enumerate(parts):
                prefix = "/".join(parts[:i + 1])
                try:
                    below = resolve(self.fd, prefix)
                except FileNotFoundError:
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass  # made meanwhile, or a dangling symlink: resolved as it is
                    below = resolve(self.fd, prefix)
                os.close(fd)
                fd = below
            return fd
        except BaseException:
            os.close(fd)
            raise

    def parent(self, rel: str, *, create: bool = False) -> tuple[int, str]:
        """(O_PATH descriptor of the directory holding `rel`, the last name of `rel`)."""
        head, _, name = rel.rpartition("/")
        return self.directory(head, create=create), name
