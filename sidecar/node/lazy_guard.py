"""`python -m sidecar.node.lazy_guard --pidfile F -- criu lazy-pages ...`: runs the daemon that
feeds a post-copy restore its memory, and kills the restored tree if the daemon ends before
every page arrived.

When a lazy-pages daemon ends, the kernel lets go of the restored process's missing pages: they
then read as zeros, and the process would go on with memory that is not its own. The guard is
the daemon's parent; it runs in the placeholder's cgroups and pid namespace (started through
enter_cgroups and nsenter, as CRIU's restore is), outside the helper's container, so it outlives
the helper: a helper that dies (its relay with it) ends the daemon, and the guard then kills
the restored tree (SIGKILL to its root through a pidfd, which no other process can have taken).
F is the restore's pidfile (the root's pid in this pid namespace), read once CRIU wrote it.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

from sidecar.node import wrapper_argv

EXIT_SETUP_FAILED = 125
POLL_S = 0.05


def open_restored(pidfile: str) -> int | None:
    """A pidfd of the process the pidfile names; None while CRIU has not written it."""
    try:
        with open(pidfile, encoding="ascii") as f:
            pid = int(f.read().strip())
        return os.pidfd_open(pid)
    except (OSError, ValueError):
        return None


def _pid_of(pidfile: str) -> int:
    try:
        with open(pidfile, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 0


def descendants(pid: int) -> list[int]:
    """The processes below `pid` (its children's children too), as /proc shows them."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children", encoding="ascii") as f:
                    children = [int(c) for c in f.read().split()]
            except (OSError, ValueError):
                continue
            found += children
            todo += children
    return found


def kill_tree(pidfd: int, pid: int) -> None:
    """SIGKILL the restored root (through its pidfd) and, unless it is the init of a pid
    namespace of its own (whose death ends every process in it), everything below it."""
    below = descendants(pid) if pid and not _is_namespace_init(pid) else []
    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    for child in below:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _is_namespace_init(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return line.split()[-1] == "1"
    except OSError:
        pass
    return False


def guard(command: Sequence[str], pidfile: str, keep_fds: Sequence[int]) -> int:
    try:
        daemon = subprocess.Popen(list(command), pass_fds=tuple(keep_fds))
    except OSError as exc:
        print(f"lazy_guard: cannot run {command[0]}: {exc}", file=sys.stderr)
        return EXIT_SETUP_FAILED
    for fd in keep_fds:
        os.close(fd)  # the daemon's alone: its end of the connection closes when it ends
    restored: int | None = None
    while True:
        try:
            code = daemon.wait(timeout=None if restored is not None else POLL_S)
            break
        except subprocess.TimeoutExpired:
            restored = open_restored(pidfile)
    if code != 0:
        restored = restored if restored is not None else open_restored(pidfile)
        if restored is not None:
            try:
                kill_tree(restored, _pid_of(pidfile))
                print(f"lazy_guard: the lazy-pages daemon ended with status {code} before "
                      "every page arrived: the restored process was killed", file=sys.stderr)
            except ProcessLookupError:
                pass
    if restored is not None:
        os.close(restored)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sidecar.node.lazy_guard")
    parser.add_argument("--pidfile", required=True, help="the restore's pidfile")
    parser.add_argument("--keep-fd", type=int, action="append", default=[],
                        help="a descriptor the daemon inherits")
    args, command = wrapper_argv.parse(parser, argv)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return guard(command, args.pidfile, args.keep_fd)


if __name__ == "__main__":
    sys.exit(main())
