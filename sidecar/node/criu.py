"""CRIU, as used by the helper: its version, the config file runc hands it, and `criu restore`."""
from __future__ import annotations

import os
import re
import select
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
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
    # post-copy: the memory comes from a `criu lazy-pages` daemon (lazy_pages_args), which
    # must be listening on the work directory's lazy-pages.socket before the restore starts
    lazy_pages: bool = False
    # permissions of restored files' paths as the dump saw them are not checked: another
    # runtime's root filesystem may differ in them where the program could not tell (the
    # root directory: 0755 under containerd, 0555 in CRI-O's containers/storage)
    skip_file_rwx_check: bool = False
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
                       ("--ext-unix-sk", plan.ext_unix_sk), ("--link-remap", plan.link_remap),
                       ("--lazy-pages", plan.lazy_pages),
                       ("--skip-file-rwx-check", plan.skip_file_rwx_check))
    args += list(plan.extra_args)
    return args


LAZY_LOG = "lazy-pages.log"


def lazy_pages_args(criu_path: str, images_dir: Path, work_dir: Path, socket_fd: int
                    ) -> list[str]:
    """`criu lazy-pages`: the daemon that feeds a post-copy restore's memory, page by page as
    the restored process touches it and the rest in the background, from the page server at
    the other end of the connected socket `socket_fd` (never a listening port)."""
    return [criu_path, "lazy-pages", "--page-server", "--ps-socket", str(socket_fd),
            "--images-dir", str(images_dir), "--work-dir", str(work_dir),
            "--log-file", LAZY_LOG, "-v4"]


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
    # post-copy: the memory is left behind and served, once the rest is dumped (said by a
    # byte on status_fd), to the `criu lazy-pages` at the other end of the connected socket
    # lazy_socket_fd; the dump ends once every page went (or the transfer failed: then CRIU
    # resumes the tree, which stays frozen if its freezer was)
    lazy_socket_fd: int = -1
    status_fd: int = -1

    @property
    def passed_fds(self) -> tuple[int, ...]:
        return tuple(fd for fd in (self.lazy_socket_fd, self.status_fd) if fd >= 0)


def dump_args(criu_path: str, plan: DumpPlan) -> list[str]:
    args = [
        criu_path, "dump", "--tree", str(plan.pid),
        "--images-dir", str(plan.images_dir), "--work-dir", str(plan.work_dir),
        # a post-copy dump runs in the pause and CRIU's debug level logs every page pipe of
        # the memory it keeps (≈ 0.1-0.2 s at 4 GiB): info level there, errors all the same
        "--log-file", DUMP_LOG, "-v3" if plan.lazy_socket_fd >= 0 else "-v4",
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
    if plan.lazy_socket_fd >= 0:
        args += ["--lazy-pages", "--ps-socket", str(plan.lazy_socket_fd)]
        if plan.status_fd >= 0:
            args += ["--status-fd", str(plan.status_fd)]
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


class LazyDump:
    """A `criu dump --lazy-pages` past the point where everything but the memory is dumped,
    serving the memory until the other side has every page. wait() for its end."""

    def __init__(self, proc: subprocess.Popen[bytes], plan: DumpPlan, what: str) -> None:
        self.proc, self.plan, self.what = proc, plan, what

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float | None = None) -> None:
        """Until every page went; DumpFailed with CRIU's reason when the transfer failed (CRIU
        then resumed the tree: it stays frozen if its freezer was) or `timeout` passed."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()  # CRIU resumes the tree as it goes
            code = self.proc.wait()
            raise DumpFailed(f"the memory of {self.what} did not all go within "
                             f"{timeout:.0f} s: the transfer was stopped",
                             log_tail=tool.log_tail(self.plan.work_dir / DUMP_LOG)) from None
        if code != 0:
            log_path = self.plan.work_dir / DUMP_LOG
            cause = tool.first_criu_error(log_path)
            raise DumpFailed(f"the memory of {self.what} could not all be sent: "
                             + (f"CRIU: {cause}" if cause else f"criu exited with status {code}"),
                             log_tail=tool.log_tail(log_path))


def start_lazy_dump(criu_path: str, plan: DumpPlan, timeout: float, what: str) -> LazyDump:
    """Start `criu dump --lazy-pages` (plan.lazy_socket_fd set) and return once everything but
    the memory is in the images (CRIU's status byte), or raise DumpFailed with CRIU's reason
    (nothing was left behind then: CRIU resumed the tree). CRIU dies with the helper."""
    try:
        ready_r, ready_w = os.pipe()
    except OSError as exc:
        raise DumpFailed(f"checkpoint of {what} failed: {exc}") from exc
    plan = replace(plan, status_fd=ready_w)
    argv = [str(a) for a in dump_args(criu_path, plan)]
    if tool.has_setpriv():
        argv = [*tool.DIE_WITH_HELPER, *argv]
    try:
        with open(plan.work_dir / "dump.stderr", "wb") as stderr:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                                    pass_fds=plan.passed_fds, cwd=plan.work_dir)
    except OSError as exc:
        os.close(ready_r)
        raise DumpFailed(f"checkpoint of {what} failed: criu could not be started: {exc}"
                         ) from exc
    finally:
        os.close(ready_w)
    dump = LazyDump(proc, plan, what)
    try:
        end = time.monotonic() + timeout
        ready = b""
        waiting = select.poll()
        waiting.register(ready_r, select.POLLIN | select.POLLHUP)
        while not ready and time.monotonic() < end:
            if waiting.poll(max(0, min(1000, int((end - time.monotonic()) * 1000)))):
                ready = os.read(ready_r, 1) or b"EOF"
        if ready != b"\0":
            if ready == b"":  # never said ready: stopped (it resumes the tree)
                proc.terminate()
            proc.wait()
            log_path = plan.work_dir / DUMP_LOG
            cause = tool.first_criu_error(log_path)
            raise DumpFailed(
                f"checkpoint of {what} failed: "
                + (f"CRIU: {cause}" if cause else
                   f"criu exited with status {proc.returncode}" if ready else
                   f"criu did not finish in {timeout:.0f} s and was stopped"),
                log_tail=tool.log_tail(log_path))
    finally:
        os.close(ready_r)
    return dump
