"""What the commands do, as plain functions over a KubeClient: no click, no rendering.

checkpoint, restore and migrate create one cedana.io object each (resources.py) that the
node helper of the right node reconciles, and wait for it with a watch; the other commands
read pods and those objects. Nothing here talks to a node or to a helper's port. Functions
return the objects as the API server sent them, or plain dicts (the documented `-o json`
shapes, minus apiVersion/kind), and raise errors from kubectl_cedana.errors.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

from kubectl_cedana import resources
from kubectl_cedana.contract import (
    CHECKPOINT_DATA_FINALIZER,
    CHECKPOINT_RESOURCE,
    HELPER_NAMESPACE,
    HELPER_SELECTOR,
    KUBELET_ARCHIVE_PATTERN,
    KUBELET_CHECKPOINT_DIR,
    MIGRATION_RESOURCE,
    REQUESTED_BY_ANNOTATION,
    RESTORE_RESOURCE,
    Phase,
    Resource,
    is_checkpoint_id,
)
from kubectl_cedana.errors import (
    ConflictError,
    HelperNotInstalled,
    Interrupted,
    NotFoundError,
    OperationTimeout,
    PermissionDenied,
    UsageError,
)
from kubectl_cedana.kube import KubeClient
from kubectl_cedana.pods import (
    container_rows,
    running_container,
    running_pod,
    select_container,
)
from kubectl_cedana.podspec import container_names, pod_containers, pod_name, take_place_refusal

ProgressFn = Callable[[str], None]
DRY_RUNS = ("none", "client", "server")


def _no_progress(_text: str) -> None:
    return None


@dataclasses.dataclass
class Started:
    """An object a command created (or, in a dry run, would create), and what to say."""

    resource: Resource
    obj: dict[str, Any]
    dry_run: str = "none"
    warnings: list[str] = dataclasses.field(default_factory=list)


# -- pods and containers ----------------------------------------------------------------------
def resolve_checkpointed(kube: KubeClient, namespace: str, pod: str,
                         container: str | None) -> tuple[str, str, dict[str, Any]]:
    """(node, container, the pod) of what a checkpoint or migration takes: the container -c
    names, the pod's only one, or "" for every container of the pod (native sidecars too),
    which must all run."""
    obj = kube.get_pod(namespace, pod)
    names = pod_containers(obj)
    if container or len(names) <= 1:
        ref = running_container(obj, select_container(obj, container))
        return ref.node, ref.container, obj
    node = running_pod(obj)
    for name in names:
        running_container(obj, name)
    return node, "", obj


def list_containers(kube: KubeClient, namespace: str | None) -> list[dict[str, Any]]:
    """Every container of the pods of `namespace` (None: every namespace), from the API."""
    rows = [row for pod in kube.list_pods(namespace) for row in container_rows(pod)]
    rows.sort(key=lambda r: (r["namespace"], r["pod"], r["container"]))
    return rows


def require_helper_on(kube: KubeClient, node: str) -> None:
    """Fail before creating anything when no helper pod runs on the node to act on it (one
    not ready yet, as in a rollout, will take the object when it is). Users who may not list
    cedana-system's pods are not stopped: their object waits, Pending, for a helper."""
    try:
        pods = kube.list_pods(HELPER_NAMESPACE, label_selector=HELPER_SELECTOR,
                              field_selector=f"spec.nodeName={node}")
    except PermissionDenied:
        return
    if not pods:
        raise HelperNotInstalled(f"no cedana helper pod on node {node}",
                                 hint=resources.INSTALL_HINT)


def _ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions) \
        and not (pod.get("metadata") or {}).get("deletionTimestamp")


# -- creating objects -------------------------------------------------------------------------
def _start(kube: KubeClient, resource: Resource, namespace: str, spec: dict[str, Any], *,
           name: str, generate_from: str, node: str, dry_run: str) -> Started:
    if dry_run not in DRY_RUNS:
        raise UsageError(f"--dry-run must be one of {', '.join(DRY_RUNS)}")
    if dry_run == "none" and node:
        require_helper_on(kube, node)
    obj = resources.new_object(resource, namespace, spec, name=name,
                               generate_from=generate_from, node=node,
                               user=kube.user_name(),
                               finalizers=(CHECKPOINT_DATA_FINALIZER,)
                               if resource is CHECKPOINT_RESOURCE and not spec.get("preflight")
                               else ())
    if dry_run != "client":
        obj = resources.create(kube, resource, obj, dry_run=dry_run == "server")
    return Started(resource, obj, dry_run)


def start_checkpoint(kube: KubeClient, namespace: str, pod: str, container: str | None, *,
                     leave_running: bool, with_rootfs: bool = True, storage: str | None = None,
                     compression: str | None = None, name: str = "",
                     dry_run: str = "none", hold_connections: bool = False) -> Started:
    """A Checkpoint of the pod's running container (or, without -c on a pod of several, of
    all of them in one freeze), labelled with the pod's node. `hold_connections`: one
    container, stopped with its TCP connections held for a restore into the same pod."""
    node, chosen, _pod = resolve_checkpointed(kube, namespace, pod, container)
    spec: dict[str, Any] = {"podName": pod, "leaveRunning": leave_running,
                            "withRootfs": with_rootfs}
    if hold_connections:
        if not chosen:
            raise UsageError("--hold-connections takes one container: name it with -c")
        spec["holdConnections"] = True
    if chosen:
        spec["container"] = chosen
    if storage:
        spec["storage"] = storage
    if compression:
        spec["compression"] = compression
    return _start(kube, CHECKPOINT_RESOURCE, namespace, spec, name=name, generate_from=pod,
                  node=node, dry_run=dry_run)


KUBELET_ARCHIVE = re.compile(KUBELET_ARCHIVE_PATTERN)


def start_import(kube: KubeClient, namespace: str, archive: str, node: str, *,
                 storage: str | None = None, compression: str | None = None, name: str = "",
                 dry_run: str = "none") -> Started:
    """A Checkpoint of the kubelet archive `archive` on `node` (spec.kubeletArchive), of the
    pod the archive's name gives, in `namespace`, which the name must give too."""
    where = KUBELET_CHECKPOINT_DIR + "/"
    base = archive[len(where):] if archive.startswith(where) else archive
    found = KUBELET_ARCHIVE.fullmatch(base)
    if not found or "/" in base:
        raise UsageError(f"{archive!r} is not a kubelet checkpoint archive's name "
                         "(checkpoint-POD_NAMESPACE-CONTAINER-TIME.tar)")
    pod = found.group(1)
    if not base.startswith(f"checkpoint-{pod}_{namespace}-"):
        raise UsageError(f"{base} is not of a pod in namespace {namespace}: use -n with the "
                         "pod's namespace")
    spec: dict[str, Any] = {"podName": pod, "kubeletArchive": base}
    if storage:
        spec["storage"] = storage
    if compression:
        spec["compression"] = compression
    return _start(kube, CHECKPOINT_RESOURCE, namespace, spec, name=name,
                  generate_from=f"{pod}-import", node=node, dry_run=dry_run)


def preflight(kube: KubeClient, namespace: str, pod: str, container: str | None, *,
              timeout: float, progress: ProgressFn = _no_progress) -> dict[str, Any]:
    """Whether the pod's containers (or one) can be checkpointed, and why not: a Checkpoint
    with spec.preflight that the node's helper answers without freezing or dumping anything,
    removed once read. Its final object (status.checkpointable, status.findings)."""
    node, chosen, _pod = resolve_checkpointed(kube, namespace, pod, container)
    spec: dict[str, Any] = {"podName": pod, "preflight": True}
    if chosen:
        spec["container"] = chosen
    # CRDs older than this plugin drop the field they do not know, and the helper would then
    # take a real checkpoint: the API server says first what it would keep
    tried = _start(kube, CHECKPOINT_RESOURCE, namespace, spec, name="",
                   generate_from=f"{pod}-preflight", node=node, dry_run="server")
    if not (tried.obj.get("spec") or {}).get("preflight"):
        raise ConflictError("the installed Checkpoint resource has no spec.preflight (older "
                            "than this plugin): run `kubectl cedana install` to update it")
    started = _start(kube, CHECKPOINT_RESOURCE, namespace, spec, name="",
                     generate_from=f"{pod}-preflight", node=node, dry_run="none")
    try:
        return wait_for(kube, started, timeout=timeout, progress=progress)
    finally:
        resources.delete(kube, CHECKPOINT_RESOURCE, namespace,
                         str(started.obj["metadata"]["name"]))


def start_restore(kube: KubeClient, namespace: str, checkpoint: str, *, into: str | None,
                  container: str | None = None, new_pod: str | None = None,
                  node: str | None = None, checkpoint_namespace: str | None = None,
                  name: str = "", dry_run: str = "none") -> Started:
    """A Restore of CHECKPOINT (a checkpoint id, or the name of a Checkpoint object) into an
    existing sleeping pod (`into`) or into a new pod the node's helper creates (`new_pod`),
    labelled with the node whose helper restores."""
    if bool(into) == bool(new_pod):
        raise UsageError("give exactly one of --into POD or --new-pod NAME")
    other_namespace = checkpoint_namespace if checkpoint_namespace and \
        checkpoint_namespace != namespace else ""
    spec: dict[str, Any] = {}
    source: dict[str, Any] | None = None
    if is_checkpoint_id(checkpoint):
        spec["checkpointID"] = checkpoint
        if new_pod and not node:  # the new pod goes to the checkpoint's node: find it
            found = resources.find_by_checkpoint_id(kube, other_namespace or namespace,
                                                    checkpoint, CHECKPOINT_RESOURCE)
            source = found[0] if found else None
    else:
        source = succeeded_checkpoint(kube, other_namespace or namespace, checkpoint)
        if other_namespace:  # a name is only valid within the Restore's own namespace
            spec["checkpointID"] = str(resources.status_of(source).get("checkpointID") or "")
        else:
            spec["checkpointName"] = checkpoint
    if other_namespace:
        spec["checkpointNamespace"] = other_namespace
    if into:
        target_node, target = _restore_target(kube, namespace, into, container)
        spec["target"] = target
        generate_from = into
    else:
        assert new_pod is not None
        spec["newPod"] = {"name": new_pod, **({"node": node} if node else {})}
        target_node = node or (resources.node_of(source) if source else "")
        generate_from = new_pod
    return _start(kube, RESTORE_RESOURCE, namespace, spec, name=name,
                  generate_from=generate_from, node=target_node, dry_run=dry_run)


def succeeded_checkpoint(kube: KubeClient, namespace: str, name: str) -> dict[str, Any]:
    """The Checkpoint object NAME, which must have succeeded to be restored."""
    obj = resources.get(kube, CHECKPOINT_RESOURCE, namespace, name)
    phase = resources.phase_of(obj)
    if phase == Phase.FAILED:
        raise ConflictError(f'checkpoint "{name}" failed, there is nothing to restore',
                            hint=resources.failure(CHECKPOINT_RESOURCE, obj).one_line())
    if phase != Phase.SUCCEEDED:
        raise ConflictError(f'checkpoint "{name}" is {phase}, not finished yet',
                            hint=f"wait for it: kubectl -n {namespace} get "
                                 f"{CHECKPOINT_RESOURCE.qualified} {name} -w")
    return obj


def _restore_target(kube: KubeClient, namespace: str, pod: str, container: str | None
                    ) -> tuple[str, dict[str, Any]]:
    """(node, spec.target) of an existing pod. Its container: -c, else its only one, else
    left to the helper (the checkpointed container's name)."""
    obj = kube.get_pod(namespace, pod)
    names = container_names(obj)
    if container or len(names) == 1:
        chosen = select_container(obj, container)
        node = running_container(obj, chosen).node
    else:
        chosen = ""
        node = running_pod(obj)
    target: dict[str, Any] = {"podName": pod}
    if chosen:
        target["container"] = chosen
    return node, target


def start_migration(kube: KubeClient, namespace: str, pod: str, container: str | None, *,
                    to_node: str | None = None, new_pod: str | None = None,
                    delete_source: bool = False, lazy: bool | None = None, name: str = "",
                    dry_run: str = "none") -> Started:
    """A Migration of the pod's running container (or of the whole pod), labelled with the
    source's node."""
    node, chosen, source = resolve_checkpointed(kube, namespace, pod, container)
    spec: dict[str, Any] = {"podName": pod, "deleteSource": delete_source}
    if chosen:
        spec["container"] = chosen
    if to_node:
        spec["targetNode"] = to_node
    if new_pod:
        spec["newPodName"] = new_pod
    if lazy is not None:
        spec["lazy"] = lazy
    refusal = take_place_refusal(source) if delete_source else None
    if refusal:  # the helper refuses it too (a Migration made with plain kubectl)
        raise UsageError(refusal)
    warnings: list[str] = []
    started = _start(kube, MIGRATION_RESOURCE, namespace, spec, name=name, generate_from=pod,
                     node=node, dry_run=dry_run)
    started.warnings = warnings
    return started


def wait_for(kube: KubeClient, started: Started, *, timeout: float,
             progress: ProgressFn = _no_progress) -> dict[str, Any]:
    """Watch the object until the helper has finished it: the object when it Succeeded;
    ResourceFailed (its errorCode and message) when it Failed. Interrupted, the object and
    the helper's work go on, and the error says where to follow them."""
    resource, obj = started.resource, started.obj
    try:
        final = resources.wait_final(kube, resource, obj, timeout=timeout, progress=progress)
    except KeyboardInterrupt:
        namespace, name = resources.namespace_of(obj), resources.name_of(obj)
        raise Interrupted(f"interrupted; {resource.singular} {namespace}/{name} goes on",
                          hint=f"follow it: kubectl -n {namespace} get "
                               f"{resource.qualified} {name} -w") from None
    if resources.phase_of(final) == Phase.FAILED:
        raise resources.failure(resource, final)
    return final


# -- Checkpoint objects -----------------------------------------------------------------------
def checkpoint_row(obj: Mapping[str, Any]) -> dict[str, Any]:
    """One Checkpoint object for the tables of `checkpoints ls` and `prune`."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = resources.status_of(obj)
    phase = resources.phase_of(obj)
    return {
        "name": str(meta.get("name") or ""), "namespace": str(meta.get("namespace") or ""),
        "pod": str(spec.get("podName") or ""),
        "container": str(status.get("container") or spec.get("container") or ""),
        "node": resources.node_of(obj),
        "phase": "Deleting" if meta.get("deletionTimestamp") else phase,
        "size_bytes": status.get("sizeBytes"),
        "checkpoint_id": str(status.get("checkpointID") or ""),
        "storage": str(status.get("storage") or spec.get("storage") or ""),
        "compression": str(status.get("compression") or spec.get("compression") or ""),
        "requested_by": str(status.get("requestedBy") or (meta.get("annotations") or {})
                            .get(REQUESTED_BY_ANNOTATION) or ""),
        "error_code": str(status.get("errorCode") or ""),
        "created": str(meta.get("creationTimestamp") or ""),
        "completed": str(status.get("completedAt") or ""),
    }


def list_checkpoints(kube: KubeClient, namespace: str | None) -> list[dict[str, Any]]:
    """The Checkpoint objects of `namespace` (None: every namespace), oldest first; not the
    preflight questions (`doctor POD`), which hold no checkpoint."""
    items = [o for o in resources.list_objects(kube, CHECKPOINT_RESOURCE, namespace)
             if not (o.get("spec") or {}).get("preflight")]
    items.sort(key=lambda o: (resources.namespace_of(o), str(
        (o.get("metadata") or {}).get("creationTimestamp") or ""), resources.name_of(o)))
    return items


def find_checkpoint(kube: KubeClient, namespace: str, wanted: str) -> dict[str, Any]:
    """A Checkpoint object of the namespace by name, or by checkpoint id (its label)."""
    if not is_checkpoint_id(wanted):
        return resources.get(kube, CHECKPOINT_RESOURCE, namespace, wanted)
    found = resources.find_by_checkpoint_id(kube, namespace, wanted, CHECKPOINT_RESOURCE)
    if not found:
        raise NotFoundError(f"no checkpoint with id {wanted} in namespace \"{namespace}\"",
                            hint="see: kubectl cedana checkpoints ls -A")
    if len(found) > 1:
        raise UsageError(f"{len(found)} checkpoints carry id {wanted}",
                         hint="name one: " + ", ".join(resources.name_of(o) for o in found))
    return found[0]


def delete_checkpoints(kube: KubeClient, namespace: str, wanted: list[str], *, wait: bool,
                       timeout: float, dry_run: bool = False,
                       progress: ProgressFn = _no_progress) -> list[dict[str, Any]]:
    """Delete Checkpoint objects (by name or id). Their finalizer has the helper of their
    node delete the data on the node and in the registry first; with `wait`, until then."""
    targets = [find_checkpoint(kube, namespace, w) for w in wanted]
    rows = []
    for obj in targets:
        name = resources.name_of(obj)
        progress(f"deleting checkpoint {name}")
        answer = resources.delete(kube, CHECKPOINT_RESOURCE, namespace, name, dry_run=dry_run)
        still = answer if isinstance(answer, dict) and answer.get("kind") == \
            CHECKPOINT_RESOURCE.kind else None
        if wait and still is not None and not dry_run:
            still = resources.wait_deleted(kube, CHECKPOINT_RESOURCE, namespace, name,
                                           timeout=timeout, progress=progress)
            if still is not None:
                finalizers = (still.get("metadata") or {}).get("finalizers") or []
                raise _stuck([still], timeout, finalizers)
        row = checkpoint_row(obj)
        row["deleted"] = still is None and not dry_run
        row["finalizers"] = list(((still or {}).get("metadata") or {}).get("finalizers") or [])
        rows.append(row)
    return rows


def _stuck(objects: list[dict[str, Any]], timeout: float,
           finalizers: list[str]) -> OperationTimeout:
    names = ", ".join(f"{resources.namespace_of(o)}/{resources.name_of(o)}" for o in objects)
    nodes = sorted({resources.node_of(o) for o in objects if resources.node_of(o)})
    return OperationTimeout(
        f"still there after {timeout:.0f}s, held by finalizer "
        f"{', '.join(finalizers) or CHECKPOINT_DATA_FINALIZER}: {names}",
        hint="the helper of " + (f"node {', '.join(nodes)}" if nodes else "its node")
             + " deletes the data first; is it running? kubectl -n "
             + f"{HELPER_NAMESPACE} get pods -o wide")


def select_for_pruning(objects: list[dict[str, Any]], *, keep: int | None,
                       max_bytes: int | None) -> list[dict[str, Any]]:
    """The Succeeded checkpoints to delete, per container (namespace, pod, container), newest
    kept first: beyond the newest `keep`, and beyond `max_bytes` in all. Objects still
    Pending or Running, Failed ones and those being deleted are never counted nor chosen."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for obj in objects:
        if resources.phase_of(obj) != Phase.SUCCEEDED or \
                (obj.get("metadata") or {}).get("deletionTimestamp"):
            continue
        row = checkpoint_row(obj)
        groups.setdefault((row["namespace"], row["pod"], row["container"]), []).append(obj)
    doomed = []
    for members in groups.values():
        members.sort(key=lambda o: (checkpoint_row(o)["completed"] or
                                    checkpoint_row(o)["created"], resources.name_of(o)),
                     reverse=True)  # newest first
        total = 0
        for index, obj in enumerate(members):
            total += int(resources.status_of(obj).get("sizeBytes") or 0)
            if (keep is not None and index >= keep) or \
                    (max_bytes is not None and total > max_bytes):
                doomed.append(obj)
    doomed.sort(key=lambda o: (resources.namespace_of(o), checkpoint_row(o)["created"]))
    return doomed


def prune_checkpoints(kube: KubeClient, namespace: str | None, *, keep: int | None,
                      max_bytes: int | None, dry_run: bool,
                      progress: ProgressFn = _no_progress) -> list[dict[str, Any]]:
    """Delete the checkpoints select_for_pruning picks (their finalizers remove the data)."""
    if keep is None and max_bytes is None:
        raise UsageError("say what to keep: --keep N and/or --max-bytes BYTES")
    doomed = select_for_pruning(list_checkpoints(kube, namespace), keep=keep,
                                max_bytes=max_bytes)
    rows = []
    for obj in doomed:
        if not dry_run:
            progress(f"deleting checkpoint {resources.name_of(obj)}")
            resources.delete(kube, CHECKPOINT_RESOURCE, resources.namespace_of(obj),
                             resources.name_of(obj))
        rows.append(checkpoint_row(obj))
    return rows


# -- versions ---------------------------------------------------------------------------------
def helper_versions(kube: KubeClient) -> list[dict[str, Any]]:
    """A row per helper pod: its node, readiness and image (the DaemonSet's, as it runs)."""
    pods = kube.list_pods(HELPER_NAMESPACE, label_selector=HELPER_SELECTOR)
    if not pods:
        raise HelperNotInstalled("no cedana helper pods in the cluster",
                                 hint=resources.INSTALL_HINT)
    rows = []
    for pod in pods:
        spec = pod.get("spec") or {}
        containers = spec.get("containers") or [{}]
        image = str(containers[0].get("image") or "")
        statuses = (pod.get("status") or {}).get("containerStatuses") or [{}]
        rows.append({"node": str(spec.get("nodeName") or ""), "pod": pod_name(pod),
                     "ready": _ready(pod), "image": image,
                     "helper": image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1]
                     else "", "image_id": str(statuses[0].get("imageID") or "")})
    rows.sort(key=lambda r: (r["node"], not r["ready"], r["pod"]))
    return rows
