"""`python -m sidecar.node.enter_cgroups --pid P -- CMD [ARG...]`: join every cgroup of process P,
then exec CMD. Everything CMD starts (and everything CRIU restores with
--manage-cgroups=ignore) is then accounted to P's container.

`--wait-for PATH --wait-pid Q`: exec CMD only once PATH exists (a post-copy restore waits for
its lazy-pages daemon's socket, started alongside), giving up when process Q (the daemon's
guard) is gone or --wait-timeout passed.

Kept as a separate exec step because moving a process between cgroups from a forked child of
the threaded server (preexec_fn) is not safe.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from sidecar.node import wrapper_argv
from sidecar.node.cgroups import CgroupDir, process_cgroup_dirs

EXIT_SETUP_FAILED = 125  # as env(1)/nsenter(1) report their own failures
WAIT_POLL_S = 0.005


def join_cgroups(dirs: Sequence[CgroupDir], pid: int) -> list[str]:
    """Write `pid` into each directory's cgroup.procs; return the directories joined."""
    joined = []
    for cgroup in dirs:
        with open(os.path.join(cgroup.directory, "cgroup.procs"), "w", encoding="ascii") as f:
            f.write(f"{pid}\n")
        joined.append(cgroup.directory)
    return joined


def wait_for(path: str, pid: int, timeout: float) -> bool:
    """Whether `path` appeared within `timeout` while process `pid` (0: none) lived."""
    end = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > end or (pid and not _alive(pid)):
            return False
        time.sleep(WAIT_POLL_S)
    return True


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie its parent has not reaped yet does not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rpartition(")")[2].split()[:1] != ["Z"]
    except OSError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sidecar.node.enter_cgroups")
    parser.add_argument("--pid", type=int, required=True, help="join this process's cgroups")
    parser.add_argument("--wait-for", metavar="PATH", help="exec only once this path exists")
    parser.add_argument("--wait-pid", type=int, default=0,
                        help="stop waiting when this process is gone")
    parser.add_argument("--wait-timeout", type=float, default=30.0, metavar="SECONDS")
    args, command = wrapper_argv.parse(parser, argv)
    try:
        join_cgroups(process_cgroup_dirs(args.pid), os.getpid())
    except OSError as exc:
        print(f"enter_cgroups: cannot join the cgroups of pid {args.pid}: {exc}",
              file=sys.stderr)
        return EXIT_SETUP_FAILED
    if args.wait_for and not wait_for(args.wait_for, args.wait_pid, args.wait_timeout):
        print(f"enter_cgroups: {args.wait_for} did not appear", file=sys.stderr)
        return EXIT_SETUP_FAILED
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"enter_cgroups: cannot run {command[0]}: {exc}", file=sys.stderr)
    return EXIT_SETUP_FAILED


if __name__ == "__main__":
    sys.exit(main())
