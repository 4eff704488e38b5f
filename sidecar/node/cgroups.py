"""Where a process's cgroups are, as directories this process can write to.

Handles cgroup v1 (one hierarchy per controller set, e.g. /sys/fs/cgroup/cpu,cpuacct), hybrid
(v1 plus a cgroup2 at /sys/fs/cgroup/unified) and pure v2.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path


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


def parse_mountinfo(text: str) -> list[CgroupMount]:
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        fs_fields = right.split()
        if len(fields) < 5 or len(fs_fields) < 3:
            continue
        fstype = fs_fields[0]
        if fstype not in ("cgroup", "cgroup2"):
            continue
        mounts.append(CgroupMount(
            mountpoint=_unescape(fields[4]),
            root=_unescape(fields[3]),
            version=2 if fstype == "cgroup2" else 1,
            options=frozenset(fs_fields[2].split(",")),
        ))
    return mounts


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
