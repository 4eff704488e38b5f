"""Make a container's root filesystem visible to the helper where its runtime's mount of it is not.

A runtime mounts each container's root filesystem on the node, and the helper sees it through
its host path mounts when the mount propagates there (containerd's task `rootfs`). CRI-O's does
not: containers/storage bind-mounts its overlay directory onto itself as a private mount, so the
`merged` mounts beneath it never reach another mount namespace; the helper finds an empty
directory at that path. A restore needs the placeholder's root (CRIU's --root, the rootfs diff).

`attached(pid, rootfs)` yields the path to use: `rootfs` itself when it is the container's root
as seen here, else a directory where this module's program has attached a clone of the
container's root mount. It takes a handle on the root of `pid` (/proc/PID/root), enters that
process's mount namespace (only there may the kernel clone one of its mounts,
open_tree(OPEN_TREE_CLONE)), clones the root mount (not what is mounted below it), returns to
the helper's mount namespace and attaches the clone (move_mount). The same files, the same
overlay: nothing is copied. Detached when done.
The program runs alone in a process because a thread may not change mount namespace while other
threads share its filesystem context (setns fails with EINVAL).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from sidecar.errors import RestoreFailed

SYS_OPEN_TREE = 428  # x86_64 and aarch64 share these numbers (the newer, common table)
SYS_MOVE_MOUNT = 429
OPEN_TREE_CLONE = 1
AT_EMPTY_PATH = 0x1000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
CLONE_NEWNS = 0x00020000
MNT_DETACH = 2
AT_FDCWD = -100
TIMEOUT_S = 30.0

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def attach(pid: int, to: str) -> None:
    """Attach a clone of the root mount of process `pid` at directory `to` (in this process's
    mount namespace, which its parent shares)."""
    own = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    theirs = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    # the root as the target sees it, taken from here: the handle stays valid across setns
    root = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    _check(_libc.setns(theirs, CLONE_NEWNS), "setns into the container's mount namespace")
    try:
        tree = _check(_libc.syscall(SYS_OPEN_TREE, root, b"",
                                    OPEN_TREE_CLONE | os.O_CLOEXEC | AT_EMPTY_PATH),
                      "open_tree of the container's root")
    finally:
        _check(_libc.setns(own, CLONE_NEWNS), "setns back into the helper's mount namespace")
    _check(_libc.syscall(SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, to.encode(),
                         MOVE_MOUNT_F_EMPTY_PATH), f"move_mount to {to}")


def detach(path: str) -> None:
    _check(_libc.umount2(path.encode(), MNT_DETACH), f"umount {path}")


def visible(pid: int, rootfs: str) -> bool:
    """`rootfs` shows the container's root here: the very directory its process has as root
    (a runtime's mount that reached the helper, or a plain directory), not what lies beneath."""
    try:
        return os.path.samestat(os.stat(rootfs), os.stat(f"/proc/{pid}/root"))
    except OSError:
        return os.path.ismount(rootfs)


@contextmanager
def attached(pid: int, rootfs: str, python: str = sys.executable) -> Iterator[str]:
    """The container's root filesystem, as a path in the helper's mount namespace."""
    if visible(pid, rootfs):
        yield rootfs
        return
    where = tempfile.mkdtemp(prefix="cedana-root-")
    try:
        done = subprocess.run([python, "-m", "sidecar.node.root_attach", "--pid", str(pid),
                               "--to", where], capture_output=True, text=True,
                              timeout=TIMEOUT_S, check=False)
        if done.returncode != 0 or not os.path.ismount(where):
            raise RestoreFailed(
                f"the root filesystem of process {pid} ({rootfs}) is not visible to the helper "
                f"and could not be attached: {done.stderr.strip() or done.returncode}")
        try:
            yield where
        finally:
            detach(where)
    finally:
        if not os.path.ismount(where):  # an empty directory; never what still is a root
            with suppress(OSError):
                os.rmdir(where)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="root_attach", description=__doc__.splitlines()[0])
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--to", required=True)
    args = parser.parse_args(argv)
    try:
        attach(args.pid, args.to)
    except OSError as exc:
        print(f"root_attach: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
