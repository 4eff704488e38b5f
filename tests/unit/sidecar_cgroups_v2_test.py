"""cgroup v2 paths as the helper finds them: the systemd cgroup driver's slices and scopes, a
cgroup2 mount that hides the v1 hierarchies, and the freezer and mount keys that follow."""
from __future__ import annotations

from pathlib import Path

from sidecar.node import cgroups
from sidecar.ops.restore import cgroup_mount_map

PROC = Path(__file__).parent / "fixtures" / "proc"
SCOPE = ("/kubepods.slice/kubepods-burstable.slice/"
         "kubepods-burstable-pod3f1c2b9e_7d4a_4c21_9b0e_5a6f7e8d9c01.slice/"
         "cri-containerd-" + "e" * 64 + ".scope")


def test_systemd_driver_scope_on_a_pure_v2_host() -> None:
    (only,) = cgroups.cgroup_dirs((PROC / "cgroup-systemd-v2").read_text(),
                                  (PROC / "mountinfo-systemd-v2").read_text())
    assert only.mount.version == 2 and only.membership.controllers == frozenset()
    assert only.directory == "/sys/fs/cgroup" + SCOPE
    # runc dumps the cgroup2 mount under /sys/fs/cgroup itself: it maps onto the scope
    assert cgroup_mount_map([only]) == [("/sys/fs/cgroup", "/sys/fs/cgroup" + SCOPE)]


def test_cgroup2_mounted_over_the_v1_hierarchies_hides_them() -> None:
    mountinfo = "\n".join([
        "22 1 8:1 / / rw - ext4 /dev/vda rw",
        "31 22 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755",
        "32 31 0:29 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer",
        "33 31 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory",
        "34 31 0:31 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw",
        # later, in a mount namespace of its own: cgroup2 over /sys/fs/cgroup
        "90 31 0:31 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw",
    ])
    proc_cgroup = "6:freezer:/pod/abc\n4:memory:/pod/abc\n0::/cedana-cg2/abc\n"
    dirs = cgroups.cgroup_dirs(proc_cgroup, mountinfo)
    assert [(d.mount.version, d.directory) for d in dirs] == [
        (2, "/sys/fs/cgroup/cedana-cg2/abc")]


def test_a_later_mount_below_a_hierarchy_does_not_hide_it() -> None:
    mountinfo = "\n".join([
        "32 31 0:29 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer",
        "40 32 0:50 / /sys/fs/cgroup/freezer/sub rw - tmpfs tmpfs rw",
        "41 22 0:51 / /sys/fs/cgroup/freezer2 rw - tmpfs tmpfs rw",
    ])
    (only,) = cgroups.cgroup_dirs("6:freezer:/pod/abc\n", mountinfo)
    assert only.directory == "/sys/fs/cgroup/freezer/pod/abc"
