"""The argument lists of the restore path (and of runc checkpoint), built from recorded data."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import HelperConfig
from sidecar.errors import RestoreFailed
from sidecar.node import cgroups, criu, proctree, runc
from sidecar.ops.restore import (
    cgroup_mount_map,
    external_mount_map,
    missing_bind_mounts,
    pipe_inherits,
    restore_command,
    wrapper_args,
)
from tests.unit.sidecar_support import COUNTER, FIRST, FIXTURES

PROC = Path(__file__).parent / "fixtures" / "proc"
POD = "/kubepods/besteffort/pod8c2d5a77-1f3b-4c71-b3e0-0d9f2c4a6b12/eeee"
TASKS = FIXTURES / "containerd/host/run/containerd/io.containerd.runtime.v2.task/k8s.io"


def spec_of(container_id: str) -> dict[str, Any]:
    return dict(json.loads((TASKS / container_id / "config.json").read_text()))


def hybrid_dirs() -> list[cgroups.CgroupDir]:
    return cgroups.cgroup_dirs((PROC / "cgroup-placeholder-hybrid").read_text(),
                               (PROC / "mountinfo-hybrid").read_text())


def test_cgroup_dirs_hybrid() -> None:
    dirs = {d.mount_name: d.directory for d in hybrid_dirs()}
    assert dirs == {
        name: f"/sys/fs/cgroup/{name}{POD}"
        for name in ("systemd", "pids", "blkio", "freezer", "devices", "memory", "cpuset",
                     "cpuacct", "cpu", "unified")
    }


def test_cgroup_dirs_combined_controllers_and_unmounted() -> None:
    dirs = cgroups.cgroup_dirs((PROC / "cgroup-debian-v1").read_text(),
                               (PROC / "mountinfo-debian-v1").read_text())
    by_name = {d.mount_name: d.directory for d in dirs}
    assert by_name == {
        "freezer": "/sys/fs/cgroup/freezer/kubepods/pod1/abc",  # not the /kubepods bind view
        "memory": "/sys/fs/cgroup/memory/kubepods/pod1/abc",
        "net_cls,net_prio": "/sys/fs/cgroup/net_cls,net_prio/kubepods/pod1/abc",
        "cpu,cpuacct": "/sys/fs/cgroup/cpu,cpuacct/kubepods/pod1/abc",
        "systemd": "/sys/fs/cgroup/systemd/kubepods/pod1/abc",
        "unified": "/sys/fs/cgroup/unified/system.slice/containerd.service",
    }  # rdma has no mount here and is left out


def test_cgroup_dir_below_a_bind_mounted_subtree() -> None:
    mountinfo = "90 30 0:35 /kubepods /cg/freezer rw - cgroup cgroup rw,freezer\n"
    (only,) = cgroups.cgroup_dirs("6:freezer:/kubepods/pod1/abc\n", mountinfo)
    assert only.directory == "/cg/freezer/pod1/abc"
    assert cgroups.cgroup_dirs("6:freezer:/system.slice\n", mountinfo) == []


def test_cgroup_mount_keys() -> None:
    mapping = dict(cgroup_mount_map(hybrid_dirs()))
    assert mapping["/sys/fs/cgroup/memory"] == f"/sys/fs/cgroup/memory{POD}"
    assert mapping["/sys/fs/cgroup/systemd"] == f"/sys/fs/cgroup/systemd{POD}"
    pure_v2 = cgroups.cgroup_dirs(
        "0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-abc.scope\n",
        "30 26 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n")
    assert cgroup_mount_map(pure_v2) == [
        ("/sys/fs/cgroup",
         "/sys/fs/cgroup/kubepods.slice/kubepods-pod1.slice/cri-containerd-abc.scope")]


def test_external_mounts_map_dumped_keys_to_the_target() -> None:
    dumped, target = spec_of(COUNTER), spec_of(FIRST)
    mapping = external_mount_map(dumped, target, hybrid_dirs())
    keys = [k for k, _ in mapping]
    assert len(keys) == len(set(keys))
    as_dict = dict(mapping)
    uid = "8c2d5a77-1f3b-4c71-b3e0-0d9f2c4a6b12"  # the target pod's, not the source's
    sandbox = "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/" + "d" * 64
    assert as_dict["/etc/hosts"] == f"/var/lib/kubelet/pods/{uid}/etc-hosts"
    assert as_dict["/etc/hostname"] == f"{sandbox}/hostname"
    assert as_dict["/etc/resolv.conf"] == f"{sandbox}/resolv.conf"
    assert as_dict["/dev/shm"] == f"{sandbox}/shm"
    assert as_dict["/dev/termination-log"].startswith(f"/var/lib/kubelet/pods/{uid}/containers/")
    assert as_dict["/dev/null"] == "/dev/null"
    assert as_dict["/sys/fs/cgroup/cpu"] == f"/sys/fs/cgroup/cpu{POD}"
    assert "/proc" not in as_dict and "/dev" not in as_dict  # not bind mounts
    assert missing_bind_mounts(dumped, target) == []


def test_no_cgroup_keys_without_a_cgroup_mount_in_the_dump() -> None:
    dumped = spec_of(COUNTER)
    dumped["mounts"] = [m for m in dumped["mounts"] if m["type"] != "cgroup"]
    keys = [k for k, _ in external_mount_map(dumped, spec_of(FIRST), hybrid_dirs())]
    assert not any(k.startswith("/sys/fs/cgroup") for k in keys)


def test_missing_bind_mounts_are_named() -> None:
    dumped, target = spec_of(COUNTER), spec_of(FIRST)
    target["mounts"] = [m for m in target["mounts"] if m["destination"] != "/dev/shm"]
    dumped["mounts"].append({"destination": "/data", "type": "bind", "source": "/srv/data",
                             "options": ["rbind", "rw"]})
    assert missing_bind_mounts(dumped, target) == ["/data", "/dev/shm"]


@pytest.mark.parametrize("descriptors, expected", [
    (["/dev/null", "pipe:[106917]", "pipe:[106918]"], [(1, "pipe:[106917]"), (2, "pipe:[106918]")]),
    (["pipe:[5]", "pipe:[6]", "pipe:[6]"], [(0, "pipe:[5]"), (1, "pipe:[6]")]),
    (["/dev/null", "/dev/null", "/dev/null"], []),
    (["/dev/pts/0", "/dev/pts/0", "/dev/pts/0"], []),
    ([], []),
])
def test_pipe_inherits(descriptors: list[str], expected: list[tuple[int, str]]) -> None:
    assert pipe_inherits(descriptors) == expected


def test_restore_command_is_the_whole_chain(tmp_path: Path) -> None:
    config = HelperConfig(checkpoint_dir=tmp_path, criu_path="/usr/local/sbin/criu",
                          nsenter_path="/usr/bin/nsenter", unshare_path="/usr/bin/unshare")
    plan = criu.RestorePlan(
        images_dir=Path("/ckpt/c1/checkpoint"),
        root="/run/containerd/io.containerd.runtime.v2.task/k8s.io/eeee/rootfs",
        work_dir=Path("/ckpt/.restores/w"),
        pidfile=Path("/ckpt/.restores/w/restore.pid"),
        netns_fd=7,
        inherit_fds=[(8, "pipe:[106917]"), (9, "pipe:[106918]")],
        ext_mounts=[("/etc/hosts", "/var/lib/kubelet/pods/u/etc-hosts"),
                    ("/dev/null", "/dev/null"),
                    ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu/kubepods/p/eeee")],
        tcp_established=True, tcp_close=True, file_locks=True, ext_unix_sk=True,
        link_remap=True,
    )
    assert plan.passed_fds == (7, 8, 9)
    args = restore_command(config, 4402, plan, python="/usr/bin/python3")
    assert args == [
        "/usr/bin/python3", "-m", "sidecar.node.enter_cgroups", "--pid", "4402", "--",
        "/usr/bin/nsenter", "--target", "4402", "--pid", "--",
        "/usr/bin/unshare", "--mount", "--propagation", "private", "--mount-proc", "--",
        "/usr/local/sbin/criu", "restore",
        "-D", "/ckpt/c1/checkpoint",
        "--root", "/run/containerd/io.containerd.runtime.v2.task/k8s.io/eeee/rootfs",
        "--restore-detached", "--manage-cgroups=ignore", "--mntns-compat-mode",
        "--pidfile", "/ckpt/.restores/w/restore.pid",
        "--work-dir", "/ckpt/.restores/w",
        "-o", "restore.log", "-v4",
        "--inherit-fd", "fd[7]:extRootNetNS",
        "--inherit-fd", "fd[8]:pipe:[106917]",
        "--inherit-fd", "fd[9]:pipe:[106918]",
        "--ext-mount-map", "/etc/hosts:/var/lib/kubelet/pods/u/etc-hosts",
        "--ext-mount-map", "/dev/null:/dev/null",
        "--ext-mount-map", "/sys/fs/cgroup/cpu:/sys/fs/cgroup/cpu/kubepods/p/eeee",
        "--tcp-established", "--tcp-close", "--file-locks", "--ext-unix-sk", "--link-remap",
    ]


def test_minimal_restore_args_leave_tcp_alone() -> None:
    plan = criu.RestorePlan(images_dir=Path("/c/checkpoint"), root="/r", work_dir=Path("/w"),
                            pidfile=Path("/w/p"), netns_fd=3, file_locks=False,
                            ext_unix_sk=False)
    args = criu.restore_args("criu", plan)
    assert "--tcp-established" not in args and "--tcp-close" not in args
    assert "--file-locks" not in args and "--link-remap" not in args
    assert args[-2:] == ["--inherit-fd", "fd[3]:extRootNetNS"]


def test_wrapper_enters_only_the_pid_namespace() -> None:
    args = wrapper_args(77, "nsenter", "unshare", python="py")
    nsenter = args[args.index("nsenter"):args.index("unshare")]
    assert nsenter == ["nsenter", "--target", "77", "--pid", "--"]


def test_the_c_wrapper_is_given_the_cgroups_the_helper_found() -> None:
    """cedana-enter-cgroups reads nothing itself: the helper names each cgroup.procs of the
    target's cgroups (here this process's), then the wait options, then the rest."""
    me = os.getpid()
    found = cgroups.process_cgroup_dirs(me)
    args = wrapper_args(me, "nsenter", "unshare", wait=["--wait-for", "/s", "--wait-pid", "9"],
                        enter_cgroups="/usr/local/bin/cedana-enter-cgroups",
                        target_cgroups=found)
    procs = [os.path.join(d.directory, "cgroup.procs") for d in found]
    assert procs
    assert args[:args.index("--")] == [
        "/usr/local/bin/cedana-enter-cgroups",
        *[a for p in procs for a in ("--procs", p)],
        "--wait-for", "/s", "--wait-pid", "9"]
    assert args[args.index("--") + 1:args.index("unshare")] == [
        "nsenter", "--target", str(me), "--pid", "--"]
    with pytest.raises(RestoreFailed, match="no cgroups found"):
        wrapper_args(me, "nsenter", "unshare", enter_cgroups="/x")  # none read: not run


def test_runc_checkpoint_args(tmp_path: Path) -> None:
    options = runc.DumpOptions(leave_running=True, tcp_established=True, link_remap=True)
    assert runc.checkpoint_args("runc", "/run/containerd/runc/k8s.io",
                                "bbbb", tmp_path / "i", tmp_path / "w", options) == [
        "runc", "--root", "/run/containerd/runc/k8s.io",
        "checkpoint", "--image-path", str(tmp_path / "i"), "--work-path", str(tmp_path / "w"),
        "--manage-cgroups-mode", "soft", "--leave-running", "--tcp-established",
        "--ext-unix-sk", "--file-locks", "bbbb",
    ]
    quiet = runc.DumpOptions(leave_running=False, tcp_established=False)
    args = runc.checkpoint_args("runc", "/r", "id", tmp_path, tmp_path, quiet)
    assert "--leave-running" not in args and "--tcp-established" not in args


def test_runc_config_file_written_once_and_admin_file_respected(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "criu" / "runc.conf"
    assert criu.ensure_runc_config(path) == {"link-remap", "skip-in-flight"}
    first = path.read_text()
    assert "link-remap\n" in first and first.startswith(criu.CONFIG_MARKER)
    assert criu.ensure_runc_config(path) == {"link-remap", "skip-in-flight"}
    path.write_text("# site policy\ntcp-established\n--ghost-limit 10M\n")
    assert criu.ensure_runc_config(path) == {"tcp-established", "ghost-limit"}
    assert path.read_text().startswith("# site policy")


def test_a_restored_tree_is_dumped_with_the_keys_its_restore_maps() -> None:
    """A tree restored into a placeholder is dumped from its root with runc's keys, so the
    next restore maps it like any checkpoint: bind mounts by destination, masked files as
    /dev/null, cgroup mounts by mount point; nothing the tree does not have."""
    spec = {"mounts": [{"destination": "/etc/hosts", "type": "bind", "source": "/x/hosts"},
                       {"destination": "/data", "type": "none", "options": ["rbind", "rw"]},
                       {"destination": "/.cedana", "type": "bind", "source": "/x/pause"},
                       {"destination": "/proc", "type": "proc"}],
            "linux": {"maskedPaths": ["/proc/keys", "/proc/acpi"]}}
    mounts = [proctree.Mount("/", "/", "overlay"), proctree.Mount("/etc/hosts", "/x", "ext4"),
              proctree.Mount("/data", "/d", "ext4"), proctree.Mount("/proc", "/", "proc"),
              proctree.Mount("/proc/keys", "/null", "tmpfs"),
              proctree.Mount("/proc/acpi", "/", "tmpfs"),
              proctree.Mount("/sys/fs/cgroup/cpu", "/kubepods/x", "cgroup")]
    found = criu.external_dump_mounts(spec, mounts)
    assert found == [("/etc/hosts", "/etc/hosts"), ("/data", "/data"),
                     ("/proc/keys", "/dev/null"),
                     ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu")]
    plan = criu.DumpPlan(pid=42, images_dir=Path("/i"), work_dir=Path("/w"), netns_inode=7,
                         ext_mounts=found[:1], freezer="/sys/fs/cgroup/freezer/k/c",
                         leave_running=True, tcp_established=True, link_remap=True)
    args = criu.dump_args("criu", plan)
    assert args[:4] == ["criu", "dump", "--tree", "42"]
    assert "net[7]:extRootNetNS" in args and "mnt[/etc/hosts]:/etc/hosts" in args
    assert args[args.index("--freeze-cgroup") + 1] == "/sys/fs/cgroup/freezer/k/c"
    assert {"--leave-running", "--tcp-established", "--link-remap", "--ext-unix-sk",
            "--file-locks", "--manage-cgroups=ignore"} <= set(args)
    assert "--skip-in-flight" not in args


def test_crun_keys_of_masked_files_map_to_dev_null() -> None:
    """crun dumps each masked file (an external bind of /dev/null) under its own path, runc
    under /dev/null: both map to /dev/null, so a checkpoint of either restores."""
    dumped = spec_of(COUNTER)
    dumped.setdefault("linux", {})["maskedPaths"] = ["/proc/timer_list", "/proc/keys",
                                                      "/proc/acpi"]
    mapping = external_mount_map(dumped, spec_of(FIRST), hybrid_dirs())
    keys = [k for k, _ in mapping]
    assert len(keys) == len(set(keys))
    as_dict = dict(mapping)
    assert as_dict["/proc/timer_list"] == as_dict["/proc/keys"] == "/dev/null"
    assert as_dict["/dev/null"] == "/dev/null"


def test_a_crio_marker_file_the_target_lacks_gets_an_empty_file() -> None:
    """A checkpoint taken under CRI-O has /run/.containerenv bound in; a containerd target has
    none: it is not a missing mount, and an empty file stands for it. A CRI-O target's own
    marker wins."""
    dumped = spec_of(COUNTER)
    dumped["mounts"].append({"destination": "/run/.containerenv", "type": "bind",
                             "source": "/run/containers/storage/x/userdata/.containerenv",
                             "options": ["bind", "rw"]})
    target = spec_of(FIRST)
    assert missing_bind_mounts(dumped, target) == []
    as_dict = dict(external_mount_map(dumped, target, hybrid_dirs(), "/work/empty"))
    assert as_dict["/run/.containerenv"] == "/work/empty"
    target["mounts"].append({"destination": "/run/.containerenv", "type": "bind",
                             "source": "/run/containers/storage/y/userdata/.containerenv",
                             "options": ["bind", "rw"]})
    as_dict = dict(external_mount_map(dumped, target, hybrid_dirs(), "/work/empty"))
    assert as_dict["/run/.containerenv"] == "/run/containers/storage/y/userdata/.containerenv"
    # without the marker in the dump, no key for it
    assert "/run/.containerenv" not in dict(external_mount_map(spec_of(COUNTER), spec_of(FIRST),
                                                                hybrid_dirs(), "/work/empty"))
