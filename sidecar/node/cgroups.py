"""Where a process's cgroups are, as directories this process can write to.

Handles cgroup v1 (one hierarchy per controller set, e.g. /sys/fs/cgroup/cpu,cpuacct), hybrid
(v1 plus a cgroup2 at /sys/fs/cgroup/unified) and pure v2.
"""
from __future__ import annotations

import ctypes
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
CLONE_NEWCGROUP = 0x02000000
INITIAL_CGROUP_NS_INODE = 0xEFFFFFFB  # the kernel's initial cgroup namespace (PROC_CGROUP_INIT_INO)


@dataclass(frozen=True)
class CgroupMount:
    mountpoint: str
    root: str  # the cgroup path mounted there ("/" unless this is a bind of a sub-cgroup)
    version: int
    options: frozenset[str]  # super options: controller names and name=... for v1


@dataclass(frozen=True)
class CgroupMembership:
    hierarchy: int
    controllers: frozenset[str]  # empty for v2
    path: str


@dataclass(frozen=True)
class CgroupDir:
    mount: CgroupMount
    membership: CgroupMembership
    directory: str

    @property
    def mount_name(self) -> str:
        """The basename of the hierarchy's mountpoint, as runc names cgroup mounts at dump."""
        return os.path.basename(self.mount.mountpoint.rstrip("/"))


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _shadowed(mountpoint: str, later: list[str]) -> bool:
    """Whether a mount made later at this path or above it hides `mountpoint`."""
    return any(other == mountpoint or other == "/" or mountpoint.startswith(other.rstrip("/") + "/")
               for other in later)


def parse_mountinfo(text: str) -> list[CgroupMount]:
    """The cgroup hierarchies mounted and visible here, in mount order.

    A mount made over a hierarchy's mountpoint or one of its parents hides it, though
    mountinfo still lists it (e.g. cgroup2 mounted on /sys/fs/cgroup over the v1 hierarchies)."""
    lines: list[tuple[str, CgroupMount | None]] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        fs_fields = right.split()
        if len(fields) < 5 or len(fs_fields) < 3:
            continue
        mountpoint, fstype = _unescape(fields[4]), fs_fields[0]
        mount = None
        if fstype in ("cgroup", "cgroup2"):
            mount = CgroupMount(
                mountpoint=mountpoint,
                root=_unescape(fields[3]),
                version=2 if fstype == "cgroup2" else 1,
                options=frozenset(fs_fields[2].split(",")),
            )
        lines.append((mountpoint, mount))
    return [mount for i, (mountpoint, mount) in enumerate(lines)
            if mount is not None and not _shadowed(mountpoint, [m for m, _ in lines[i + 1:]])]


def parse_proc_cgroup(text: str) -> list[CgroupMembership]:
    memberships = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[0].isdigit():
            continue
        controllers = frozenset(c for c in parts[1].split(",") if c)
        memberships.append(CgroupMembership(int(parts[0]), controllers, parts[2]))
    return memberships


def _mount_for(membership: CgroupMembership, mounts: list[CgroupMount]) -> CgroupMount | None:
    if membership.hierarchy == 0 and not membership.controllers:
        candidates = [m for m in mounts if m.version == 2]
    elif not membership.controllers:
        return None
    else:
        candidates = [m for m in mounts
                      if m.version == 1 and membership.controllers <= m.options]
    # a hierarchy can be mounted several times; prefer its whole tree, then the shortest path
    usable = [m for m in candidates if _relative(membership.path, m.root) is not None]
    usable.sort(key=lambda m: (m.root != "/", len(m.mountpoint)))
    return usable[0] if usable else None


def _relative(path: str, root: str) -> str | None:
    if root == "/":
        return path.lstrip("/")
    if path == root:
        return ""
    if path.startswith(root.rstrip("/") + "/"):
        return path[len(root.rstrip("/")) + 1:]
    return None


def cgroup_dirs(proc_cgroup_text: str, mountinfo_text: str) -> list[CgroupDir]:
    """Each cgroup membership paired with its directory under a mounted hierarchy.

    Memberships whose hierarchy is not mounted here (e.g. name=systemd on a host without it)
    are left out.
    """
    mounts = parse_mountinfo(mountinfo_text)
    result = []
    for membership in parse_proc_cgroup(proc_cgroup_text):
        mount = _mount_for(membership, mounts)
        if mount is None:
            continue
        relative = _relative(membership.path, mount.root) or ""
        directory = os.path.join(mount.mountpoint, relative) if relative else mount.mountpoint
        result.append(CgroupDir(mount, membership, directory))
    return result


def process_cgroup_dirs(pid: int, proc: Path = Path("/proc")) -> list[CgroupDir]:
    proc_cgroup = (proc / str(pid) / "cgroup").read_text(encoding="utf-8")
    mountinfo = (proc / "self" / "mountinfo").read_text(encoding="utf-8")
    return cgroup_dirs(proc_cgroup, mountinfo)


def _node_cgroup_namespace(proc: Path) -> Path | None:
    """The cgroup namespace file of the node: its init's (PID 1, with hostPID), else, when that
    cannot be read (a sandboxed init), the kernel's initial namespace, which kernel threads
    (kthreadd, PID 2) always keep."""
    try:
        os.stat(proc / "1" / "ns" / "cgroup")
        return proc / "1" / "ns" / "cgroup"
    except OSError:
        pass
    try:
        if os.stat(proc / "2" / "ns" / "cgroup").st_ino == INITIAL_CGROUP_NS_INODE:
            return proc / "2" / "ns" / "cgroup"
    except OSError:
        pass
    return None


def join_node_cgroup_namespace(proc: Path = Path("/proc")) -> bool:
    """Enter the node's cgroup namespace if this process is in another one; returns whether
    it did.

    A container's private cgroup namespace (the default on cgroup v2 nodes) shows the cgroups
    of every process outside it as paths above its own root (`0::/../../kubepods.slice/...`)
    and the cgroup mounts rooted above it as `/..`: the names in between cannot be known from
    inside, and the freezer, the restore and CRIU's images need the node's paths. Call it before
    any thread starts: a namespace change applies to the calling thread only."""
    node = _node_cgroup_namespace(proc)
    try:
        if node is None or os.stat(proc / "self" / "ns" / "cgroup").st_ino == os.stat(node).st_ino:
            return False
        fd = os.open(node, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False  # no cgroup namespaces here
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWCGROUP) != 0:
            err = ctypes.get_errno()
            log.warning("cannot enter the node's cgroup namespace (%s): %s; other containers' "
                        "cgroups are seen relative to this one's", node, os.strerror(err))
            return False
    finally:
        os.close(fd)
    log.info("entered the node's cgroup namespace (that of %s)", node)
    return True
