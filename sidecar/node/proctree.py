"""Facts about a container's process tree read from /proc: io_uring use, TCP connections,
its root's overlay upper directory, pid translation between namespaces, start times; and the
runc/CRIU a dead helper left behind."""
from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

IO_URING_LINK = "anon_inode:[io_uring]"


@dataclass(frozen=True)
class TreeProcess:
    pid: int
    name: str


def process_tree(pid: int) -> list[TreeProcess]:
    """The process and all its descendants (by parent pid), the root first."""
    try:
        root = psutil.Process(pid)
        members = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    tree = []
    for proc in members:
        try:
            tree.append(TreeProcess(proc.pid, proc.name()))
        except psutil.Error:
            continue  # exited while we looked
    return tree


def tree_rss(tree: list[TreeProcess]) -> int:
    """The resident memory of a process tree, in bytes: the sum of its processes' RSS. An
    estimate of what a dump writes of its memory: CRIU writes the anonymous and changed pages,
    most of RSS; RSS also counts unchanged file pages (not dumped) and pages shared between
    the processes in each, and leaves out pages swapped out (dumped)."""
    total = 0
    for member in tree:
        try:
            total += int(psutil.Process(member.pid).memory_info().rss)
        except psutil.Error:
            continue  # exited while we looked
    return total


def fd_links(pid: int, proc: Path = Path("/proc")) -> dict[int, str]:
    links = {}
    fd_dir = proc / str(pid) / "fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return {}
    for name in names:
        try:
            links[int(name)] = os.readlink(fd_dir / name)
        except (OSError, ValueError):
            continue
    return links


def find_io_uring(tree: list[TreeProcess], proc: Path = Path("/proc")) -> TreeProcess | None:
    for member in tree:
        if IO_URING_LINK in fd_links(member.pid, proc).values():
            return member
    return None


SOCKET_LINK = "socket:["


def socket_fds(tree: Sequence[TreeProcess], proc: Path = Path("/proc")
               ) -> dict[str, tuple[int, int]]:
    """The sockets the tree's processes hold: inode -> (pid, fd) of the first holding it."""
    held: dict[str, tuple[int, int]] = {}
    for member in tree:
        for fd, link in fd_links(member.pid, proc).items():
            if link.startswith(SOCKET_LINK) and link.endswith("]"):
                held.setdefault(link[len(SOCKET_LINK):-1], (member.pid, fd))
    return held


def upper_dir(pid: int, proc: Path = Path("/proc")) -> Path | None:
    """The overlay upper directory of the root mount of process `pid`, if it has one: where
    the container's changed files are."""
    try:
        lines = (proc / str(pid) / "mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or fields[4] != "/":
            continue
        fstype, _source, *rest = right.split()
        if fstype != "overlay" or not rest:
            continue
        for opt in rest[0].split(","):
            if opt.startswith("upperdir="):
                return Path(opt.split("=", 1)[1])
    return None


@dataclass(frozen=True)
class Mount:
    """One line of /proc/PID/mountinfo: where, what part of its filesystem, which type."""

    mount_point: str  # as the process sees it, in its own root
    root: str  # the part of the filesystem mounted there ("/": all of it; a bind: less)
    fstype: str


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts(pid: int, proc: Path = Path("/proc")) -> list[Mount]:
    """The mounts process `pid` sees, in mountinfo's order (parents before children)."""
    try:
        lines = (proc / str(pid) / "mountinfo").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, kind = left.split(), right.split()[:1]
        if len(fields) >= 5 and kind:
            found.append(Mount(_unescape(fields[4]), _unescape(fields[3]), kind[0]))
    return found


def tmpfs_mount_points(pid: int, proc: Path = Path("/proc")) -> set[str]:
    """Where process `pid` sees a tmpfs mounted, as paths in its own root."""
    try:
        lines = (proc / str(pid) / "mountinfo").read_text().splitlines()
    except OSError:
        return set()
    found = set()
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) >= 5 and right.split()[:1] == ["tmpfs"]:
            found.add(_unescape(fields[4]))
    return found


def nspid(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """The NSpid line of /proc/PID/status: the pid in each namespace, outermost first."""
    try:
        text = (proc / str(pid) / "status").read_text(encoding="utf-8")
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("NSpid:"):
            return [int(x) for x in line.split()[1:]]
    return []


def host_pid_for(namespace_owner: int, vpid: int) -> int | None:
    """The pid (in our namespace) of the descendant of `namespace_owner` whose pid in
    namespace_owner's PID namespace is `vpid`."""
    owner_levels = nspid(namespace_owner)
    if not owner_levels:
        return None
    level = len(owner_levels) - 1
    for member in process_tree(namespace_owner):
        levels = nspid(member.pid)
        if len(levels) > level and levels[level] == vpid:
            return member.pid
    return None


def start_ticks(pid: int, proc: Path = Path("/proc")) -> int | None:
    """When process `pid` started, in clock ticks after boot (field 22 of /proc/PID/stat, the
    value runc records as init_process_start); None when there is no such process."""
    try:
        stat = (proc / str(pid) / "stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # the name in parentheses may hold spaces
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


@functools.cache
def _boot_time(proc: Path = Path("/proc")) -> float:
    for line in (proc / "stat").read_text(encoding="ascii").splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise OSError(f"no btime in {proc}/stat")


def start_time(pid: int) -> float | None:
    """When process `pid` started, in seconds since the epoch (as `ps` shows it)."""
    ticks = start_ticks(pid)
    if ticks is None:
        return None
    return _boot_time() + ticks / os.sysconf("SC_CLK_TCK")


def alive(pid: int) -> bool:
    """Running: a zombie has let go of its files and memory."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def working_in(programs: list[str], directory: Path) -> dict[int, str]:
    """Processes of `programs` with an open file or their working directory in `directory`:
    {pid: executable}."""
    wanted = {os.path.realpath(shutil.which(p) or p) for p in programs if p}
    prefix = os.path.realpath(directory)

    def inside(path: str) -> bool:
        return path == prefix or path.startswith(prefix + "/")

    found: dict[int, str] = {}
    for proc in psutil.process_iter(["exe"]):
        exe = proc.info["exe"]
        if exe not in wanted or proc.pid == os.getpid():
            continue
        try:
            cwd = proc.cwd()
        except psutil.Error:
            continue
        if inside(cwd) or any(inside(link) for link in fd_links(proc.pid).values()):
            found[proc.pid] = exe
    return found


def stop_stragglers(programs: list[str], directory: Path, wait_s: float = 10.0) -> list[int]:
    """SIGKILL processes of `programs` (runc, CRIU) still working in `directory`, left by a
    helper that died in the middle of a dump, and wait until they are gone; returns their PIDs.
    Only these programs, only this directory: nothing else on the node is touched."""
    killed: list[int] = []
    for pid, exe in working_in(programs, directory).items():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        killed.append(pid)
        log.warning("killed %s (pid %d), left working in %s by a helper that died",
                    exe, pid, directory)
    deadline = time.monotonic() + wait_s
    for pid in killed:
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
    return killed
