"""The pod's own volumes a checkpointed container uses: its `/dev/shm` (the pod's shared memory)
and its `emptyDir` volumes, on disk or with `medium: Memory`. They belong to the pod, so a new
pod starts with them empty, and they are outside both the container's root filesystem and CRIU's
images; programs keep state there (PostgreSQL's shared memory segment, an inference server's
cache, a log or lock file held open), and CRIU cannot restore a process holding a file that is
not there.

At checkpoint, in the freeze, each one's files are written to `volume-N.tar` and listed in
`volumes.json` (`[{"destination": "/dev/shm", "archive": "volume-0.tar"}]`); at restore they are
put back into the target container's mounts at the same destinations before CRIU runs, so a file
a restored process holds open is there with its bytes.

Both sides go through the container's own root (`/proc/PID/root`), opened once; the mount is
reached beneath it (storage/beneath.py), so a symlink in the image on the way to a mount point
never leads to a host path. Files are read one directory descriptor at a time without following
symlinks, and written with the one extractor (storage/tar.py): confined, setuid and setgid
dropped, device nodes refused. Sockets, fifos and devices are not carried (CRIU handles those it
can). Secrets, ConfigMaps, projected and persistent volumes come from the target pod's own
objects and are never copied.
"""
from __future__ import annotations

import json
import os
import posixpath
import stat
import tarfile
from pathlib import Path
from typing import Any

from sidecar.errors import DumpFailed, RestoreFailed
from sidecar.storage.beneath import Root, open_dir
from sidecar.storage.tar import Extractor

VOLUMES_LIST = "volumes.json"
#: the mount of the pod's shared memory (a bind of the sandbox's own), and where the kubelet
#: keeps emptyDir volumes
SHM = "/dev/shm"
EMPTY_DIR_MARK = "/volumes/kubernetes.io~empty-dir/"
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def carried(spec: dict[str, Any], tmpfs_mount_points: set[str]) -> list[tuple[str, str]]:
    """(destination, host source) of the volumes that go with the container's checkpoint: its
    emptyDir bind mounts, and /dev/shm when the container sees a tmpfs there (the pod's shared
    memory; with hostIPC it would be the node's, and is not carried)."""
    found = []
    for mount in spec.get("mounts") or []:
        destination = posixpath.normpath(str(mount.get("destination") or ""))
        source = str(mount.get("source") or "")
        if EMPTY_DIR_MARK in source or (destination == SHM and SHM in tmpfs_mount_points
                                        and source.rstrip("/") != SHM):
            found.append((destination, source))
    return found


def _rel(destination: str) -> str:
    """A destination as a normalised relative path below the container's root."""
    rel = posixpath.normpath("/" + destination).lstrip("/")
    if not rel or rel.startswith(".."):
        raise RestoreFailed(f"volume destination {destination!r} is not a directory "
                            "inside the container")
    return rel


def size_estimate(pid: int, destinations: list[str]) -> int:
    """About how many bytes the volumes' archives take: their regular files' sizes, rounded up
    to tar's blocks, plus a header per entry (read beneath the container's root; nothing is
    opened but directories)."""
    total = 0
    try:
        with Root(f"/proc/{pid}/root") as root:
            for destination in destinations:
                fd = root.directory(_rel(destination))
                try:
                    total += _tree_bytes(fd)
                finally:
                    os.close(fd)
    except (OSError, RestoreFailed):
        pass
    return total


def _tree_bytes(dir_fd: int) -> int:
    total = 0
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        with os.scandir(fd) as entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                    total += 3 * tarfile.BLOCKSIZE
                    if stat.S_ISREG(st.st_mode):
                        total += -(-st.st_size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                    elif stat.S_ISDIR(st.st_mode):
                        sub = open_dir(fd, entry.name)
                        try:
                            total += _tree_bytes(sub)
                        finally:
                            os.close(sub)
                except OSError:
                    continue  # gone or replaced meanwhile
    finally:
        os.close(fd)
    return total


def write_volumes(pid: int, destinations: list[str], dest_dir: Path) -> list[dict[str, str]]:
    """Archive each volume of process `pid` (seen from its root) into dest_dir; the list goes to
    volumes.json (written even when empty, so a restore knows there was nothing)."""
    entries = []
    try:
        with Root(f"/proc/{pid}/root") if destinations else _Nothing() as root:
            for index, destination in enumerate(destinations):
                archive = f"volume-{index}.tar"
                fd = root.directory(_rel(destination))
                try:
                    with tarfile.open(dest_dir / archive, "w", format=tarfile.PAX_FORMAT) as tar:
                        _add_tree(tar, fd, "")
                finally:
                    os.close(fd)
                os.chmod(dest_dir / archive, 0o600)
                entries.append({"destination": destination, "archive": archive})
    except (OSError, tarfile.TarError, RestoreFailed) as exc:
        raise DumpFailed(f"cannot copy the container's emptyDir and /dev/shm volumes "
                         f"({', '.join(destinations)}) into the checkpoint: {exc}") from exc
    (dest_dir / VOLUMES_LIST).write_text(json.dumps(entries))
    os.chmod(dest_dir / VOLUMES_LIST, 0o600)
    return entries


class _Nothing:
    """No root to open: nothing to archive."""

    def __enter__(self) -> Root:
        return None  # type: ignore[return-value]

    def __exit__(self, *exc: object) -> None:
        return None


def _info(name: str, st: os.stat_result, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = ""
    info.mtime = int(st.st_mtime)
    return info


def _add_tree(tar: tarfile.TarFile, dir_fd: int, prefix: str) -> None:
    """Every directory, regular file and symlink below dir_fd (an O_PATH descriptor), each
    opened by name in its directory without following it."""
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        for name in sorted(os.listdir(fd)):
            arcname = prefix + name
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    sub = open_dir(fd, name)  # ELOOP if it became a symlink meanwhile
                    try:
                        tar.addfile(_info(arcname, os.fstat(sub), tarfile.DIRTYPE))
                        _add_tree(tar, sub, arcname + "/")
                    finally:
                        os.close(sub)
                elif stat.S_ISREG(st.st_mode):
                    _add_file(tar, fd, name, arcname)
                elif stat.S_ISLNK(st.st_mode):
                    info = _info(arcname, st, tarfile.SYMTYPE)
                    info.linkname = os.readlink(name, dir_fd=fd)
                    tar.addfile(info)
            except FileNotFoundError:
                continue  # gone meanwhile (a container that is not frozen shares the volume)
    finally:
        os.close(fd)


def _add_file(tar: tarfile.TarFile, dir_fd: int, name: str, arcname: str) -> None:
    fd = os.open(name, _READ, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            return
        info = _info(arcname, st, tarfile.REGTYPE)
        info.size = st.st_size
        tar.addfile(info, f)


def apply_volumes(checkpoint: Path, pid: int) -> list[str]:
    """Put a checkpoint's volumes back into the target process's mounts at the
    same destinations; returns the destinations. Every member is checked before anything is
    written; each is written beneath the target's root."""
    listing = checkpoint / VOLUMES_LIST
    if not listing.exists():
        return []
    try:
        entries = json.loads(listing.read_text())
        restored = []
        with Extractor(Path(f"/proc/{pid}/root"), source="the checkpoint's volumes",
                       error=RestoreFailed) as into:
            for entry in entries:
                rel = _rel(str(entry["destination"]))
                archive = checkpoint / posixpath.basename(str(entry["archive"]))
                with tarfile.open(archive) as tar:
                    members = [_below(m, rel) for m in tar.getmembers()]
                    for member in members:
                        into.check(member)
                    for member in members:
                        into.extract(tar, member)
                restored.append("/" + rel)
            into.finish()
    except (OSError, ValueError, KeyError, TypeError, tarfile.TarError) as exc:
        raise RestoreFailed(f"cannot put the checkpoint's volumes back into the "
                            f"target: {exc}") from exc
    return restored


def _below(member: tarfile.TarInfo, rel: str) -> tarfile.TarInfo:
    """The member, named below the volume's destination (the extractor then confines it to the
    container's root: a name that climbs out of the volume is refused as leaving it only if it
    leaves the root, so `..` is refused here)."""
    parts = member.name.split("/")
    if member.name.startswith("/") or ".." in parts:
        raise RestoreFailed(f"refusing path {member.name!r} from the checkpoint's volume "
                            f"/{rel}: it leads outside the volume")
    member.name = f"{rel}/{member.name}"
    if member.islnk():
        if member.linkname.startswith("/") or ".." in member.linkname.split("/"):
            raise RestoreFailed(f"refusing hard link {member.name!r} to {member.linkname!r} "
                                f"from the checkpoint's volume /{rel}")
        member.linkname = f"{rel}/{member.linkname}"
    return member
