"""What every reconciler shares: the helper, the API, this process's own work, and the status
updates of an object (phases, conditions, the user who asked)."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubectl_cedana.contract import (
    CHECKPOINT_RESOURCE,
    MIGRATION_RESOURCE,
    NODE_LABEL,
    REQUESTED_BY_ANNOTATION,
    RESTORE_RESOURCE,
    Phase,
)
from sidecar.errors import HelperError
from sidecar.kube.objects import CedanaObjects
from sidecar.ops.context import Helper

log = logging.getLogger("sidecar.reconcile")

#: the plurals of the cedana.io resources, as the API paths name them
CHECKPOINTS = CHECKPOINT_RESOURCE.plural
RESTORES = RESTORE_RESOURCE.plural
MIGRATIONS = MIGRATION_RESOURCE.plural


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Ctx:
    helper: Helper
    objects: CedanaObjects
    #: uids of the objects this process is working on: one left Running by another process
    #: (a helper that died) is not among them
    mine: set[str] = field(default_factory=set)
    #: unexpected failures so far, by object uid (sidecar/reconcile/checkpoints.py)
    failures: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def node(self) -> str:
        return self.helper.config.node_name

    def take(self, uid: str) -> None:
        with self.lock:
            self.mine.add(uid)

    def drop(self, uid: str) -> None:
        with self.lock:
            self.mine.discard(uid)

    def working_on(self, uid: str) -> bool:
        with self.lock:
            return uid in self.mine

    def count_failure(self, uid: str) -> int:
        """One more unexpected failure of the object's operation; how many so far."""
        with self.lock:
            self.failures[uid] = self.failures.get(uid, 0) + 1
            return self.failures[uid]

    def forget_failures(self, uid: str) -> None:
        with self.lock:
            self.failures.pop(uid, None)


def meta(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj.get("metadata") or {})


def spec(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj.get("spec") or {})


def status(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj.get("status") or {})


def requested_by(obj: dict[str, Any]) -> str:
    return str((meta(obj).get("annotations") or {}).get(REQUESTED_BY_ANNOTATION, ""))


def node_label(obj: dict[str, Any]) -> str:
    return str((meta(obj).get("labels") or {}).get(NODE_LABEL, ""))


def describe(obj: dict[str, Any]) -> str:
    md = meta(obj)
    return f"{obj.get('kind', 'object')} {md.get('namespace')}/{md.get('name')}"


def condition(ok: bool, reason: str, message: str, generation: int) -> list[dict[str, Any]]:
    return [{"type": "Complete", "status": "True" if ok else "False", "reason": reason,
             "message": message[:1024], "lastTransitionTime": now(),
             "observedGeneration": generation}]


def running(ctx: Ctx, obj: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """The status of an object this helper starts on."""
    return {"phase": Phase.RUNNING, "node": ctx.node, "startedAt": now(),
            "requestedBy": requested_by(obj),
            "observedGeneration": meta(obj).get("generation", 1), **fields}


def succeeded(obj: dict[str, Any], message: str, **fields: Any) -> dict[str, Any]:
    return {"phase": Phase.SUCCEEDED, "completedAt": now(), "errorCode": None, "message": message,
            "conditions": condition(True, "Succeeded", message, meta(obj).get("generation", 1)),
            **fields}


def failed(obj: dict[str, Any], code: str, message: str, **fields: Any) -> dict[str, Any]:
    return {"phase": Phase.FAILED, "completedAt": now(), "errorCode": code, "message": message,
            "conditions": condition(False, code, message, meta(obj).get("generation", 1)),
            **fields}


#: at most this much of CRIU's log goes into an object's status (its end: the failure)
STATUS_LOG_BYTES = 8192


def failed_with(obj: dict[str, Any], exc: HelperError, **fields: Any) -> dict[str, Any]:
    """Failed with the helper's error; a CRIU failure also carries the end of CRIU's log
    (`criuLog`) and where the whole log is kept on the node (`criuLogPath`)."""
    tail = str(exc.extra.get("log_tail") or "")
    if tail:
        fields.setdefault("criuLog", tail[-STATUS_LOG_BYTES:])
    if exc.extra.get("log_path"):
        fields.setdefault("criuLogPath", str(exc.extra["log_path"]))
    return failed(obj, exc.code, exc.message, **fields)


def audit(action: str, obj: dict[str, Any], outcome: str, **extra: Any) -> None:
    """One log line per action on an object: who asked, what, where, and how it ended."""
    md = meta(obj)
    log.info("%s %s: %s", action, describe(obj), outcome,
             extra={"action": action, "user": requested_by(obj), "namespace": md.get("namespace"),
                    "object": md.get("name"), "uid": md.get("uid"), "outcome": outcome, **extra})
