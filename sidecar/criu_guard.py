#!/usr/bin/python3 -S
"""cedana-criu-guard: the program the helper gives runc as its CRIU (`runc --criu`).

It asks the kernel to SIGKILL it when its parent (runc) dies, then becomes the real CRIU
(`CEDANA_GUARDED_CRIU`, default `criu`). The helper runs runc the same way, so a helper killed
in the middle of a dump takes runc and CRIU with it at once: an orphaned CRIU would otherwise go
on writing into a directory the next helper cleans up, then put back or kill a process tree
nobody records. What it had frozen stays frozen until the next helper thaws it (freezer.py).

Standalone on purpose (standard library only, runs with -S): it is started for every dump."""
from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
ENV_REAL_CRIU = "CEDANA_GUARDED_CRIU"
EXIT_PARENT_GONE = 125


def main() -> int:
    real = os.environ.get(ENV_REAL_CRIU) or "criu"
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        sys.stderr.write(f"cedana-criu-guard: prctl(PR_SET_PDEATHSIG): {os.strerror(err)}\n")
        return EXIT_PARENT_GONE
    if os.getppid() != parent:  # runc died before the request took effect
        return EXIT_PARENT_GONE
    try:
        os.execvp(real, [real, *sys.argv[1:]])
    except OSError as exc:
        sys.stderr.write(f"cedana-criu-guard: cannot run {real}: {exc}\n")
    return EXIT_PARENT_GONE


if __name__ == "__main__":
    sys.exit(main())
