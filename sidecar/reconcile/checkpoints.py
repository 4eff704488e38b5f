"""Checkpoint objects: take the checkpoint once, report it in status, remove its data when the
object is deleted (finalizer)."""
from __future__ import annotations

import uuid
from typing import Any

from kubectl_cedana import podspec
from kubectl_cedana.contract import (
    CHECKPOINT_DATA_FINALIZER,
    CHECKPOINT_ID_KEY,
    FINAL_PHASES,
    Code,
    Phase,
)
from sidecar.errors import (
    CheckpointNotFound,
    ContainerNotFound,
    HelperError,
    InvalidRequest,
    OperationInProgress,
    TooManyRequests,
)
from sidecar.kube.objects import Conflict, Gone
from sidecar.ops import catalogue, checkpoint, kubelet_archive, preflight
from sidecar.reconcile.common import (
    CHECKPOINTS,
    Ctx,
    audit,
    describe,
    failed,
    failed_with,
    log,
    meta,
    requested_by,
    running,
    spec,
    status,
    succeeded,
)
from sidecar.storage.catalogue import Catalogue

#: an operation on the same container is under way: look again after this long
RETRY_S = 2.0


def retry_after(exc: HelperError) -> float:
    """When to try again after a limit's refusal (its Retry-After), at least RETRY_S."""
    wait = exc.extra.get("retry_after_s")
    return max(RETRY_S, float(wait)) if isinstance(wait, (int, float)) else RETRY_S


class Retry(Exception):
    """Come back to this object after `after` seconds."""

    def __init__(self, after: float) -> None:
        super().__init__(f"retry in {after} s")
        self.after = after


def containers_of(ctx: Ctx, namespace: str, pod_name: str, wanted: str) -> list[str]:
    """The container a request names, else every container of the pod (its native sidecars
    and containers: a whole-pod checkpoint, or the pod's only container)."""
    if wanted:
        return [wanted]
    pod = ctx.objects.get_pod(namespace, pod_name)
    if pod is None:
        raise ContainerNotFound(f"no pod {namespace}/{pod_name}")
    names = podspec.pod_containers(pod)
    if not names:
        raise InvalidRequest(f"pod {namespace}/{pod_name} has no containers")
    return names


def reconcile(ctx: Ctx, obj: dict[str, Any]) -> None:
    md, st = meta(obj), status(obj)
    if md.get("deletionTimestamp"):
        _remove_data(ctx, obj)
        return
    phase = st.get("phase") or Phase.PENDING
    if phase in FINAL_PHASES:
        return
    if phase == Phase.RUNNING:
        if not ctx.working_on(str(md.get("uid"))):
            _recover(ctx, obj)
        return
    _take(ctx, obj)


def _take(ctx: Ctx, obj: dict[str, Any]) -> None:
    md, sp = meta(obj), spec(obj)
    namespace, pod = str(md["namespace"]), str(sp.get("podName", ""))
    uid = str(md["uid"])
    archive = str(sp.get("kubeletArchive") or "")
    try:
        # an archive names its own container (its spec.dump); the pod may be gone
        names = [str(sp.get("container") or "")] if archive else \
            containers_of(ctx, namespace, pod, str(sp.get("container") or ""))
    except HelperError as exc:
        ctx.objects.patch_status(CHECKPOINTS, obj, failed_with(obj, exc))
        audit("checkpoint", obj, exc.code)
        return
    if sp.get("preflight"):
        _preflight(ctx, obj, names)
        return
    whole_pod = len(names) > 1
    container = ",".join(names)
    if whole_pod and sp.get("holdConnections"):
        refused = InvalidRequest("holdConnections takes one container: set spec.container")
        ctx.objects.patch_status(CHECKPOINTS, obj, failed_with(obj, refused))
        audit("checkpoint", obj, refused.code)
        return
    finalizers = list(md.get("finalizers") or [])
    if CHECKPOINT_DATA_FINALIZER not in finalizers:
        obj = ctx.objects.set_finalizers(CHECKPOINTS, obj,
                                         [*finalizers, CHECKPOINT_DATA_FINALIZER])
    checkpoint_id = str(uuid.uuid4())
    # the precondition makes the start happen once, even when two events race
    obj = ctx.objects.patch_status(CHECKPOINTS, obj, running(
        ctx, obj, checkpointID=checkpoint_id, container=container,
        message=f"checkpointing {pod}/{container or '?'} on node {ctx.node}"), precondition=True)
    ctx.take(uid)
    try:
        if archive:
            answer = kubelet_archive.import_checkpoint(
                ctx.helper, namespace=namespace, pod=pod, name=archive,
                checkpoint_id=checkpoint_id, storage=sp.get("storage") or None,
                compression=sp.get("compression") or None,
                pod_object=ctx.objects.get_pod(namespace, pod))
            container = str(answer.get("container") or container)
        elif whole_pod:
            answer = checkpoint.checkpoint_pod(
                ctx.helper, namespace=namespace, pod=pod, containers=names,
                leave_running=bool(sp.get("leaveRunning", True)),
                with_rootfs=bool(sp.get("withRootfs", True)), storage=sp.get("storage") or None,
                compression=sp.get("compression") or None, checkpoint_id=checkpoint_id,
                requested_by=requested_by(obj))
        else:
            answer = checkpoint.checkpoint(
                ctx.helper, namespace=namespace, pod=pod, container=container, root=None,
                checkpoint_path=None, leave_running=bool(sp.get("leaveRunning", True)),
                with_rootfs=bool(sp.get("withRootfs", True)), storage=sp.get("storage") or None,
                compression=sp.get("compression") or None, checkpoint_id=checkpoint_id,
                requested_by=requested_by(obj),
                hold_connections=bool(sp.get("holdConnections", False)))
    except OperationInProgress:
        # another operation holds the container: wait for it, nothing was done
        ctx.objects.patch_status(CHECKPOINTS, obj, {
            "phase": Phase.PENDING, "checkpointID": None,
            "message": "waiting for another operation on the container to end"})
        raise Retry(RETRY_S) from None
    except TooManyRequests as exc:
        # the node (or the namespace) runs as many operations as it may: nothing was done
        ctx.objects.patch_status(CHECKPOINTS, obj, {
            "phase": Phase.PENDING, "checkpointID": None, "message": f"waiting: {exc}"})
        raise Retry(retry_after(exc)) from None
    except HelperError as exc:
        kept = exc.extra.get("checkpoint_id") == checkpoint_id
        ctx.objects.patch_status(CHECKPOINTS, obj, failed_with(
            obj, exc, checkpointID=checkpoint_id if kept else None))
        audit("checkpoint", obj, exc.code, checkpoint_id=checkpoint_id)
        ctx.forget_failures(uid)
        return
    except Exception as exc:  # noqa: BLE001 - a defect or a passing fault: said, then retried
        # the dump thawed the container and removed its partial files on the way out; left
        # Running, the object would read as "the helper restarted" on the next pass
        _unexpected(ctx, obj, exc)
        return
    finally:
        ctx.drop(uid)
    ctx.forget_failures(uid)
    remote = answer.get("remote") or {}
    members = [{"name": m["name"], "checkpointID": m["checkpoint_id"],
                "containerID": m["container_id"], "sizeBytes": m["size_bytes"],
                **({"imageRef": m["remote"]["reference"]} if m.get("remote") else {})}
               for m in answer.get("containers") or []]
    what = f"pod {pod} ({container}) in one freeze" if whole_pod else f"{pod}/{container}"
    taken = f"imported from the kubelet's archive {archive}" if archive else "taken"
    ctx.objects.patch_status(CHECKPOINTS, obj, succeeded(
        obj, f"checkpoint {checkpoint_id} of {what} {taken} on node {ctx.node}",
        **({"container": container} if archive else {}),
        sizeBytes=answer.get("size_bytes"), durationMs=answer.get("duration_ms"),
        storage=answer.get("storage"), imageRef=remote.get("reference"),
        compression=remote.get("compression"), containerID=answer.get("container_id"),
        **({"containers": members} if members else {})))
    try:
        latest = ctx.objects.get(CHECKPOINTS, namespace, md["name"]) or obj
        ctx.objects.patch_meta(CHECKPOINTS, latest,
                               {"labels": {CHECKPOINT_ID_KEY: checkpoint_id}})
    except (Conflict, Gone):
        pass  # found by status.checkpointID all the same
    audit("checkpoint", obj, "succeeded", checkpoint_id=checkpoint_id)


def _preflight(ctx: Ctx, obj: dict[str, Any], names: list[str]) -> None:
    """Whether the pod's containers can be checkpointed, and why not: nothing is frozen,
    dumped or kept (sidecar/ops/preflight.py)."""
    md, sp = meta(obj), spec(obj)
    namespace, pod = str(md["namespace"]), str(sp.get("podName", ""))
    findings = preflight.preflight(ctx.helper, namespace=namespace, pod=pod, containers=names,
                                   pod_object=ctx.objects.get_pod(namespace, pod))
    blockers = [f for f in findings if not f.ok]
    message = (f"pod {pod} ({', '.join(names)}) can be checkpointed" if not blockers else
               f"pod {pod} cannot be checkpointed: "
               + "; ".join(f"{f.container}: {f.message}" for f in blockers))
    ctx.objects.patch_status(CHECKPOINTS, obj, succeeded(
        obj, message, node=ctx.node, container=",".join(names),
        checkpointable=not blockers, findings=[f.to_dict() for f in findings]))
    audit("preflight", obj, "checkpointable" if not blockers else "not checkpointable",
          blockers=[f.check for f in blockers])


#: unexpected errors (not the helper's own) on one object before it is Failed
UNEXPECTED_ATTEMPTS = 3


def _unexpected(ctx: Ctx, obj: dict[str, Any], exc: Exception) -> None:
    """An error that is not one of the helper's (a defect, or a fault of the moment): logged
    with its traceback, the object back to Pending to be tried again, and Failed with
    internal_error and the error's own words after UNEXPECTED_ATTEMPTS."""
    uid = str(meta(obj).get("uid"))
    what = f"{type(exc).__name__}: {exc}"
    log.error("checkpoint %s: unexpected error: %s", describe(obj), what, exc_info=exc)
    attempts = ctx.count_failure(uid)
    if attempts < UNEXPECTED_ATTEMPTS:
        ctx.objects.patch_status(CHECKPOINTS, obj, {
            "phase": Phase.PENDING, "checkpointID": None,
            "message": f"trying again after an unexpected error in the node helper: {what}"})
        raise Retry(RETRY_S * attempts) from None
    ctx.forget_failures(uid)
    ctx.objects.patch_status(CHECKPOINTS, obj, failed(
        obj, Code.INTERNAL_ERROR, f"the node helper failed {attempts} times: {what} (nothing "
        "was kept, and the container was left running as it was; the helper's log has the "
        "traceback)", checkpointID=None))
    audit("checkpoint", obj, Code.INTERNAL_ERROR)


def _recover(ctx: Ctx, obj: dict[str, Any]) -> None:
    """Left Running by a helper that died: complete if its checkpoint is listed, else Failed.
    (A starting helper has already thawed what the dead one froze and removed its partial
    files: sidecar/ops/info.py.)"""
    checkpoint_id = str(status(obj).get("checkpointID") or "")
    entry: dict[str, Any] | None = None
    if checkpoint_id:
        try:
            entry = Catalogue(ctx.helper.config.checkpoint_dir).get(checkpoint_id)
        except CheckpointNotFound:
            entry = None
    if entry and entry.get("status") == "complete":
        # a whole pod's members are listed together (all or none)
        members = [{"name": e.get("container"), "checkpointID": e.get("id"),
                    "containerID": e.get("container_id"), "sizeBytes": e.get("size_bytes")}
                   for e in Catalogue(ctx.helper.config.checkpoint_dir).list()
                   if entry.get("pod_checkpoint") and e.get("pod_checkpoint") == checkpoint_id]
        ctx.objects.patch_status(CHECKPOINTS, obj, succeeded(
            obj, f"checkpoint {checkpoint_id} was complete when the node helper restarted",
            sizeBytes=sum(int(m["sizeBytes"] or 0) for m in members) if members
            else entry.get("size_bytes"), storage=entry.get("storage") or "local",
            **({"containers": members} if members else {})))
        audit("checkpoint", obj, "succeeded", checkpoint_id=checkpoint_id, recovered=True)
        return
    ctx.objects.patch_status(CHECKPOINTS, obj, failed(
        obj, Code.HELPER_RESTARTED,
        "the node helper restarted during the checkpoint: nothing was kept, and the container "
        "was left running as it was (create a new Checkpoint)", checkpointID=None))
    audit("checkpoint", obj, Code.HELPER_RESTARTED)


def _remove_data(ctx: Ctx, obj: dict[str, Any]) -> None:
    finalizers = list(meta(obj).get("finalizers") or [])
    if CHECKPOINT_DATA_FINALIZER not in finalizers:
        return
    checkpoint_id = str(status(obj).get("checkpointID") or "")
    if checkpoint_id and not ctx.working_on(str(meta(obj).get("uid"))):
        members = [str(m.get("checkpointID") or "") for m in status(obj).get("containers") or []]
        for one in [checkpoint_id, *[m for m in members if m and m != checkpoint_id]]:
            try:
                catalogue.delete(ctx.helper.config, one)
            except CheckpointNotFound:
                pass  # never written, or already removed
    elif checkpoint_id:
        raise Retry(RETRY_S)  # deleted while the checkpoint runs: remove it once done
    ctx.objects.set_finalizers(CHECKPOINTS, obj,
                               [f for f in finalizers if f != CHECKPOINT_DATA_FINALIZER])
    audit("delete-checkpoint", obj, "removed", checkpoint_id=checkpoint_id)
