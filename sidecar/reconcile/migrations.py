"""Migration objects, run by the helper of the source pod's node: a placeholder on the target
node (made from the running source, before anything stops), then the pause: checkpoint, and
restore into the placeholder (here, or through a Restore object for the target node's helper,
the checkpoint sent straight to it, or through the checkpoint registry when that fails; the
source frozen until the restored process runs there); the source deleted when asked."""
from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from kubectl_cedana import podspec
from kubectl_cedana.contract import (
    FINAL_PHASES,
    MADE_FOR_ANNOTATION,
    MIGRATION_ANNOTATION,
    NODE_LABEL,
    POD_DELETION_COST_ANNOTATION,
    REQUESTED_BY_ANNOTATION,
    Code,
    Phase,
)
from sidecar.errors import (
    ContainerNotFound,
    DumpFailed,
    HelperError,
    InvalidRequest,
    KubernetesUnavailable,
    OperationInProgress,
    RestoreFailed,
    TooManyRequests,
)
from sidecar.kube.objects import Conflict
from sidecar.ops import checkpoint, lazy, peer, restore
from sidecar.ops.access import UNRESTRICTED
from sidecar.ops.containers import containers_of as node_containers
from sidecar.ops.containers import programs_of
from sidecar.reconcile.checkpoints import RETRY_S, Retry, containers_of, retry_after
from sidecar.reconcile.common import (
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
from sidecar.reconcile.restores import wait_running

log = logging.getLogger(__name__)

#: the target node's helper has this long to restore (it may first pull the checkpoint)
RESTORE_TIMEOUT_S = 900.0
#: how often the Restore is looked at in its first seconds
RESTORE_POLL_S = 0.02


def reconcile(ctx: Ctx, obj: dict[str, Any]) -> None:
    md, st = meta(obj), status(obj)
    if md.get("deletionTimestamp"):
        return
    phase = st.get("phase") or Phase.PENDING
    if phase in FINAL_PHASES:
        return
    if phase == Phase.RUNNING:
        if not ctx.working_on(str(md.get("uid"))):
            _placeholder_gone(ctx, obj)
            ctx.objects.patch_status(MIGRATIONS, obj, failed(
                obj, Code.HELPER_RESTARTED,
                "the node helper restarted during the migration: the new pod was removed; the "
                "source pod goes on unless the migration had already stopped it (deleteSource, "
                "once the restored process ran)"))
            audit("migrate", obj, Code.HELPER_RESTARTED)
        return
    _take(ctx, obj)


#: post-copy: how long a failed migration waits for its new pod to be gone before the source
#: goes on (the pod's processes may have run on memory that then stopped arriving)
GONE_WAIT_S = 30.0


def _placeholder_gone(ctx: Ctx, obj: dict[str, Any], wait: bool = False) -> None:
    """The new pod, if this migration made it, deleted; `wait`: at once (a second's grace)
    and until the kubelet has stopped its containers (at most GONE_WAIT_S)."""
    name = str(status(obj).get("podName") or "")
    namespace = str(meta(obj)["namespace"])
    pod = ctx.objects.get_pod(namespace, name) if name else None
    annotations = ((pod or {}).get("metadata") or {}).get("annotations") or {}
    if pod is None or annotations.get(MADE_FOR_ANNOTATION) != meta(obj).get("uid"):
        return
    ctx.objects.delete_pod(namespace, name, grace_period_s=1 if wait else None)
    end = time.monotonic() + GONE_WAIT_S
    uid = meta(pod).get("uid")
    while wait and time.monotonic() < end:
        current = ctx.objects.get_pod(namespace, name)
        if current is None or meta(current).get("uid") != uid:
            return
        time.sleep(0.2)
    if wait:
        log.warning("pod %s/%s of migration %s is not gone after %.0f s", namespace, name,
                    meta(obj).get("name"), GONE_WAIT_S)


def _new_pod_name(pod: str, wanted: str) -> str:
    suffix = "-migrated"
    return wanted or pod[:253 - len(suffix)] + suffix


def _take(ctx: Ctx, obj: dict[str, Any]) -> None:
    md, sp = meta(obj), spec(obj)
    namespace, uid, pod = str(md["namespace"]), str(md["uid"]), str(sp.get("podName") or "")
    config = ctx.helper.config
    target_node = str(sp.get("targetNode") or ctx.node)
    new_pod = _new_pod_name(pod, str(sp.get("newPodName") or ""))
    try:
        names = containers_of(ctx, namespace, pod, str(sp.get("container") or ""))
        container = ",".join(names)
        source = ctx.objects.get_pod(namespace, pod)
        if source is None or (source.get("spec") or {}).get("nodeName") != ctx.node:
            raise ContainerNotFound(f"pod {namespace}/{pod} does not run on node {ctx.node}")
        refusal = podspec.take_place_refusal(source) if sp.get("deleteSource") else None
        if refusal:
            raise InvalidRequest(refusal, fields=["spec.deleteSource"])
        # straight to the target's helper when both take part (ops/peer.py), else (or when
        # that fails) through the checkpoint registry
        target_peer = peer.peer_of(ctx.helper, target_node) if target_node != ctx.node \
            else None
        if target_node != ctx.node and target_peer is None and not config.remote_repository:
            raise InvalidRequest(
                f"moving to node {target_node} needs its helper to receive checkpoints "
                f"(cedana-helper serve --peer-port, as kubectl cedana install sets it) or a "
                f"checkpoint repository, and the helper of node {ctx.node} has neither "
                "(kubectl cedana install --checkpoint-repository)")
        post_copy = _post_copy(ctx, sp, namespace, pod, names, target_node, target_peer)
    except HelperError as exc:
        ctx.objects.patch_status(MIGRATIONS, obj, failed_with(obj, exc))
        audit("migrate", obj, exc.code)
        return
    obj = ctx.objects.patch_status(MIGRATIONS, obj, running(
        ctx, obj, targetNode=target_node, podName=new_pod, container=container,
        message=f"making pod {new_pod} on node {target_node}"), precondition=True)
    ctx.take(uid)
    try:
        _migrate(ctx, obj, source, names, new_pod, target_node, target_peer, post_copy)
    except OperationInProgress:
        _placeholder_gone(ctx, obj)
        ctx.objects.patch_status(MIGRATIONS, obj, {
            "phase": Phase.PENDING, "message": "waiting for another operation on the pod to end"})
        raise Retry(RETRY_S) from None
    except TooManyRequests as exc:  # refused before the dump: nothing was done
        _placeholder_gone(ctx, obj)
        ctx.objects.patch_status(MIGRATIONS, obj, {"phase": Phase.PENDING,
                                                   "message": f"waiting: {exc}"})
        raise Retry(retry_after(exc)) from None
    except HelperError as exc:
        _placeholder_gone(ctx, obj)
        ctx.objects.patch_status(MIGRATIONS, obj, failed_with(obj, exc))
        audit("migrate", obj, exc.code)
    except Exception as exc:  # noqa: BLE001 - the API: nothing more can be done here
        _placeholder_gone(ctx, obj)
        error = KubernetesUnavailable(f"migration of {namespace}/{pod}: {exc}")
        ctx.objects.patch_status(MIGRATIONS, obj, failed_with(obj, error))
        audit("migrate", obj, error.code)
    finally:
        ctx.drop(uid)


def _post_copy(ctx: Ctx, sp: dict[str, Any], namespace: str, pod: str, names: list[str],
               target_node: str, target_peer: tuple[str, int] | None) -> bool:
    """Whether the migration goes post-copy (ops/lazy.py): when spec.lazy asks (InvalidRequest
    when it cannot be), or, when spec.lazy is not given, for a container holding at least the
    helper's --post-copy-above of memory (and it can be)."""
    wanted = sp.get("lazy")
    if wanted is False:
        return False
    why_not = ("it moves to another node only (spec.targetNode): on the same node the "
               "restore reads the memory from the local disk" if target_node == ctx.node else
               "a whole pod moves stop-and-copy (name one container)" if len(names) > 1 else
               f"the helper of node {target_node} cannot be reached on the peer port "
               "(cedana-helper serve --peer-port)" if target_peer is None else "")
    if wanted:
        if why_not:
            raise InvalidRequest(f"post-copy (spec.lazy) cannot be done: {why_not}",
                                 fields=["spec.lazy"])
        return True
    threshold = ctx.helper.config.post_copy_above_bytes
    return not why_not and threshold > 0 and \
        _memory_of(ctx, namespace, pod, names[0]) >= threshold


def _memory_of(ctx: Ctx, namespace: str, pod: str, name: str) -> int:
    """The resident memory of a container's processes (0 when it cannot be read)."""
    try:
        top = psutil.Process(node_containers(ctx.helper, None).find(namespace, pod, name).pid)
        return sum(p.memory_info().rss for p in [top, *top.children(recursive=True)])
    except (HelperError, psutil.Error):
        return 0


def _migrate(ctx: Ctx, obj: dict[str, Any], source: dict[str, Any], names: list[str],
             new_pod: str, target_node: str, target_peer: tuple[str, int] | None,
             post_copy: bool = False) -> None:
    """Move one container, or a whole pod (several `names`: one freeze, every container).
    `post_copy`: one container to another node, its memory following the restored process
    (the source frozen until every page went)."""
    md, sp = meta(obj), spec(obj)
    namespace, pod = str(md["namespace"]), str(sp["podName"])
    cross = target_node != ctx.node
    checkpoint_id = str(uuid.uuid4())
    whole_pod = len(names) > 1
    container = ",".join(names)
    # the new pod runs before anything stops: the pause is the dump, transfer and restore only
    body = podspec.build_placeholder_pod(source, None if whole_pod else names[0], new_pod,
                                         node=target_node,
                                         pause_image=ctx.helper.config.placeholder_image,
                                         commands=programs_of(ctx.helper, namespace, pod, names),
                                         checkpoint_id=checkpoint_id, namespace=namespace,
                                         annotations={MADE_FOR_ANNOTATION: str(md["uid"])})
    try:
        ctx.objects.create_pod(namespace, body)
    except Conflict:
        raise InvalidRequest(f"pod {namespace}/{new_pod} already exists: name another "
                             "(spec.newPodName)") from None
    wait_running(ctx, namespace, new_pod, names)
    ctx.objects.patch_status(MIGRATIONS, obj, {
        "message": f"checkpointing {pod}/{container}", "checkpointID": checkpoint_id})
    # to another node the checkpoint is handed over (sent, or pushed to the registry, and
    # restored there) while the source is still frozen: it is stopped only once the restored
    # process runs, and goes on if the hand-over fails (checkpoint.SourceKept)
    handed: dict[str, Any] = {}

    def hand_over(listed: list[tuple[str, Path]]) -> None:
        started = time.monotonic()
        try:
            if post_copy and target_peer is not None:
                _send_lazy(ctx, obj, listed, target_peer, target_node, new_pod, handed)
                return
            if target_peer is not None:
                handed["sent"], handed["remote"] = _send(ctx, obj, listed, target_peer,
                                                         target_node)
            else:
                handed["sent"], handed["remote"] = "registry", _push_copies(ctx, listed)
            handed["transfer_ms"] = round((time.monotonic() - started) * 1000)
            # the target's helper restores every member of a whole-pod checkpoint
            handed["restored"], handed["restore_name"] = _restore_there(
                ctx, obj, checkpoint_id, new_pod, "" if whole_pod else container, target_node)
            handed["at"] = time.monotonic()
        except BaseException:
            try:  # before the source goes on: never two of it
                _placeholder_gone(ctx, obj, wait=post_copy)
            except Exception as exc:  # noqa: BLE001 - the API; the hand-over's error matters
                log.warning("cannot remove the new pod of migration %s: %s",
                            meta(obj).get("name"), exc)
            raise

    paused = time.monotonic()
    try:
        if whole_pod:
            dumped = checkpoint.checkpoint_pod(
                ctx.helper, namespace=namespace, pod=pod, containers=names,
                leave_running=not sp.get("deleteSource", False), storage="local",
                checkpoint_id=checkpoint_id, requested_by=requested_by(obj),
                after_listed=hand_over if cross else None)
        else:
            def take(lazy: bool) -> dict[str, Any]:
                return checkpoint.checkpoint(
                    ctx.helper, namespace=namespace, pod=pod, container=container, root=None,
                    checkpoint_path=None, leave_running=not sp.get("deleteSource", False),
                    storage="local", checkpoint_id=checkpoint_id,
                    requested_by=requested_by(obj),
                    after_listed=hand_over if cross else None, lazy=lazy)

            def fell_back(exc: HelperError) -> None:
                log.warning("post-copy dump of %s/%s failed, stop-and-copy instead: %s", pod,
                            container, exc.message, extra={"migration": md.get("name")})
                ctx.objects.patch_status(MIGRATIONS, obj, {
                    "message": f"post-copy could not dump {pod}/{container} ({exc.message}); "
                               "stop-and-copy instead"})

            dumped, post_copy = with_fallback(take, post_copy, sp.get("lazy") is None,
                                              fell_back)
    except checkpoint.SourceKept as kept:
        if post_copy:  # of no use without the memory it left behind
            lazy.forget(ctx.helper.config, checkpoint_id)
        raise _kept(kept.cause, pod, checkpoint_id, ctx.node, kept=not post_copy) \
            from kept.cause
    members = [(str(m["name"]), str(m["checkpoint_id"])) for m in dumped.get("containers") or []]
    copies = [(str(m["checkpoint_id"]), Path(str(m["checkpoint_path"])))
              for m in dumped.get("containers") or [dumped]]
    sent, transfer_ms = handed.get("sent"), handed.get("transfer_ms")
    if cross:
        restored, restore_name = handed["restored"], handed["restore_name"]
    elif whole_pod:
        restore_name = ""
        restored = _once_admitted(lambda: restore.restore_pod(
            ctx.helper, namespace=namespace, pod=new_pod, members=members,
            access=UNRESTRICTED, requested_by=requested_by(obj), source_namespace=namespace))
    else:
        restore_name = ""
        restored = _once_admitted(lambda: restore.restore(
            ctx.helper, namespace=namespace, pod=new_pod, container=container, root=None,
            checkpoint_path=None, checkpoint_id=checkpoint_id, access=UNRESTRICTED,
            requested_by=requested_by(obj), source_namespace=namespace))
    pause_ms = round((handed.get("at", time.monotonic()) - paused) * 1000)
    if sp.get("deleteSource"):
        _take_place(ctx, obj, source, new_pod)
        ctx.objects.delete_pod(namespace, pod)
    remote = handed.get("remote") or {}
    note = ""
    if post_copy:
        # its memory went to the restored process: what is left cannot be restored again
        lazy.forget(ctx.helper.config, checkpoint_id)
    elif sent == "direct" and ctx.helper.config.remote_repository:
        # the registry's copy, for later restores anywhere: after the pause, never in it
        ctx.objects.patch_status(MIGRATIONS, obj, {
            "message": f"restored on node {target_node}; copying the checkpoint to the registry"})
        try:
            remote = _push_copies(ctx, copies)
        except HelperError as exc:
            note = f"; its copy in the registry failed ({exc.code}): {exc.message}"
    ctx.objects.patch_status(MIGRATIONS, obj, succeeded(
        obj, f"{pod}/{container} moved to {new_pod} on node {target_node} with a pause of "
             f"{pause_ms} ms{note}", pauseMs=pause_ms, checkpointMs=dumped.get("duration_ms"),
        restoreMs=restored.get("duration_ms"), restoreName=restore_name or None,
        checkpointID=checkpoint_id, sizeBytes=dumped.get("size_bytes"),
        storage="remote" if remote else dumped.get("storage"),
        imageRef=remote.get("reference"), compression=remote.get("compression"),
        transfer=sent, transferMs=transfer_ms, postCopy=post_copy or None,
        memoryMs=handed.get("memory_ms")))
    audit("migrate", obj, "succeeded", checkpoint_id=checkpoint_id, pause_ms=pause_ms,
          transfer=sent, post_copy=post_copy)


def with_fallback(take: Callable[[bool], dict[str, Any]], post_copy: bool, chosen: bool,
                  fell_back: Callable[[HelperError], None]) -> tuple[dict[str, Any], bool]:
    """take(post_copy), and whether it went post-copy. A post-copy the helper chose (by memory
    size: `chosen`) whose dump failed before anything was handed over (DumpFailed: the source
    was thawed as it was) goes stop-and-copy instead: CRIU's direct dump may refuse what
    runc's takes (a terminal, say). One asked for, or failed later, fails."""
    try:
        return take(post_copy), post_copy
    except DumpFailed as exc:
        if not (post_copy and chosen):
            raise
        fell_back(exc)
    return take(False), False


def _send_lazy(ctx: Ctx, obj: dict[str, Any], listed: list[tuple[str, Path]],
               target_peer: tuple[str, int], target_node: str, new_pod: str,
               handed: dict[str, Any]) -> None:
    """Post-copy's hand-over: everything but the memory sent to the target's helper, restored
    there (the pause ends as the process runs), then its memory, page by page through the peer
    port, until the last one; the source stays frozen until then. Any failure raises: the new
    pod is removed (its guard has killed what it ran if its memory stopped) and the source
    goes on from where it was frozen."""
    ((checkpoint_id, directory),) = listed
    started = time.monotonic()
    try:
        peer.send(ctx.helper.config, directory, *target_peer, target_node)
    except HelperError as exc:  # no registry here: it cannot carry memory that stayed behind
        raise RestoreFailed(f"the checkpoint could not be sent to node {target_node} "
                            f"({exc.message})") from exc
    handed["sent"], handed["remote"] = "direct", {}
    handed["transfer_ms"] = round((time.monotonic() - started) * 1000)
    handed["restored"], handed["restore_name"] = _restore_there(
        ctx, obj, checkpoint_id, new_pod, "", target_node)
    handed["at"] = time.monotonic()
    ctx.objects.patch_status(MIGRATIONS, obj, {
        "message": f"running on node {target_node}; its memory follows (post-copy)"})
    served = lazy.SERVING.get(checkpoint_id)
    if served is None:
        raise RestoreFailed(f"the memory of checkpoint {checkpoint_id} is no longer served")
    served.finish(ctx.helper.config.dump_timeout_s)
    handed["memory_ms"] = round((time.monotonic() - handed["at"]) * 1000)


def _kept(cause: BaseException, pod: str, checkpoint_id: str, node: str,
          kept: bool = True) -> HelperError:
    """The hand-over's error, saying the source goes on and where its checkpoint is (`kept`:
    a post-copy one is not, its memory never left the source)."""
    error = cause if isinstance(cause, HelperError) else \
        RestoreFailed(f"the hand-over to the target node failed: {cause}")
    error.message += f"; pod {pod} was not stopped and goes on" + (
        f" (checkpoint {checkpoint_id} is kept on node {node})" if kept else "")
    return error



def _send(ctx: Ctx, obj: dict[str, Any], copies: list[tuple[str, Path]],
          target_peer: tuple[str, int], target_node: str) -> tuple[str, dict[str, Any]]:
    """Send the checkpoint (each member of a whole-pod one) to the target's helper; when that
    fails and there is a checkpoint registry, push it there instead (the target's helper pulls
    it). How it went ("direct" or "registry") and the registry's copy ({} when none)."""
    config = ctx.helper.config
    try:
        for _, directory in copies:
            peer.send(config, directory, *target_peer, target_node)
        return "direct", {}
    except HelperError as exc:
        if not config.remote_repository:
            raise RestoreFailed(f"the checkpoint could not be sent to node {target_node} "
                                f"({exc.message}) and this helper has no checkpoint registry "
                                "to send it through") from exc
        log.warning("sending the checkpoint to node %s failed, through the registry instead: "
                    "%s", target_node, exc.message, extra={"migration": meta(obj).get("name")})
    return "registry", _push_copies(ctx, copies)


def _push_copies(ctx: Ctx, copies: list[tuple[str, Path]]) -> dict[str, Any]:
    """Push each checkpoint to the registry; the first one's reference and compression."""
    pushed = [checkpoint.push_or_keep(ctx.helper.config, checkpoint_id, directory, None,
                                      f"checkpoint {checkpoint_id}")
              for checkpoint_id, directory in copies]
    return pushed[0].to_dict()


#: how long the restored pod may take to be Ready before it takes its source's place anyway
READY_TIMEOUT_S = 60.0


def _take_place(ctx: Ctx, obj: dict[str, Any], source: dict[str, Any], new_pod: str) -> None:
    """Before the source is deleted, the restored pod takes its place: it gets the source's
    labels and owners once Ready, and the source the lowest deletion cost. A ReplicaSet that
    sees both for a moment removes the source (the lowest cost), never the restored pod, and
    never starts a fresh replica: it counts the restored pod as its own. Services select the
    restored pod by the same labels (docs/cli.md, "Migrating a Deployment's pod")."""
    namespace, name = str(meta(obj)["namespace"]), str(meta(obj)["name"])
    source_name = str((source.get("metadata") or {}).get("name"))
    ctx.objects.patch_pod(namespace, source_name, {"metadata": {"annotations": {
        POD_DELETION_COST_ANNOTATION: str(-(2 ** 31))}}})
    ctx.objects.patch_status(MIGRATIONS, obj, {
        "message": f"{new_pod} takes the place of {source_name}"})
    end = time.monotonic() + READY_TIMEOUT_S
    current = ctx.objects.get_pod(namespace, new_pod)
    while time.monotonic() < end and not _ready(current):
        time.sleep(0.2)
        current = ctx.objects.get_pod(namespace, new_pod)
    notes = ((current or {}).get("metadata") or {}).get("annotations") or {}
    if notes.get(MADE_FOR_ANNOTATION) != meta(obj).get("uid"):
        raise RestoreFailed(f"pod {namespace}/{new_pod} is not the one migration {name} made")
    ctx.objects.patch_pod(namespace, new_pod, podspec.take_place_patch(source))
    audit("take-place", obj, "labelled", pod=new_pod, source=source_name)


def _ready(pod: dict[str, Any] | None) -> bool:
    conditions = ((pod or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


#: how long the restore half of a migration waits for a place among the node's operations
ADMISSION_WAIT_S = 600.0


def _once_admitted(operation: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`operation`, tried again while the node's operation limits refuse it: the checkpoint
    half of the migration is done (with deleteSource its source has stopped), so the restore
    waits for a place rather than failing the migration."""
    deadline = time.monotonic() + ADMISSION_WAIT_S
    while True:
        try:
            return operation()
        except TooManyRequests as exc:
            if time.monotonic() > deadline:
                raise
            time.sleep(retry_after(exc))


def _restore_there(ctx: Ctx, obj: dict[str, Any], checkpoint_id: str, new_pod: str,
                   container: str, target_node: str) -> tuple[dict[str, Any], str]:
    """A Restore for the target node's helper; its status once final."""
    md = meta(obj)
    namespace = str(md["namespace"])
    annotations = {MIGRATION_ANNOTATION: str(md["name"])}
    if requested_by(obj):
        annotations[REQUESTED_BY_ANNOTATION] = requested_by(obj)
    body: dict[str, Any] = {
        "apiVersion": f"{obj['apiVersion']}", "kind": "Restore",
        "metadata": {"generateName": f"{md['name']}-", "namespace": namespace,
                     "labels": {NODE_LABEL: target_node},
                     "annotations": annotations,
                     "ownerReferences": [{"apiVersion": obj["apiVersion"], "kind": "Migration",
                                          "name": md["name"], "uid": md["uid"]}]},
        "spec": {"checkpointID": checkpoint_id,
                 "target": {"podName": new_pod, **({"container": container} if container
                                                   else {})}},
    }
    created = ctx.objects.create(RESTORES, namespace, body)
    name = str(created["metadata"]["name"])
    ctx.objects.patch_status(MIGRATIONS, obj, {
        "restoreName": name, "message": f"restoring on node {target_node} ({name})"})
    end = time.monotonic() + RESTORE_TIMEOUT_S
    while time.monotonic() < end:
        current = ctx.objects.get(RESTORES, namespace, name) or {}
        st = status(current)
        if st.get("phase") == Phase.SUCCEEDED:
            return {"duration_ms": st.get("durationMs"), "pid": st.get("pid")}, name
        if st.get("phase") == Phase.FAILED:
            raise RestoreFailed(f"restore on node {target_node} failed ({st.get('errorCode')}): "
                                f"{st.get('message')}; checkpoint {checkpoint_id} is kept")
        # inside the pause: looked at often for the first seconds (a restore takes ~0.2 s)
        time.sleep(RESTORE_POLL_S if time.monotonic() < end - RESTORE_TIMEOUT_S + 5 else 0.1)
    raise RestoreFailed(f"restore on node {target_node} did not end within "
                        f"{RESTORE_TIMEOUT_S:.0f} s ({name})")
