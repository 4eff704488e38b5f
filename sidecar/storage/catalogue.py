"""Small JSON state files in the checkpoint directory that survive a helper restart:

- `.catalogue.json`: checkpoint id -> where it is, whose it was, what was done with it;
- `.restored.json`: target container id -> the process tree restored into it.

Every change happens under a lock (a thread lock plus flock, so two helper processes on one
directory also agree) and is written to a temporary file, synced, and renamed over the old one.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sidecar.errors import CheckpointNotFound, InternalError
from sidecar.storage.paths import within

CATALOGUE_FILE = ".catalogue.json"
RESTORED_FILE = ".restored.json"
#: a change holds the lock for milliseconds; waiting longer means something is stuck
LOCK_WAIT_S = 30.0

_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


def _thread_lock(path: Path) -> threading.Lock:
    with _thread_locks_guard:
        return _thread_locks.setdefault(str(path), threading.Lock())


class JsonStateFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with _thread_lock(self.path):
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                self._flock(fd)
                yield
            finally:
                os.close(fd)  # closing releases the flock

    def _flock(self, fd: int) -> None:
        """Wait for the other helper process's change, LOCK_WAIT_S at most."""
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise InternalError(f"{self._lock_path} has been locked by another process "
                                        f"for more than {LOCK_WAIT_S:.0f} s") from None
                time.sleep(0.01)

    def _read(self) -> dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise InternalError(f"{self.path} is unreadable: {exc}") from exc
        if not isinstance(data, dict):
            raise InternalError(f"{self.path} does not hold a JSON object")
        return data

    def _write(self, data: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def read(self) -> dict[str, Any]:
        with self._locked():
            return self._read()

    def update(self, change: Callable[[dict[str, Any]], Any]) -> Any:
        """Apply `change` to the data in place under the lock, save it, return its result."""
        with self._locked():
            data = self._read()
            result = change(data)
            self._write(data)
            return result


class Catalogue:
    """The checkpoints this helper wrote (or restored from), by id."""

    def __init__(self, checkpoint_dir: Path) -> None:
        self.checkpoint_dir = checkpoint_dir
        self._file = JsonStateFile(checkpoint_dir / CATALOGUE_FILE)

    def add(self, entry: dict[str, Any]) -> None:
        self.add_all([entry])

    def add_all(self, entries: list[dict[str, Any]]) -> None:
        """List every entry in one write (a whole-pod checkpoint's members: all or none)."""
        def change(data: dict[str, Any]) -> None:
            for entry in entries:
                data[entry["id"]] = entry
        self._file.update(change)

    def list(self) -> list[dict[str, Any]]:
        return sorted(self._file.read().values(), key=lambda e: e.get("created", ""))

    def get(self, checkpoint_id: str) -> dict[str, Any]:
        entry = self._file.read().get(checkpoint_id)
        if entry is None:
            raise CheckpointNotFound(
                f"no checkpoint with id {checkpoint_id} in this node's catalogue "
                "(GET /checkpoints lists them)", checkpoint_id=checkpoint_id,
            )
        return dict(entry)

    def merge(self, checkpoint_id: str, fields: dict[str, Any]) -> bool:
        """Add or replace fields of an entry; False when there is no such entry."""
        def change(data: dict[str, Any]) -> bool:
            if checkpoint_id not in data:
                return False
            data[checkpoint_id].update(fields)
            return True
        return bool(self._file.update(change))

    def record_restore(self, checkpoint_id: str, restore: dict[str, Any]) -> bool:
        def change(data: dict[str, Any]) -> bool:
            if checkpoint_id not in data:
                return False
            data[checkpoint_id].setdefault("restores", []).append(restore)
            return True
        return bool(self._file.update(change))

    def delete(self, checkpoint_id: str) -> dict[str, Any]:
        """Remove the entry and its directory (only if that lies inside the checkpoint dir)."""
        def change(data: dict[str, Any]) -> dict[str, Any] | None:
            entry: dict[str, Any] | None = data.pop(checkpoint_id, None)
            return entry
        entry = self._file.update(change)
        if entry is None:
            raise CheckpointNotFound(
                f"no checkpoint with id {checkpoint_id} in this node's catalogue",
                checkpoint_id=checkpoint_id,
            )
        path = os.path.realpath(entry.get("path", ""))
        if path != os.path.realpath(self.checkpoint_dir) and within(self.checkpoint_dir, path) \
                and os.path.isdir(path):
            shutil.rmtree(path)
        return dict(entry)


class RestoredRegistry:
    """Which containers already hold a restored process tree; `is_live` says whether a record's
    tree still runs (records of gone trees are dropped on the next write)."""

    def __init__(self, checkpoint_dir: Path, is_live: Callable[[dict[str, Any]], bool]) -> None:
        self._file = JsonStateFile(checkpoint_dir / RESTORED_FILE)
        self.is_live = is_live

    def live_restore(self, container_id: str) -> dict[str, Any] | None:
        record = self._file.read().get(container_id)
        if record is not None and self.is_live(record):
            return dict(record)
        return None

    def record(self, container_id: str, record: dict[str, Any]) -> None:
        def change(data: dict[str, Any]) -> None:
            data[container_id] = record
            # forget entries whose restored tree has gone
            for cid in [c for c, r in data.items() if c != container_id and not self.is_live(r)]:
                del data[cid]
        self._file.update(change)
