"""Freeze a container's processes while its files are read, through its freezer cgroup.

runc and CRIU accept a container that is already frozen: CRIU dumps it and puts the cgroup back
in the state it found (still frozen), so files read after the dump match the memory image.
"""
from __future__ import annotations

import json
import logging
import os
import select
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sidecar.errors import ContainerNotRunning, DumpFailed
from sidecar.node.cgroups import CgroupDir, process_cgroup_dirs

log = logging.getLogger(__name__)

FREEZE_TIMEOUT_S = 10.0
#: below the checkpoint directory: one file per cgroup a dump may leave frozen, removed when the
#: dump is over; a helper that starts thaws whatever is still listed (its predecessor died)
JOURNAL_NAME = ".frozen"


def _freezer(pid: int) -> tuple[Path, str, str, str] | None:
    """(state file, frozen value, thawed value, read-back file) for pid's freezer."""
    try:
        dirs: list[CgroupDir] = process_cgroup_dirs(pid)
    except FileNotFoundError as exc:
        raise ContainerNotRunning(f"process {pid} has exited") from exc
    # the root cgroup cannot be frozen (a process outside any container's cgroup)
    dirs = [e for e in dirs if e.membership.path not in ("", "/")]
    for entry in dirs:
        if entry.mount.version == 1 and "freezer" in entry.membership.controllers:
            state = Path(entry.directory) / "freezer.state"
            return state, "FROZEN", "THAWED", str(state)
    for entry in dirs:
        if entry.mount.version == 2:
            freeze = Path(entry.directory) / "cgroup.freeze"
            if freeze.exists():
                return freeze, "1", "0", str(Path(entry.directory) / "cgroup.events")
    return None


def cgroup_dir(pid: int) -> str:
    """The directory of pid's freezer cgroup (v1, or v2's own), "" when it has none."""
    found = _freezer(pid)
    return str(found[0].parent) if found else ""


def _is_frozen(readback: str, frozen: str) -> bool:
    text = Path(readback).read_text()
    if readback.endswith("cgroup.events"):
        return "frozen 1" in text
    return text.strip() == frozen


@contextmanager
def remembered(pid: int, journal: Path | None) -> Iterator[None]:
    """List pid's freezer in `journal` for the block: if the helper dies inside it (runc and
    CRIU freeze the tree too), the next helper thaws it."""
    with _listed(_freezer(pid) if journal is not None else None, pid, journal):
        yield


@contextmanager
def _listed(found: tuple[Path, str, str, str] | None, pid: int,
            journal: Path | None) -> Iterator[None]:
    if found is None or journal is None:
        yield
        return
    journal.mkdir(mode=0o700, exist_ok=True)
    entry = journal / f"{pid}.json"
    entry.write_text(json.dumps({"state": str(found[0]), "thawed": found[2], "pid": pid}))
    try:
        yield
    finally:
        entry.unlink(missing_ok=True)
        try:
            journal.rmdir()  # only when no other dump is listed
        except OSError:
            pass


def thaw_remembered(journal: Path) -> list[str]:
    """Thaw every cgroup a dead helper left listed (at start-up); returns their state files."""
    thawed = []
    for entry in sorted(journal.glob("*.json")) if journal.is_dir() else []:
        try:
            data = json.loads(entry.read_text())
            state = Path(str(data["state"]))
            if state.name in ("freezer.state", "cgroup.freeze") and state.exists():
                _thaw(state, str(data["thawed"]), f"cgroup {state.parent}")
                thawed.append(str(state))
                log.warning("thawed %s, left frozen by a helper that died during a dump",
                            state.parent)
        except (OSError, ValueError, KeyError) as exc:
            log.error("cannot read freezer journal entry %s: %s", entry, exc)
        entry.unlink(missing_ok=True)
    return thawed


@contextmanager
def frozen(pid: int, what: str, journal: Path | None = None) -> Iterator[bool]:
    """Keep the cgroup of `pid` frozen inside the block; yields False when it cannot be."""
    found = _freezer(pid)
    if found is None:
        log.warning("no freezer cgroup for %s; its files are read while it runs", what)
        yield False
        return
    with _listed(found, pid, journal):
        yield from _frozen_block(found, what)


def _frozen_block(found: tuple[Path, str, str, str], what: str) -> Iterator[bool]:
    state, frozen_value, thawed_value, readback = found
    try:
        state.write_text(frozen_value)
        deadline = time.monotonic() + FREEZE_TIMEOUT_S
        wait_s = 0.0005  # a few idle tasks freeze in well under a millisecond: look often
        while not _is_frozen(readback, frozen_value):
            if time.monotonic() > deadline:
                raise DumpFailed(f"{what} did not freeze within {FREEZE_TIMEOUT_S:.0f} s")
            time.sleep(wait_s)
            wait_s = min(wait_s * 2, 0.01)
    except OSError as exc:
        _thaw(state, thawed_value, what)
        raise DumpFailed(f"cannot freeze {what} through {state}: {exc}") from exc
    except BaseException:
        _thaw(state, thawed_value, what)
        raise
    try:
        yield True
    finally:
        _thaw(state, thawed_value, what)


def _thaw(state: Path, thawed_value: str, what: str) -> None:
    try:
        state.write_text(thawed_value)
    except FileNotFoundError:
        pass  # the cgroup is gone with its processes (a dump without leave_running)
    except OSError as exc:
        log.error("cannot thaw %s through %s: %s", what, state, exc)


def kill_frozen(pid: int, what: str) -> int:
    """SIGKILL every process in pid's (frozen) cgroup; they die when it is thawed. While frozen
    no process can exit, so no PID read here can be reused. Returns how many were signalled."""
    found = _freezer(pid)
    if found is None:
        raise DumpFailed(f"no freezer cgroup for {what}: cannot stop it after its dump")
    directory = found[0].parent
    try:
        pids = [int(p) for p in (directory / "cgroup.procs").read_text().split()]
    except (OSError, ValueError) as exc:
        raise DumpFailed(f"cannot read the processes of {what} from {directory}: {exc}") from exc
    killed = 0
    for member in pids:
        try:
            os.kill(member, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            pass
    return killed


def wait_gone(pidfd: int, timeout_s: float) -> bool:
    """Wait until the process behind `pidfd` has exited."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(int(timeout_s * 1000)))
