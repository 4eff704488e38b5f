"""The node helpers, as seen through the API: they reconcile the cedana.io objects the fake
API server stores (plugin_fakeapi.py) the way docs/api.md#resources says the real ones do.

Each new object is taken in its own thread: status Running with its node (a Checkpoint also
gets its finalizer), then Succeeded with what the real helper reports, or Failed with an
error code and message when a test asks for that. A deleted Checkpoint loses its data and
then its finalizer (unless a test keeps the finalizers, as a helper that is not running).
"""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from kubectl_cedana.contract import (
    CHECKPOINT_DATA_FINALIZER,
    CHECKPOINT_ID_LABEL,
    REQUESTED_BY_ANNOTATION,
    Phase,
)
from tests.unit.plugin_fakeapi import FakeCluster, make_pod, now

Key = tuple[str, str, str]  # (plural, namespace, name)


@dataclass
class FakeHelpers:
    cluster: FakeCluster
    #: plural -> (errorCode, message): objects of that kind end Failed
    failures: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: plurals no helper takes (they stay Pending, without status)
    ignored: set[str] = field(default_factory=set)
    #: no helper runs to delete data: finalizers stay
    keep_finalizers: bool = False
    step_s: float = 0.02
    #: what the helpers did, in order: (plural, name, what)
    log: list[tuple[str, str, str]] = field(default_factory=list)
    deleted_data: list[str] = field(default_factory=list)  # checkpoint ids
    #: what a preflight answers (Checkpoint spec.preflight)
    preflight_findings: list[dict[str, Any]] = field(default_factory=lambda: [
        {"container": "main", "check": "io_uring", "ok": True, "message": "none"}])

    def __post_init__(self) -> None:
        self.cluster.on_created.append(self._created)
        self.cluster.on_deleted.append(self._deleted)

    # -- hooks (called by the API server with its lock held: the work goes to a thread) ------
    def _created(self, plural: str, key: Key) -> None:
        if plural not in self.ignored:
            threading.Thread(target=self._reconcile, args=(key,), daemon=True).start()

    def _deleted(self, plural: str, key: Key) -> None:
        if plural == "checkpoints" and not self.keep_finalizers:
            threading.Thread(target=self._finalize, args=(key,), daemon=True).start()

    # -- reconciling ------------------------------------------------------------------------
    def _reconcile(self, key: Key) -> None:
        plural, namespace, name = key
        obj = self.cluster.get(*key)
        node = self._node(plural, obj)

        def running(o: dict[str, Any]) -> None:
            o["status"] = {"phase": Phase.RUNNING, "node": node, "startedAt": now(),
                           "requestedBy": (o["metadata"].get("annotations") or {})
                           .get(REQUESTED_BY_ANNOTATION, ""),
                           "conditions": [{"type": "Taken", "status": "True",
                                           "message": f"taken by the helper on {node}"}]}
            if plural == "checkpoints" and not o["spec"].get("preflight"):  # holds no data
                held = o["metadata"].setdefault("finalizers", [])
                if CHECKPOINT_DATA_FINALIZER not in held:  # as the helper: once
                    held.append(CHECKPOINT_DATA_FINALIZER)

        time.sleep(self.step_s)
        self.cluster.update(*key, running)
        self.log.append((plural, name, "running"))
        time.sleep(self.step_s)
        failure = self.failures.get(plural)
        try:
            result = {"checkpoints": self._checkpoint, "restores": self._restore,
                      "migrations": self._migration}[plural](namespace, obj)
        except LookupError as exc:
            failure = failure or (exc.args[0], exc.args[1])
            result = {}

        def finished(o: dict[str, Any]) -> None:
            o["status"].update(completedAt=now(), durationMs=result.get("durationMs", 5))
            if failure:
                o["status"].update(phase=Phase.FAILED, errorCode=failure[0],
                                   message=failure[1])
                return
            o["status"].update(result, phase=Phase.SUCCEEDED)
            if plural == "checkpoints" and "checkpointID" in result:
                o["metadata"].setdefault("labels", {})[CHECKPOINT_ID_LABEL] = \
                    result["checkpointID"]

        self.cluster.update(*key, finished)
        self.log.append((plural, name, "failed" if failure else "succeeded"))

    def _node(self, plural: str, obj: dict[str, Any]) -> str:
        """The node whose helper acts, from the API (never from the plugin's label)."""
        spec, namespace = obj["spec"], obj["metadata"]["namespace"]
        if plural == "restores":
            if "target" in spec:
                pod = self.cluster.pods.get((namespace, spec["target"]["podName"]))
                return str(pod["spec"]["nodeName"]) if pod else ""
            if spec["newPod"].get("node"):
                return str(spec["newPod"]["node"])
            source = self._checkpoint_of(namespace, spec)
            return str((source or {}).get("status", {}).get("node") or "")
        pod = self.cluster.pods.get((namespace, spec["podName"]))
        return str(pod["spec"]["nodeName"]) if pod else ""

    def _checkpoint_of(self, namespace: str, spec: dict[str, Any]) -> dict[str, Any] | None:
        if "checkpointName" in spec:
            try:
                return self.cluster.get("checkpoints", namespace, spec["checkpointName"])
            except KeyError:
                return None
        where = spec.get("checkpointNamespace") or namespace
        return next((o for o in self.cluster.objects_of("checkpoints")
                     if o["metadata"]["namespace"] == where
                     and (o.get("status") or {}).get("checkpointID") == spec["checkpointID"]),
                    None)

    def _pod(self, namespace: str, name: str) -> dict[str, Any]:
        pod = self.cluster.pods.get((namespace, name))
        if pod is None:
            raise LookupError("container_not_found", f"no pod {namespace}/{name} on this node")
        return pod

    def _checkpoint(self, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        spec = obj["spec"]
        pod = self._pod(namespace, spec["podName"])
        if spec.get("preflight"):
            self.log.append(("checkpoints", obj["metadata"]["name"], "preflight"))
            findings = [dict(f) for f in self.preflight_findings]
            return {"checkpointable": all(f["ok"] for f in findings), "findings": findings}
        container = spec.get("container") or pod["spec"]["containers"][0]["name"]
        statuses = pod["status"]["containerStatuses"] + \
            pod["status"].get("initContainerStatuses", [])
        cstatus = next(s for s in statuses if s["name"] == container)
        return {"checkpointID": str(uuid.uuid4()), "container": container,
                "containerID": cstatus["containerID"].split("://")[1], "sizeBytes": 123456,
                "storage": spec.get("storage") or "local",
                "compression": spec.get("compression") or "none", "durationMs": 210}

    def _restore(self, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        spec = obj["spec"]
        source = self._checkpoint_of(namespace, spec)
        if source is None or (source.get("status") or {}).get("phase") != Phase.SUCCEEDED:
            raise LookupError("checkpoint_not_found",
                              f"no checkpoint {spec.get('checkpointName') or spec['checkpointID']}")
        container = (spec.get("target") or {}).get("container") or source["status"]["container"]
        if "newPod" in spec:  # the helper makes the placeholder, from the recorded spec
            pod_name = spec["newPod"]["name"]
            self.cluster.add_pod(make_pod(pod_name, namespace, node=self._node("restores", obj),
                                          containers=(container,)))
        else:
            pod_name = spec["target"]["podName"]
        return {"checkpointID": source["status"]["checkpointID"], "podName": pod_name,
                "container": container, "pid": 4242, "durationMs": 350}

    def _migration(self, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        spec = obj["spec"]
        pod = self._pod(namespace, spec["podName"])
        node = str(pod["spec"]["nodeName"])
        new_pod = spec.get("newPodName") or f"{spec['podName']}-migrated"
        if spec.get("deleteSource"):
            self.cluster.pods.pop((namespace, spec["podName"]), None)
        target = spec.get("targetNode") or node
        return {"targetNode": target, "podName": new_pod,
                "restoreName": f"{obj['metadata']['name']}-restore",
                "checkpointID": str(uuid.uuid4()), "container": spec.get("container") or "",
                "pauseMs": 480, "checkpointMs": 210, "restoreMs": 270, "durationMs": 900,
                # to another node, as the helpers report it (sidecar/reconcile/migrations.py)
                **({"transfer": "direct", "transferMs": 12} if target != node else {}),
                # post-copy, when asked (the helper refuses it to the same node)
                **({"postCopy": True, "memoryMs": 2600} if spec.get("lazy") else {})}

    # -- deleting ---------------------------------------------------------------------------
    def _finalize(self, key: Key) -> None:
        time.sleep(self.step_s)
        ident = ""
        try:
            ident = str((self.cluster.get(*key).get("status") or {}).get("checkpointID") or "")
        except KeyError:
            return
        self.deleted_data.append(ident)

        def release(o: dict[str, Any]) -> None:
            o["metadata"]["finalizers"] = [f for f in o["metadata"].get("finalizers") or []
                                           if f != CHECKPOINT_DATA_FINALIZER]

        self.cluster.update(*key, release)
        self.log.append((key[0], key[2], "finalized"))
