"""CRIU, as used by the helper: its version, the config file runc hands it, and `criu restore`."""
from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar.errors import DumpFailed
from sidecar.node import tool

VERSION_TIMEOUT_S = 10.0
RESTORE_LOG = "restore.log"
CONFIG_MARKER = "# managed by cedana-helper"
# dump options runc 1.1 has no flag for; runc hands CRIU /etc/criu/runc.conf (unless the
# container's `org.criu.config` annotation names another file) and CRIU applies it over RPC.
RUNC_CONFIG_OPTIONS = ("link-remap", "skip-in-flight")
RUNC_CONFIG_ANNOTATION = "org.criu.config"


def version(criu_path: str) -> str:
    result = tool.run([criu_path, "--version"], timeout=VERSION_TIMEOUT_S)
    if not result.ok:
        return "unavailable"
    match = re.search(r"Version:\s*(\S+)", result.stdout)
    return match.group(1) if match else result.stdout.strip().splitlines()[0]


def config_file_options(text: str) -> set[str]:
    """Option names set in a CRIU configuration file (one option per line, no dashes)."""
    names = set()
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(line.split()[0].lstrip("-"))
    return names


def ensure_runc_config(path: Path) -> set[str]:
    """Make sure runc's CRIU config file carries our dump options; return the options in it.

    A file the helper did not write is an administrator's choice: it is read, never changed.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = None
    if text is not None and not text.startswith(CONFIG_MARKER):
        return config_file_options(text)
    wanted = CONFIG_MARKER + "\n" + "".join(f"{opt}\n" for opt in RUNC_CONFIG_OPTIONS)
    if text != wanted:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".runc.conf.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(wanted)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return config_file_options(wanted)


@dataclass(frozen=True)
class RestorePlan:
    """Everything `criu restore` is told; built from the checkpoint and the target container."""

    images_dir: Path
    root: str  # the target's rootfs directory
    work_dir: Path
    pidfile: Path
    netns_fd: int
    inherit_fds: Sequence[tuple[int, str]] = ()  # (our fd number, CRIU key such as pipe:[123])
    ext_mounts: Sequence[tuple[str, str]] = ()  # (key recorded at dump, path to use now)
    tcp_established: bool = False
    tcp_close: bool = False
    file_locks: bool = True
    ext_unix_sk: bool = True
    link_remap: bool = False
    extra_args: Sequence[str] = field(default_factory=tuple)

    @property
    def passed_fds(self) -> tuple[int, ...]:
        return (self.netns_fd, *(fd for fd, _ in self.inherit_fds))


def restore_args(criu_path: str, plan: RestorePlan) -> list[str]:
    args = [
        criu_path, "restore",
        "-D", str(plan.images_dir),
        "--root", plan.root,
        "--restore-detached",
        "--manage-cgroups=ignore",
        # the mount engine v2 copies the sharing of external mounts, which fails when the
        # helper's own view of /sys/fs/cgroup is a private copy (inside its pod)
        "--mntns-compat-mode",
        "--pidfile", str(plan.pidfile),
        "--work-dir", str(plan.work_dir),
        "-o", RESTORE_LOG,
        "-v4",
        "--inherit-fd", f"fd[{plan.netns_fd}]:extRootNetNS",
    ]
    for fd, key in plan.inherit_fds:
        args += ["--inherit-fd", f"fd[{fd}]:{key}"]
    for key, value in plan.ext_mounts:
        args += ["--ext-mount-map", f"{key}:{value}"]
    args += tool.flags(("--tcp-established", plan.tcp_established),
                       ("--tcp-close", plan.tcp_close), ("--file-locks", plan.file_locks),
                       ("--ext-unix-sk", plan.ext_unix_sk), ("--link-remap", plan.link_remap))
    args += list(plan.extra_args)
    return args


DUMP_LOG = "dump.log"  # the name runc gives CRIU's log, which a direct dump keeps


@dataclass(frozen=True)
class DumpPlan:
    """`criu dump` of a process tree that is not a runc container's own: the tree a restore
    put beneath a placeholder's cedana-pause, in its own pid namespace, dumped from its root as
    runc dumps a container from its init (runc would dump the cedana-pause, and CRIU refuses
    the nested pid namespace below it)."""

    pid: int  # the tree's root, in our pid namespace
    images_dir: Path
    work_dir: Path
    netns_inode: int  # the pod's network namespace: external, joined again on restore
    ext_mounts: Sequence[tuple[str, str]] = ()  # (mount point, key recorded for the restore)
    freezer: str = ""  # the container's freezer cgroup (cgroup v1), frozen or not
    leave_running: bool = True
    tcp_established: bool = False
    ext_unix_sk: bool = True
    file_locks: bool = True
    link_remap: bool = False
    skip_in_flight: bool = False
    manage_cgroups_mode: str = "ignore"


def dump_args(criu_path: str, plan: DumpPlan) -> list[str]:
    args = [
        criu_path, "dump", "--tree", str(plan.pid),
        "--images-dir", str(plan.images_dir), "--work-dir", str(plan.work_dir),
        "--log-file", DUMP_LOG, "-v4",
        f"--manage-cgroups={plan.manage_cgroups_mode}",
        "--external", f"net[{plan.netns_inode}]:extRootNetNS",
    ]
    for mount_point, key in plan.ext_mounts:
        args += ["--external", f"mnt[{mount_point}]:{key}"]
    if plan.freezer:
        args += ["--freeze-cgroup", plan.freezer]
    args += tool.flags(("--leave-running", plan.leave_running),
                       ("--tcp-established", plan.tcp_established),
                       ("--ext-unix-sk", plan.ext_unix_sk), ("--file-locks", plan.file_locks),
                       ("--link-remap", plan.link_remap),
                       ("--skip-in-flight", plan.skip_in_flight))
    return args


def external_dump_mounts(spec: dict[str, Any], mounts: Sequence[Any]) -> list[tuple[str, str]]:
    """The external mounts of a tree restored into the container `spec` describes, keyed as
    runc keys a container's: its bind mounts by their destination, masked files (bound from a
    null device) as /dev/null, its cgroup mounts by their mount point. Only those the tree
    really has (`mounts`: proctree.mounts of its root)."""
    binds = set()
    for mount in spec.get("mounts") or []:
        options = mount.get("options") or []
        if mount.get("type") == "bind" or "bind" in options or "rbind" in options:
            binds.add(str(mount.get("destination") or "").rstrip("/") or "/")
    masked = set((spec.get("linux") or {}).get("maskedPaths") or [])
    found = []
    for mount in mounts:
        if mount.mount_point in binds:
            found.append((mount.mount_point, mount.mount_point))
        elif mount.mount_point in masked and mount.root != "/":
            found.append((mount.mount_point, "/dev/null"))
        elif mount.fstype in ("cgroup", "cgroup2"):
            found.append((mount.mount_point, mount.mount_point))
    return found


def dump(criu_path: str, plan: DumpPlan, timeout: float, what: str) -> tool.ToolResult:
    """Run `criu dump`; raises DumpFailed with CRIU's first error and its log's tail. CRIU
    dies with the helper."""
    result = tool.run(dump_args(criu_path, plan), timeout=timeout, die_with_helper=True,
                      cwd=plan.work_dir)
    if not result.ok:
        log_path = plan.work_dir / DUMP_LOG
        cause = tool.first_criu_error(log_path)
        raise DumpFailed(
            f"checkpoint of {what} failed: " + (f"CRIU: {cause}" if cause else result.describe()),
            log_tail=tool.log_tail(log_path), stderr_tail=tool.last_lines(result.stderr, 10))
    return result
