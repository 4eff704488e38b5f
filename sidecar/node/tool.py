"""Running external binaries: argument lists only, bounded time, output captured (or streamed)."""
from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 40
# run a tool so that the kernel kills it when the helper dies (SIGKILL included): a dump whose
# helper is gone must not go on to stop the container it can no longer record
DIE_WITH_HELPER = ("setpriv", "--pdeathsig", "KILL", "--")
#: the program runc runs as CRIU so that CRIU dies with runc (sidecar/criu_guard.py)
CRIU_GUARD_NAME = "cedana-criu-guard"
CRIU_GUARD_ENV = "CEDANA_GUARDED_CRIU"
# after a timeout the tool gets this long to clean up (CRIU thaws what it froze) before SIGKILL
TERMINATE_GRACE_S = 15.0


@dataclass(frozen=True)
class ToolResult:
    args: list[str]
    returncode: int | None  # None: it did not finish in time, or could not be started
    stdout: str
    stderr: str
    timed_out: bool = False
    start_error: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        name = Path(self.args[0]).name if self.args else "?"
        if self.start_error:
            return f"{name} could not be started: {self.start_error}"
        if self.timed_out:
            return f"{name} did not finish in time and was stopped"
        detail = last_lines(self.stderr, 5) or last_lines(self.stdout, 5)
        text = f"{name} exited with status {self.returncode}"
        return f"{text}: {detail}" if detail else text


@functools.cache
def has_setpriv() -> bool:
    return shutil.which(DIE_WITH_HELPER[0]) is not None


def run(args: Sequence[str], *, timeout: float, pass_fds: Sequence[int] = (),
        cwd: str | Path | None = None, die_with_helper: bool = False,
        env: dict[str, str] | None = None, input_text: str | None = None) -> ToolResult:
    """Run `args` (never through a shell) and return what happened; never raises for failure.

    `die_with_helper`: through setpriv --pdeathsig, when the node has it. `env`: added to the
    helper's environment. `input_text`: written to its standard input."""
    argv = [str(a) for a in args]
    if die_with_helper and has_setpriv():
        argv = [*DIE_WITH_HELPER, *argv]
    log.debug("running %s", argv)
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL if input_text is None else subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, errors="replace", pass_fds=tuple(pass_fds), cwd=cwd,
            env={**os.environ, **env} if env else None,
        )
    except OSError as exc:
        return ToolResult(argv, None, "", "", start_error=str(exc))
    try:
        stdout, stderr = proc.communicate(input_text, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            stdout, stderr = proc.communicate(timeout=TERMINATE_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        return ToolResult(argv, None, stdout, stderr, timed_out=True)
    return ToolResult(argv, proc.returncode, stdout, stderr)


def stream(args: Sequence[str], sink: Callable[[bytes], None], *, timeout: float,
           chunk_size: int = 1 << 20) -> ToolResult:
    """Run `args`, handing its stdout to `sink` chunk by chunk as it comes (never all of it in
    memory); stderr is kept. Killed once `timeout` has passed (timed_out). An exception from
    `sink` kills the tool and propagates."""
    argv = [str(a) for a in args]
    log.debug("running %s", argv)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    except OSError as exc:
        return ToolResult(argv, None, "", "", start_error=str(exc))
    out, err = proc.stdout, proc.stderr
    assert out is not None and err is not None
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        proc.kill()

    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(err.read()), name="tool-stderr",
                              daemon=True)
    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    reader.start()
    timer.start()
    try:
        while chunk := out.read(chunk_size):
            sink(chunk)
    except BaseException:
        proc.kill()
        raise
    finally:
        timer.cancel()
        proc.wait()
        reader.join()
        out.close()
        err.close()
    stderr = b"".join(errors).decode(errors="replace")
    if expired.is_set():
        return ToolResult(argv, None, "", stderr, timed_out=True)
    return ToolResult(argv, proc.returncode, "", stderr)


def flags(*wanted: tuple[str, bool]) -> list[str]:
    """The command-line flags whose condition holds, in the order given."""
    return [flag for flag, on in wanted if on]


def last_lines(text: str, count: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-count:])


def log_tail(path: Path, count: int = LOG_TAIL_LINES) -> str:
    """The last `count` lines of a tool's log file ("" if there is none)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "\n".join(line.rstrip("\n") for line in deque(f, maxlen=count))
    except OSError:
        return ""


#: errors CRIU logs and goes on from (not the cause of a failure): without CAP_SYS_RESOURCE it
#: cannot raise its own open-file limit and keeps the one it has (criu/util.c)
BENIGN_CRIU_ERRORS = ("rlimit: Can't setup RLIMIT_NOFILE for self",)


def first_criu_error(path: Path) -> str:
    """CRIU's first error in its log (the cause; later ones are its consequences, ending in
    "Dumping FAILED."), without the time stamp, passing over errors CRIU goes on from; "" if
    the log has none or is missing."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                _, found, rest = line.partition("Error (")
                if found and not any(b in rest for b in BENIGN_CRIU_ERRORS):
                    return ("Error (" + rest).strip()[:500]
    except OSError:
        pass
    return ""


ENTER_CGROUPS_NAME = "cedana-enter-cgroups"
LAZY_GUARD_NAME = "cedana-lazy-guard"


def find_beside_or_on_path(name: str) -> str:
    """A helper program beside the helper's Python, else on PATH; "" when neither has it."""
    beside = Path(sys.executable).parent / name
    if os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name) or ""


def find_criu_guard(choice: str) -> str:
    """The CRIU guard to give runc: `auto` looks beside the helper's Python, then on PATH;
    `none` (or nothing found) gives "" and runc runs CRIU itself."""
    if choice == "none":
        return ""
    if choice != "auto":
        return choice
    found = find_beside_or_on_path(CRIU_GUARD_NAME)
    if not found:
        log.warning("%s not found: a helper killed during a dump leaves CRIU running until "
                    "the next helper starts", CRIU_GUARD_NAME)
    return found or ""
