"""How much one helper takes on at once (docs/security.md#limits), whichever way an operation
comes in (a REST route or the reconciler of cedana.io objects: both call the same functions of
ops, and those call these).

- Operations. The heavy ones (checkpoint, restore, rootfs commit and apply: they freeze
  containers, run CRIU, hold a thread and write or download gigabytes) are admitted at most
  `max_operations` at once on the helper and `max_operations_per_namespace` at once for pods of
  one namespace. Beyond, TooManyRequests (429) at once, with a Retry-After: nothing waits in a
  queue, so a flood costs a refusal each. Reads (lists, the catalogue, version, health) are not
  counted: they freeze nothing and write nothing; the server's connection limit bounds them.
- Space. Before a dump, and before a checkpoint is pulled from the registry, what it will add
  is reserved against the checkpoint directory's quota (`max_checkpoint_dir_bytes`, 0: none):
  the checkpoints of the catalogue whose directories exist, plus what the operations in flight
  reserved, plus this one's estimate may not exceed it; else QuotaExceeded (507) before
  anything is frozen or written. A reservation is held until the operation ends, by which time
  its checkpoint is in the catalogue. Retention (ops/retention.py) runs after each checkpoint;
  the quota is the hard stop before one.
"""
from __future__ import annotations

import itertools
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from sidecar.config import DEFAULT_CHECKPOINT_DIR_SHARE, HelperConfig
from sidecar.errors import HelperError, QuotaExceeded, TooManyRequests
from sidecar.node import proctree
from sidecar.storage import rootfs_diff, store
from sidecar.storage.catalogue import Catalogue

if TYPE_CHECKING:
    from sidecar.ops.context import Helper

log = logging.getLogger(__name__)

#: what a refused caller is told to wait: operations take seconds to minutes, and nothing says
#: which one ends first
RETRY_AFTER_S = 5
FREE_SPACE = ("free space with `kubectl cedana checkpoints prune` (retention: the oldest go) "
              "or `kubectl cedana checkpoints rm ID`, or delete Checkpoint objects (`kubectl "
              "delete checkpoints.cedana.io NAME -n NAMESPACE`); or raise the quota "
              "(--max-checkpoint-dir-bytes, `kubectl cedana install "
              "--max-checkpoint-dir-bytes BYTES`)")


class Limits:
    """One helper's operations in flight (in all, and by namespace) and the bytes of the
    checkpoint directory they reserved. Thread-safe; one per helper (ops/context.Helper)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the counts of operations
        self._running = 0
        self._by_namespace: Counter[str] = Counter()
        # the reservations; apart, as deciding one reads the catalogue (a file lock)
        self._space_lock = threading.Lock()
        self._reserved: dict[int, int] = {}
        self._tokens = itertools.count()

    def running(self, namespace: str | None = None) -> int:
        """Operations admitted and not yet ended: in all, or for pods of `namespace`."""
        with self._lock:
            return self._running if namespace is None else self._by_namespace[namespace]

    def reserved_bytes(self) -> int:
        with self._space_lock:
            return sum(self._reserved.values())

    @contextmanager
    def admit(self, config: HelperConfig, namespace: str, what: str) -> Iterator[None]:
        """Count one operation on a pod of `namespace` for the length of the block, or refuse
        it (TooManyRequests) when the helper or the namespace is at its limit. Released
        however the block ends."""
        with self._lock:
            refusal = self._refusal(config, namespace, what)
            if refusal is None:
                self._running += 1
                self._by_namespace[namespace] += 1
        if refusal is not None:
            _refuse(what, refusal)
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                self._by_namespace[namespace] -= 1
                if self._by_namespace[namespace] <= 0:
                    del self._by_namespace[namespace]

    def _refusal(self, config: HelperConfig, namespace: str, what: str
                 ) -> TooManyRequests | None:
        per_namespace = config.max_operations_per_namespace
        in_namespace = self._by_namespace[namespace]
        if per_namespace > 0 and in_namespace >= per_namespace:
            return TooManyRequests(
                f"cannot start the {what}: {in_namespace} operations for pods of namespace "
                f"{namespace!r} already run on node {config.node_name}, the limit per namespace "
                f"(--max-operations-per-namespace {per_namespace}); try again in "
                f"{RETRY_AFTER_S} s", limit="namespace", namespace=namespace,
                max_operations=per_namespace, running=in_namespace, retry_after_s=RETRY_AFTER_S)
        total = config.max_operations
        if total > 0 and self._running >= total:
            return TooManyRequests(
                f"cannot start the {what}: {self._running} operations (checkpoints, restores, "
                f"rootfs commits and applies) already run on node {config.node_name}, the "
                f"helper's limit (--max-operations {total}); try again in {RETRY_AFTER_S} s",
                limit="helper", max_operations=total, running=self._running,
                retry_after_s=RETRY_AFTER_S)
        return None

    @contextmanager
    def reserve(self, config: HelperConfig, nbytes: int, what: str,
                **extra: Any) -> Iterator[None]:
        """Hold `nbytes` of the checkpoint directory's quota for the length of the block, or
        refuse (QuotaExceeded, with `extra`) when what is there, what operations in flight
        hold and `nbytes` exceed it. Without a quota: nothing is counted."""
        quota = config.max_checkpoint_dir_bytes
        if quota <= 0:
            yield
            return
        nbytes = max(0, int(nbytes))
        # read and decided under the lock: an operation that ends lists its checkpoint before
        # it lets go of its reservation, so each byte is counted at least once
        with self._space_lock:
            stored = used_bytes(config)
            reserved = sum(self._reserved.values())
            refusal = None
            if stored + reserved + nbytes > quota:
                refusal = quota_exceeded(config, what, stored, reserved, nbytes, **extra)
            else:
                token = next(self._tokens)
                self._reserved[token] = nbytes
        if refusal is not None:
            _refuse(what, refusal)
        try:
            yield
        finally:
            with self._space_lock:
                del self._reserved[token]


def _refuse(what: str, refusal: HelperError) -> NoReturn:
    """Log a limit's refusal (the helper's own record of who was turned away) and raise it."""
    log.warning("%s refused: %s", what, refusal.message,
                extra={"error_code": refusal.code, **refusal.extra})
    raise refusal


def quota_exceeded(config: HelperConfig, what: str, stored: int, reserved: int, needed: int,
                   **extra: Any) -> QuotaExceeded:
    quota = config.max_checkpoint_dir_bytes
    held = f", and operations in progress hold {reserved} more" if reserved else ""
    if needed > quota:
        why = f"it alone needs about {needed} bytes, more than the whole quota"
    else:
        why = f"it needs about {needed} bytes and {max(0, quota - stored - reserved)} are left"
    return QuotaExceeded(
        f"cannot start the {what}: the checkpoint directory {config.checkpoint_dir} of node "
        f"{config.node_name} holds {stored} bytes of checkpoints{held}, its quota is {quota} "
        f"bytes (--max-checkpoint-dir-bytes), and {why}. Nothing was frozen, written or "
        f"downloaded; {FREE_SPACE}", limit_bytes=quota, used_bytes=stored + reserved,
        needed_bytes=needed, **extra)


def admit(helper: Helper, namespace: str, what: str) -> AbstractContextManager[None]:
    """`helper.limits.admit` with the helper's configuration: the one line an operation's entry
    function starts with (`with limits.admit(helper, namespace, "checkpoint"):`)."""
    return helper.limits.admit(helper.config, namespace, what)


def used_bytes(config: HelperConfig) -> int:
    """The bytes of the checkpoints this node holds: the sizes its catalogue recorded for the
    checkpoints whose directories exist (one read of the catalogue, no walk; files put in the
    directory by other means are not counted)."""
    total = 0
    for entry in Catalogue(config.checkpoint_dir).list():
        path = entry.get("path")
        if path and Path(str(path)).is_dir():
            total += int(entry.get("size_bytes") or 0)
    return total


def dump_estimate(tree: list[proctree.TreeProcess], upper: Path | None) -> int:
    """What a dump of a container will write, about: the resident memory of its process tree
    and, with its root filesystem, the tar of its overlay upper directory."""
    rootfs = rootfs_diff.diff_size_estimate(upper) if upper is not None and upper.is_dir() else 0
    return proctree.tree_rss(tree) + rootfs


def default_quota(checkpoint_dir: Path, share: float = DEFAULT_CHECKPOINT_DIR_SHARE
                  ) -> tuple[int, int]:
    """(quota, filesystem size): `share` of the filesystem that holds the checkpoint
    directory, as `cedana-helper serve` sets it when not told."""
    size = store.filesystem_bytes(checkpoint_dir)
    return int(size * share), size
