"""Restore objects: restore a checkpoint once into an existing sleeping pod (spec.target) or
into a new placeholder pod this helper makes from the checkpointed pod's recorded spec
(spec.newPod), and report it in status."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kubectl_cedana import podspec
from kubectl_cedana.contract import (
    FINAL_PHASES,
    MADE_FOR_ANNOTATION,
    Code,
    Phase,
)
from sidecar.errors import (
    CheckpointNotFound,
    HelperError,
    InvalidRequest,
    KubernetesUnavailable,
    OperationInProgress,
    TargetIncompatible,
    TooManyRequests,
)
from sidecar.kube.objects import Conflict
from sidecar.ops import restore, transfer
from sidecar.ops.access import UNRESTRICTED
from sidecar.reconcile.checkpoints import RETRY_S, Retry, retry_after
from sidecar.reconcile.common import (
    CHECKPOINTS,
    MIGRATIONS,
    RESTORES,
    Ctx,
    audit,
    failed,
    failed_with,
    meta,
    requested_by,
    running,
    spec,
    status,
    succeeded,
)
from sidecar.storage import signing, store
from sidecar.storage.catalogue import Catalogue, RestoredRegistry

#: a new placeholder pod has this long to start its sleeping container
PLACEHOLDER_TIMEOUT_S = 180.0
#: container states that will not turn into "running" by waiting
HOPELESS = {"ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName", "ErrImagePull",
            "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
            "CrashLoopBackOff"}


def reconcile(ctx: Ctx, obj: dict[str, Any]) -> None:
    md, st = meta(obj), status(obj)
    if md.get("deletionTimestamp"):
        return
    phase = st.get("phase") or Phase.PENDING
    if phase in FINAL_PHASES:
        return
    if phase == Phase.RUNNING:
        if not ctx.working_on(str(md.get("uid"))):
            _recover(ctx, obj)
        return
    _take(ctx, obj)


def checkpoint_of(ctx: Ctx, obj: dict[str, Any]) -> tuple[str, str]:
    """(checkpoint id, the namespace it must have been taken in)."""
    md, sp = meta(obj), spec(obj)
    namespace = str(md["namespace"])
    name = sp.get("checkpointName")
    if not name:
        return str(sp.get("checkpointID") or ""), str(sp.get("checkpointNamespace") or namespace)
    checkpoint = ctx.objects.get(CHECKPOINTS, namespace, str(name))
    if checkpoint is None:
        raise CheckpointNotFound(f"no Checkpoint {name} in namespace {namespace}")
    st = status(checkpoint)
    if st.get("phase") in (None, Phase.PENDING, Phase.RUNNING):
        raise Retry(RETRY_S)  # restore it once it is taken
    if st.get("phase") != Phase.SUCCEEDED or not st.get("checkpointID"):
        raise CheckpointNotFound(f"Checkpoint {name} failed ({st.get('errorCode')}): "
                                 f"{st.get('message')}")
    return str(st["checkpointID"]), namespace


def _local_manifest(ctx: Ctx, checkpoint_id: str) -> store.CheckpointManifest:
    """The checkpoint's verified record, pulled from the checkpoint registry if it is not here."""
    config = ctx.helper.config
    transfer.ensure_local(config, checkpoint_id)
    entry = Catalogue(config.checkpoint_dir).get(checkpoint_id)
    return store.verify(Path(str(entry["path"])), signing.helper_key(config))


def wait_running(ctx: Ctx, namespace: str, name: str, containers: str | list[str]) -> None:
    """Until every one of the placeholder's `containers` runs (native sidecars included)."""
    wanted = {containers} if isinstance(containers, str) else set(containers)
    end = time.monotonic() + PLACEHOLDER_TIMEOUT_S
    why = "not scheduled yet"
    while time.monotonic() < end:
        pod = ctx.objects.get_pod(namespace, name)
        if pod is None:
            raise TargetIncompatible(f"placeholder pod {namespace}/{name} was deleted")
        st = pod.get("status") or {}
        if st.get("phase") in ("Failed", "Succeeded"):
            raise TargetIncompatible(f"placeholder pod {namespace}/{name} ended ({st['phase']})")
        running_now = set()
        for cs in (st.get("containerStatuses") or []) + (st.get("initContainerStatuses") or []):
            if cs.get("name") not in wanted:
                continue
            state = cs.get("state") or {}
            if "running" in state:
                running_now.add(cs.get("name"))
                continue
            waiting = state.get("waiting") or {}
            why = f"{cs.get('name')}: {waiting.get('reason') or 'waiting'}"
            if waiting.get("reason") in HOPELESS:
                raise TargetIncompatible(
                    f"placeholder pod {namespace}/{name} cannot start its sleeping container "
                    f"{why}: {waiting.get('message', '')}".rstrip(": "))
        if running_now == wanted:
            return
        time.sleep(0.5)
    raise TargetIncompatible(f"placeholder pod {namespace}/{name} did not run within "
                             f"{PLACEHOLDER_TIMEOUT_S:.0f} s ({why})")


def make_placeholder(ctx: Ctx, obj: dict[str, Any], manifest: store.CheckpointManifest,
                     name: str, node: str) -> None:
    """The new pod of spec.newPod (or a Migration), from the pod the checkpoint recorded."""
    md = meta(obj)
    config = ctx.helper.config
    recorded = manifest.source.get("pod_object")
    members = restore.pod_members(manifest)
    container = None if members else str(manifest.source.get("container") or "")
    # each container's program, for a restart of the placeholder (members pulled here first)
    commands = {}
    for member, member_id in members or [(str(container), manifest.checkpoint_id)]:
        if member_id != manifest.checkpoint_id:
            transfer.ensure_local(config, member_id)
        program = restore.program_of(config, member_id)
        if program:
            commands[member] = program
    if not recorded:
        raise InvalidRequest(
            f"checkpoint {manifest.checkpoint_id} records no pod spec to make a new pod from; "
            "restore it into an existing sleeping pod (spec.target)")
    try:
        body = podspec.build_placeholder_pod(
            recorded, container, name, node=node, checkpoint_id=manifest.checkpoint_id,
            namespace=str(md["namespace"]), annotations={MADE_FOR_ANNOTATION: str(md["uid"])},
            pause_image=config.placeholder_image, commands=commands)
    except podspec.PodSpecError as exc:
        raise InvalidRequest(str(exc)) from exc
    try:
        ctx.objects.create_pod(str(md["namespace"]), body)
    except Conflict:
        existing = ctx.objects.get_pod(str(md["namespace"]), name) or {}
        ours = ((existing.get("metadata") or {}).get("annotations") or {}).get(
            MADE_FOR_ANNOTATION) == md["uid"]
        if not ours:
            raise TargetIncompatible(f"pod {md['namespace']}/{name} already exists") from None
    wait_running(ctx, str(md["namespace"]), name,
                 [m for m, _ in members] if container is None else container)


def _placeholder_is_ours(ctx: Ctx, obj: dict[str, Any], name: str) -> bool:
    pod = ctx.objects.get_pod(str(meta(obj)["namespace"]), name) or {}
    return ((pod.get("metadata") or {}).get("annotations") or {}).get(MADE_FOR_ANNOTATION) == \
        meta(obj).get("uid")


def _for_its_migration(ctx: Ctx, obj: dict[str, Any], checkpoint_id: str, pod: str) -> bool:
    """Whether this Restore is the one a migration made for its own checkpoint into the pod it
    made: only that one may take a post-copy checkpoint's memory from the source node (once)."""
    md = meta(obj)
    owners = [o for o in md.get("ownerReferences") or [] if o.get("kind") == "Migration"]
    if len(owners) != 1:
        return False
    namespace = str(md["namespace"])
    migration = ctx.objects.get(MIGRATIONS, namespace, str(owners[0].get("name"))) or {}
    target = ctx.objects.get_pod(namespace, pod) or {}
    made_for = ((target.get("metadata") or {}).get("annotations") or {}).get(MADE_FOR_ANNOTATION)
    uid = meta(migration).get("uid") if migration else None
    return bool(uid) and uid == owners[0].get("uid") and made_for == uid \
        and status(migration).get("checkpointID") == checkpoint_id


def _take(ctx: Ctx, obj: dict[str, Any]) -> None:
    md, sp = meta(obj), spec(obj)
    namespace, uid = str(md["namespace"]), str(md["uid"])
    new_pod = sp.get("newPod") or {}
    target = sp.get("target") or {}
    pod_name = str(new_pod.get("name") or target.get("podName") or "")
    try:
        checkpoint_id, source_namespace = checkpoint_of(ctx, obj)
    except HelperError as exc:
        ctx.objects.patch_status(RESTORES, obj, failed_with(obj, exc, podName=pod_name))
        audit("restore", obj, exc.code)
        return
    if new_pod.get("node") and new_pod["node"] != ctx.node:
        return  # another node's helper makes and fills that pod
    obj = ctx.objects.patch_status(RESTORES, obj, running(
        ctx, obj, checkpointID=checkpoint_id, podName=pod_name,
        message=f"restoring checkpoint {checkpoint_id} into {pod_name}"), precondition=True)
    ctx.take(uid)
    made = False
    try:
        manifest = _local_manifest(ctx, checkpoint_id)
        # a whole-pod checkpoint restores all its containers, unless the target names one
        members = [] if target.get("container") else restore.pod_members(manifest)
        container = ",".join(m for m, _ in members) if members else \
            str(target.get("container") or manifest.source.get("container") or "")
        if new_pod:
            made = True
            make_placeholder(ctx, obj, manifest, pod_name, ctx.node)
        if members:
            answer = restore.restore_pod(ctx.helper, namespace=namespace, pod=pod_name,
                                         members=members, requested_by=requested_by(obj),
                                         access=UNRESTRICTED, source_namespace=source_namespace)
        else:
            answer = restore.restore(ctx.helper, namespace=namespace, pod=pod_name,
                                     container=container, root=None, checkpoint_path=None,
                                     checkpoint_id=checkpoint_id,
                                     requested_by=requested_by(obj),
                                     # rights were checked at admission; the signed manifest
                                     # must name the namespace they were checked in
                                     access=UNRESTRICTED, source_namespace=source_namespace,
                                     post_copy=_for_its_migration(ctx, obj, checkpoint_id,
                                                                  pod_name))
    except OperationInProgress:
        ctx.objects.patch_status(RESTORES, obj, {
            "phase": Phase.PENDING, "message": "waiting for another operation on the pod to end"})
        raise Retry(RETRY_S) from None
    except TooManyRequests as exc:  # the node is busy: nothing was done, the placeholder stays
        ctx.objects.patch_status(RESTORES, obj, {"phase": Phase.PENDING,
                                                 "message": f"waiting: {exc}"})
        raise Retry(retry_after(exc)) from None
    except HelperError as exc:
        if made and _placeholder_is_ours(ctx, obj, pod_name):
            ctx.objects.delete_pod(namespace, pod_name)  # a sleeping pod of no use
        ctx.objects.patch_status(RESTORES, obj, failed_with(obj, exc))
        audit("restore", obj, exc.code, checkpoint_id=checkpoint_id)
        return
    except Exception as exc:  # noqa: BLE001 - the API: the placeholder could not be made
        if made and _placeholder_is_ours(ctx, obj, pod_name):
            ctx.objects.delete_pod(namespace, pod_name)
        error = KubernetesUnavailable(f"restore into {pod_name}: {exc}")
        ctx.objects.patch_status(RESTORES, obj, failed_with(obj, error))
        audit("restore", obj, error.code, checkpoint_id=checkpoint_id)
        return
    finally:
        ctx.drop(uid)
    ctx.objects.patch_status(RESTORES, obj, succeeded(
        obj, f"checkpoint {checkpoint_id} restored into {pod_name}/{container} on node "
             f"{ctx.node}", pid=answer.get("pid"), durationMs=answer.get("duration_ms"),
        container=container, containerID=answer.get("container_id"),
        **({"containers": [{"name": a["container"], "checkpointID": a["checkpoint_id"],
                            "containerID": a["container_id"], "pid": a["pid"]}
                           for a in answer["containers"]]} if members else {})))
    audit("restore", obj, "succeeded", checkpoint_id=checkpoint_id)


def _recover(ctx: Ctx, obj: dict[str, Any]) -> None:
    """Left Running by a helper that died: done if the pod holds a live restored tree of that
    checkpoint, else Failed (a placeholder this Restore made is removed)."""
    md, st = meta(obj), status(obj)
    namespace, pod_name = str(md["namespace"]), str(st.get("podName") or "")
    checkpoint_id = str(st.get("checkpointID") or "")
    pod = ctx.objects.get_pod(namespace, pod_name) if pod_name else None
    registry = RestoredRegistry(ctx.helper.config.checkpoint_dir, restore.restore_is_live)
    for cs in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        container_id = str(cs.get("containerID") or "").partition("://")[2]
        record = registry.live_restore(container_id) if container_id else None
        if record and record.get("checkpoint_id") == checkpoint_id:
            ctx.objects.patch_status(RESTORES, obj, succeeded(
                obj, f"checkpoint {checkpoint_id} was restored into {pod_name} when the node "
                     "helper restarted", pid=record.get("pid"), container=cs.get("name")))
            audit("restore", obj, "succeeded", checkpoint_id=checkpoint_id, recovered=True)
            return
    if spec(obj).get("newPod") and _placeholder_is_ours(ctx, obj, pod_name):
        ctx.objects.delete_pod(namespace, pod_name)
    ctx.objects.patch_status(RESTORES, obj, failed(
        obj, Code.HELPER_RESTARTED,
        "the node helper restarted during the restore: nothing was restored (create a new "
        "Restore)"))
    audit("restore", obj, Code.HELPER_RESTARTED)
