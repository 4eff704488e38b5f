"""The reconcile loop: watches the cedana.io objects of this node (label cedana.io/node=NODE,
a server-side selector: never every object of the cluster) and the unlabelled ones (to claim
those of this node), and hands each changed object to its reconciler on a worker thread, one
at a time per object, with retries.

Why the client's watch and not an operator framework (kopf): the helper already runs one
process with blocking operations (runc, CRIU) on a thread pool; kopf brings an asyncio runtime,
its own peering and progress annotations, and filters labels on the client side. What is
needed here is small: list + watch with a label selector, a queue keyed by object, and
idempotent handlers that read the object afresh and act on its status.phase."""
from __future__ import annotations

import logging
import queue
import random
import threading
from collections.abc import Callable
from typing import Any

from kubectl_cedana.contract import (
    NODE_LABEL,
)
from sidecar.errors import HelperError
from sidecar.kube.objects import CedanaObjects, Conflict, Gone
from sidecar.ops.context import Helper
from sidecar.reconcile import checkpoints, claim, migrations, restores
from sidecar.reconcile.common import CHECKPOINTS, MIGRATIONS, RESTORES, Ctx

log = logging.getLogger("sidecar.reconcile")

Key = tuple[str, str, str, bool]  # plural, namespace, name, claim (unlabelled)
HANDLERS: dict[str, Callable[[Ctx, dict[str, Any]], None]] = {
    CHECKPOINTS: checkpoints.reconcile,
    RESTORES: restores.reconcile,
    MIGRATIONS: migrations.reconcile,
}
#: everything is listed again this often, whatever the watches said
RESYNC_S = 60.0
MAX_ATTEMPTS = 8


class Controller:
    def __init__(self, helper: Helper, objects: CedanaObjects, workers: int = 4) -> None:
        self.ctx = Ctx(helper, objects)
        self.workers = workers
        self.queue: queue.Queue[Key] = queue.Queue()
        self._lock = threading.Lock()
        self._queued: set[Key] = set()
        self._active: set[Key] = set()
        self._again: set[Key] = set()
        self._attempts: dict[Key, int] = {}
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    @property
    def node(self) -> str:
        return self.ctx.node

    def start(self) -> None:
        selectors = {True: f"!{NODE_LABEL}", False: f"{NODE_LABEL}={self.node}"}
        for plural in HANDLERS:
            for unclaimed, selector in selectors.items():
                self._spawn(f"watch-{plural}-{'unclaimed' if unclaimed else 'mine'}",
                            self._watch, plural, selector, unclaimed)
        for i in range(self.workers):
            self._spawn(f"reconcile-{i}", self._work)
        log.info("reconciling cedana.io objects of node %s", self.node)

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    # -- the queue ------------------------------------------------------------------------------
    def enqueue(self, key: Key, after: float = 0.0) -> None:
        if after > 0:
            timer = threading.Timer(after, self.enqueue, args=(key,))
            timer.daemon = True
            timer.start()
            return
        with self._lock:
            if key in self._active:
                self._again.add(key)  # once the running pass ends
                return
            if key in self._queued:
                return
            self._queued.add(key)
        self.queue.put(key)

    def _work(self) -> None:
        while not self.stop.is_set():
            try:
                key = self.queue.get(timeout=1.0)
            except queue.Empty:
                continue
            with self._lock:
                self._queued.discard(key)
                self._active.add(key)
            retry_after = self._handle(key)
            with self._lock:
                self._active.discard(key)
                again = key in self._again
                self._again.discard(key)
            if retry_after is not None:
                self.enqueue(key, retry_after)
            elif again:
                self.enqueue(key)

    def _handle(self, key: Key) -> float | None:
        """Run the reconciler of one object; seconds until a retry, or None."""
        plural, namespace, name, unclaimed = key
        try:
            obj = self.ctx.objects.get(plural, namespace, name)
            if obj is None:
                return None
            labels = (obj.get("metadata") or {}).get("labels") or {}
            if unclaimed or NODE_LABEL not in labels:
                claim.claim(self.ctx, plural, obj)
                if not (self.ctx.objects.get(plural, namespace, name) or {}).get(
                        "metadata", {}).get("labels", {}).get(NODE_LABEL):
                    return claim.UNCLAIMED_S  # nobody's yet: look again later
                return None
            if labels.get(NODE_LABEL) != self.node:
                return None
            HANDLERS[plural](self.ctx, obj)
            self._attempts.pop(key, None)
            return None
        except checkpoints.Retry as again:
            return again.after
        except (Conflict, Gone):
            return 0.2  # read it again
        except HelperError as exc:
            log.error("reconciling %s %s/%s: %s", plural, namespace, name, exc.message)
        except Exception:
            log.exception("reconciling %s %s/%s", plural, namespace, name)
        attempts = self._attempts[key] = self._attempts.get(key, 0) + 1
        if attempts >= MAX_ATTEMPTS:
            self._attempts.pop(key, None)
            return None
        return min(60.0, 2.0 ** attempts) * (0.5 + random.random())

    # -- watches --------------------------------------------------------------------------------
    def _watch(self, plural: str, selector: str, unclaimed: bool) -> None:
        backoff = 1.0
        while not self.stop.is_set():
            try:
                # listed afresh after each watch: a resync every RESYNC_S whatever happened
                items, version = self.ctx.objects.list_all(plural, selector)
                for obj in items:
                    self.enqueue(self._key(plural, obj, unclaimed))
                backoff = 1.0
                for _kind, obj in self.ctx.objects.watch(plural, selector, version,
                                                         timeout_s=int(RESYNC_S)):
                    self.enqueue(self._key(plural, obj, unclaimed))
                    if self.stop.is_set():
                        break
            except Gone:
                continue  # the resource version is too old: list again
            except Exception as exc:  # noqa: BLE001 - API down, CRDs not installed yet: wait
                log.warning("watching %s (%s): %s; again in %.0f s", plural, selector, exc,
                            backoff)
                self.stop.wait(backoff)
                backoff = min(30.0, backoff * 2)

    @staticmethod
    def _key(plural: str, obj: dict[str, Any], unclaimed: bool) -> Key:
        md = obj.get("metadata") or {}
        return (plural, str(md.get("namespace")), str(md.get("name")), unclaimed)
