"""Timing external commands and noticing when a restored program runs again."""
from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# memhog prints one such line per interval; the first one from the restored process is the
# readiness signal used for every method
HEARTBEAT = re.compile(rb"memhog mib=\d+ beat=(\d+) sum=\d+ ok=(\d)")
POLL_S = 0.002


class BenchError(RuntimeError):
    """A step of the benchmark failed; the message names the step and the tool's output."""


def run(args: Sequence[str], *, timeout: float = 600, check: bool = True,
        env: dict[str, str] | None = None, input_text: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                          env=env, input=input_text, check=False)
    if check and proc.returncode != 0:
        raise BenchError(f"{' '.join(args)} exited {proc.returncode}: "
                         f"{(proc.stderr or proc.stdout)[-1500:]}")
    return proc


def timed_run(args: Sequence[str], **kw: Any) -> tuple[float, subprocess.CompletedProcess[str]]:
    """(wall milliseconds, result) of one command."""
    start = time.monotonic()
    result = run(args, **kw)
    return (time.monotonic() - start) * 1000.0, result


@dataclass
class ReadyTiming:
    ready_ms: float  # start of the restore until the first heartbeat was seen
    action_ms: float  # start of the restore until the restore command/request returned
    result: Any = None


def last_beat(data: bytes) -> int:
    """The highest heartbeat number in `data`, -1 when there is none."""
    return max((int(m.group(1)) for m in HEARTBEAT.finditer(data)), default=-1)


def heartbeat_in(data: bytes, after_beat: int = -1) -> bool:
    """Whether `data` holds a heartbeat numbered above `after_beat` (with a good checksum)."""
    for match in HEARTBEAT.finditer(data):
        if int(match.group(1)) > after_beat:
            if match.group(2) != b"1":
                raise BenchError(f"restored memhog reports a wrong checksum: {match.group(0)!r}")
            return True
    return False


@dataclass
class FileProbe:
    """Seen when a heartbeat numbered above `after_beat` appears in a log file (which may not
    exist yet). podman's export carries the container's old log into the restored one, so
    there the old lines must not count."""

    path: Callable[[], Path | None]
    offset: int = 0
    after_beat: int = -1

    def __call__(self) -> bool:
        path = self.path()
        if path is None:
            return False
        try:
            with open(path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return False
        return heartbeat_in(data, self.after_beat)


@dataclass
class PipeWatcher:
    """Reads a pipe in a thread and remembers when the first heartbeat arrived."""

    fd: int
    seen_at: float | None = None
    _buf: bytes = b""
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> PipeWatcher:
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            if self.seen_at is None:
                self._buf = (self._buf + chunk)[-4096:]
                if HEARTBEAT.search(self._buf):
                    self.seen_at = time.monotonic()

    def __call__(self) -> bool:
        return self.seen_at is not None


def until_ready(action: Callable[[], Any], probe: Callable[[], bool], *,
                timeout: float = 300) -> ReadyTiming:
    """Run `action` (the restore) in a thread while polling `probe` every POLL_S."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = action()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            outcome["error"] = exc
        outcome["done"] = time.monotonic()

    start = time.monotonic()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    ready_at = None
    deadline = start + timeout
    while time.monotonic() < deadline:
        if ready_at is None and probe():
            ready_at = time.monotonic()
        if "error" in outcome:
            raise outcome["error"]
        if ready_at is not None and "done" in outcome:
            break
        time.sleep(POLL_S)
    thread.join(1)
    if "error" in outcome:
        raise outcome["error"]
    if ready_at is None or "done" not in outcome:
        raise BenchError(f"restore not ready after {timeout:.0f} s "
                         f"(returned: {'done' in outcome}, heartbeat: {ready_at is not None})")
    seen = getattr(probe, "seen_at", None)  # a pipe watcher knows the exact moment
    if seen is not None:
        ready_at = seen
    return ReadyTiming((ready_at - start) * 1000.0, (outcome["done"] - start) * 1000.0,
                       outcome.get("result"))


def directory_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                total += os.path.getsize(full)
    return total


def wait_for(what: str, check: Callable[[], bool], timeout: float = 120,
             interval: float = 0.2) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
