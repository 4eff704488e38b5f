"""What the commands do, as plain functions over a KubeClient: no click, no rendering.

Each function returns plain dicts (the documented `-o json` shapes, minus kind/apiVersion)
and raises errors from kubectl_cedana.errors.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from kubectl_cedana import contract
from kubectl_cedana.authz import caller_proof
from kubectl_cedana.contract import RESTORE_SESSION_KEY
from kubectl_cedana.errors import (
    ApiConflict,
    ApiNotFound,
    CedanaError,
    ConflictError,
    HelperReplyError,
    Interrupted,
    NotFoundError,
    OperationTimeout,
    UsageError,
)
from kubectl_cedana.helper import (
    HelperClient,
    HelperPod,
    find_helper_pod,
    gather,
    require_helpers,
)
from kubectl_cedana.kube import KubeClient, pod_path
from kubectl_cedana.pods import (
    ContainerRef,
    build_placeholder_pod,
    checkpoint_metadata_patch,
    placeholder_running,
    running_container,
    select_container,
)

if TYPE_CHECKING:  # Self is Python 3.11+; annotations are never evaluated
    from typing import Self

ProgressFn = Callable[[str], None]
POLL_SECONDS = 0.5


def _no_progress(_text: str) -> None:
    return None


# -- containers -------------------------------------------------------------------------------
def resolve_running_container(kube: KubeClient, namespace: str, pod: str,
                              container: str | None) -> tuple[ContainerRef, dict[str, Any]]:
    """The pod's container (by -c or the only one), its node and runtime ID; must be running."""
    obj = kube.get_pod(namespace, pod)
    name = select_container(obj, container)
    return running_container(obj, name), obj


def container_entry(entry: dict[str, Any], node: str) -> dict[str, Any]:
    """A helper's /list entry in the plugin's documented shape."""
    return {
        "namespace": entry.get("namespace", ""),
        "pod": entry.get("sandbox_name", ""),
        "container": entry.get("container_name", ""),
        "node": node,
        "status": entry.get("status", ""),
        "container_id": entry.get("container_id", ""),
        "pid": entry.get("pid"),
        "image": entry.get("image", ""),
        "sandbox_id": entry.get("sandbox_id", ""),
        "runtime": entry.get("runtime", ""),
    }


def list_containers(kube: KubeClient, namespace: str | None
                    ) -> tuple[list[dict[str, Any]], list[CedanaError]]:
    """Containers the helpers see, in `namespace` or (None) every namespace.

    Returns what could be gathered plus the errors of helpers that failed.
    """
    helpers = require_helpers(kube)
    calls: list[tuple[HelperPod, str]] = []
    if namespace:
        calls = [(h, namespace) for h in helpers]
    else:
        by_node: dict[str, set[str]] = {}
        for pod in kube.list_pods(None):
            node = (pod.get("spec") or {}).get("nodeName")
            if node:
                by_node.setdefault(node, set()).add(pod["metadata"]["namespace"])
        calls = [(h, ns) for h in helpers for ns in sorted(by_node.get(h.node, ()))]

    def ask(call: tuple[HelperPod, str]) -> list[dict[str, Any]]:
        helper, ns = call
        return [container_entry(e, helper.node)
                for e in HelperClient(kube, helper).list_containers(ns)]

    rows, errors = gather(ask, calls)
    rows.sort(key=lambda r: (r["namespace"], r["pod"], r["container"]))
    return rows, errors


# -- checkpoints ------------------------------------------------------------------------------
def checkpoint_pod(kube: KubeClient, namespace: str, pod: str, container: str | None,
                         *, leave_running: bool, path: str = "",
                         with_rootfs: bool = True, storage: str | None = None,
                         compression: str | None = None) -> dict[str, Any]:
    ref, _obj = resolve_running_container(kube, namespace, pod, container)
    helper = HelperClient(kube, find_helper_pod(kube, ref.node))
    answer = helper.checkpoint(namespace=ref.namespace, pod=ref.pod, container=ref.container,
                               path=path, leave_running=leave_running, with_rootfs=with_rootfs,
                               storage=storage, compression=compression)
    return {
        "checkpoint_id": answer.get("checkpoint_id", ""),
        "checkpoint_path": answer.get("checkpoint_path", ""),
        "size_bytes": answer.get("size_bytes"),
        "duration_ms": answer.get("duration_ms"),
        "leave_running": leave_running,
        "with_rootfs": with_rootfs,
        "storage": answer.get("storage", "local"),
        "remote": answer.get("remote"),
        "source": ref.to_dict(),
        "options": answer.get("options"),
    }


# -- rootfs -----------------------------------------------------------------------------------
def _is_crio(ref: ContainerRef) -> bool:
    return ref.runtime in ("cri-o", "crio")


def rootfs_checkpoint(kube: KubeClient, namespace: str, pod: str, container: str | None,
                      image: str) -> dict[str, Any]:
    """Commit the container's changed files on top of its image and push that as `image`."""
    ref, _obj = resolve_running_container(kube, namespace, pod, container)
    helper = HelperClient(kube, find_helper_pod(kube, ref.node))
    base = ref.image if _is_crio(ref) else ""
    answer = helper.rootfs_checkpoint(namespace=ref.namespace, pod=ref.pod,
                                      container=ref.container, image_ref=image,
                                      base_image_ref=base)
    return {"image": answer.get("image_ref", image), "digest": answer.get("digest", ""),
            "pushed": answer.get("pushed", ""), "base_image": answer.get("base_image", ""),
            "layer": answer.get("layer"), "layers": answer.get("layers"),
            "duration_ms": answer.get("duration_ms"), "source": ref.to_dict()}


def rootfs_restore(kube: KubeClient, namespace: str, pod: str, container: str | None,
                   image: str) -> dict[str, Any]:
    """Apply the layers `image` adds over the pod's own image onto its container's files."""
    ref, _obj = resolve_running_container(kube, namespace, pod, container)
    helper = HelperClient(kube, find_helper_pod(kube, ref.node))
    answer = helper.rootfs_restore(namespace=ref.namespace, pod=ref.pod,
                                   container=ref.container, image_ref=image)
    return {"image": answer.get("image_ref", image),
            "applied_layers": answer.get("applied_layers", []),
            "deleted": answer.get("deleted", []), "entries": answer.get("entries"),
            "duration_ms": answer.get("duration_ms"), "target": ref.to_dict()}


def checkpoint_entry(entry: dict[str, Any], node: str) -> dict[str, Any]:
    """A catalogue entry in the documented shape; further helper fields follow unchanged."""
    shaped: dict[str, Any] = {
        "id": entry.get("id", ""),
        "namespace": entry.get("namespace", ""),
        "pod": entry.get("pod", ""),
        "container": entry.get("container", ""),
        "node": entry.get("node") or node,
        "path": entry.get("path", ""),
        "size_bytes": entry.get("size_bytes"),
        "created": entry.get("created", ""),
    }
    for key, value in entry.items():
        shaped.setdefault(key, value)
    return shaped


def list_checkpoints(kube: KubeClient, namespace: str | None, *, remote: bool = True
                     ) -> tuple[list[dict[str, Any]], list[CedanaError]]:
    """Every node's catalogue plus the checkpoint registry's images (asked of one helper),
    merged by ID and filtered to `namespace` unless None."""
    helpers = require_helpers(kube)
    asker = next((h for h in helpers if h.ready), helpers[0]) if remote and helpers else None

    def ask(helper: HelperPod) -> list[dict[str, Any]]:
        found = HelperClient(kube, helper).checkpoints(remote=helper is asker)
        # a remote-only entry belongs to no node's disk: keep the node it was taken on
        return [checkpoint_entry(e, helper.node if e.get("where") != "remote" else "")
                for e in found]

    merged: dict[str, dict[str, Any]] = {}
    found, errors = gather(ask, helpers)
    for entry in found:
        known = merged.get(entry["id"])
        if known is None:
            merged[entry["id"]] = entry
            continue
        if entry.get("where") != "remote":  # a node's own copy says more
            entry["where"] = _merge_where(known.get("where"), entry.get("where"))
            entry.setdefault("remote", known.get("remote"))
            merged[entry["id"]] = entry
        else:
            known["where"] = _merge_where(known.get("where"), "remote")
    rows = [e for e in merged.values() if namespace is None or e["namespace"] == namespace]
    rows.sort(key=lambda r: (str(r.get("created") or ""), r["id"]))
    return rows, errors


def _merge_where(a: Any, b: Any) -> str:
    places = set(str(a or "").split("+")) | set(str(b or "").split("+"))
    places.discard("")
    return "+".join(p for p in ("local", "remote") if p in places) or "local"


def find_checkpoint(kube: KubeClient, wanted: str) -> tuple[HelperClient, dict[str, Any]]:
    """A helper that can act on a checkpoint (the node holding it, else any helper for a
    remote one), by full ID, unique ID prefix (4+ chars) or path."""
    helpers = require_helpers(kube)
    by_node = {h.node: h for h in helpers}
    entries, errors = list_checkpoints(kube, None)
    exact = [e for e in entries if e["id"] == wanted or (wanted.startswith("/")
                                                        and e.get("path") == wanted)]
    if not exact and len(wanted) >= 4:
        exact = [e for e in entries if str(e["id"]).startswith(wanted)]
    if not exact and not wanted.startswith("/"):  # a path relative to the checkpoint dir
        exact = [e for e in entries
                 if str(e.get("path") or "").endswith("/" + wanted.strip("/"))]
    if len(exact) > 1:
        raise UsageError(f'checkpoint ID "{wanted}" is ambiguous',
                         hint="matches " + ", ".join(sorted(str(e["id"]) for e in exact)))
    if not exact:
        unreachable = "; ".join(e.one_line() for e in errors)
        raise NotFoundError(f'checkpoint "{wanted}" not found on any node',
                            hint=f"not asked: {unreachable}" if unreachable else
                            "see: kubectl cedana checkpoints ls -A")
    entry = exact[0]
    helper = by_node.get(entry["node"])
    if helper is None and "remote" in str(entry.get("where")):
        helper = next((h for h in helpers if h.ready), helpers[0])
    if helper is None:
        raise NotFoundError(f"checkpoint {entry['id']} is on node {entry['node']}, "
                            "which has no cedana helper")
    return HelperClient(kube, helper), entry


def is_remote(entry: dict[str, Any]) -> bool:
    return "remote" in str(entry.get("where") or "")


def inspect_checkpoint(kube: KubeClient, wanted: str) -> dict[str, Any]:
    helper, entry = find_checkpoint(kube, wanted)
    found = checkpoint_entry(helper.get_checkpoint(entry["id"]), helper.node)
    found["where"] = entry.get("where", found.get("where"))
    return found


def delete_checkpoint(kube: KubeClient, wanted: str) -> dict[str, Any]:
    """Local files on every node holding it (the one that took it and those that pulled it),
    and the registry image."""
    helper, entry = find_checkpoint(kube, wanted)
    ident = str(entry["id"])
    holders = [h for h in require_helpers(kube)
               if any(e.get("id") == ident for e in HelperClient(kube, h).checkpoints())]
    clients = [HelperClient(kube, h) for h in holders] or [helper]
    removed_remote = False
    nodes = []
    for client in clients:
        try:
            answer = client.delete_checkpoint(ident) or {}
        except HelperReplyError as exc:
            if exc.code == "checkpoint_not_found":
                continue  # gone meanwhile (with an earlier node's delete of the image)
            raise
        nodes.append(client.node)
        removed_remote = removed_remote or bool(isinstance(answer, dict) and
                                                answer.get("removed_remote"))
    return {"id": ident, "node": helper.node, "nodes": nodes, "deleted": True,
            "removed_remote": removed_remote}


def prune_checkpoints(kube: KubeClient, *, keep: int | None, max_bytes: int | None,
                      dry_run: bool) -> tuple[list[dict[str, Any]], list[CedanaError]]:
    """Apply retention on every node now (the helpers' own limits where not given)."""
    helpers = require_helpers(kube)

    def ask(helper: HelperPod) -> list[dict[str, Any]]:
        answer = HelperClient(kube, helper).prune(max_per_container=keep,
                                                  max_total_bytes=max_bytes, dry_run=dry_run)
        return [dict(r, node=helper.node) for r in answer.get("removed") or []]

    return gather(ask, helpers)


# -- restore ----------------------------------------------------------------------------------
def restore_into_pod(kube: KubeClient, wanted: str, namespace: str, pod: str,
                 container: str | None) -> dict[str, Any]:
    """Restore a checkpoint into an existing (sleeping) pod's container."""
    target, _obj = resolve_running_container(kube, namespace, pod, container)
    if wanted.startswith("/"):
        helper = HelperClient(kube, find_helper_pod(kube, target.node))
        answer = helper.restore(namespace=target.namespace, pod=target.pod,
                                container=target.container, checkpoint_path=wanted)
        checkpoint_id = str(answer.get("checkpoint_id") or "")
    else:
        helper, entry = find_checkpoint(kube, wanted)
        checkpoint_id = entry["id"]
        if helper.node != target.node:
            if not is_remote(entry):
                raise ConflictError(
                    f"checkpoint {checkpoint_id} is stored on node {helper.node} but pod "
                    f'"{pod}" runs on node {target.node}',
                    hint="only checkpoints in the registry move between nodes (checkpoint "
                         "with --storage remote); or use --new-pod, which pins the new pod "
                         "to that node")
            # the target's helper pulls it from the registry
            helper = HelperClient(kube, find_helper_pod(kube, target.node))
        answer = helper.restore(namespace=target.namespace, pod=target.pod,
                                container=target.container, checkpoint_id=checkpoint_id)
    return {
        "checkpoint_id": checkpoint_id or answer.get("checkpoint_id", ""),
        "target": target.to_dict(),
        "pid": answer.get("pid"),
        "pid_in_container": answer.get("pid_in_container"),
        "duration_ms": answer.get("duration_ms"),
        "placeholder_created": False,
    }


#: what cleanup runs under so that it finishes: the CLI gives one that holds off Ctrl-C
Shield = Callable[[], AbstractContextManager[object]]


class PlaceholderSession:
    """Creates a placeholder pod and deletes it again unless `keep()` was called.

    Failure or an interruption (KeyboardInterrupt: Ctrl-C, or SIGTERM where the caller turns
    it into one) inside the `with` block remove the pod (only if it carries this session's
    annotation, so a pod of the same name made by someone else is never touched), under
    `shield`; an interruption then surfaces as Interrupted (exit 130).
    """

    def __init__(self, kube: KubeClient, pod: dict[str, Any],
                 shield: Shield = contextlib.nullcontext) -> None:
        self.kube = kube
        self.pod = pod
        self.shield = shield
        self.namespace = str(pod["metadata"]["namespace"])
        self.name = str(pod["metadata"]["name"])
        self.session = str(pod["metadata"]["annotations"].get(RESTORE_SESSION_KEY) or "")
        self.state = "absent"  # absent -> creating -> created
        self.kept = False

    def __enter__(self) -> Self:
        return self

    def create(self) -> dict[str, Any]:
        self.state = "creating"
        try:
            created = self.kube.create_pod(self.namespace, self.pod)
        except ApiConflict as exc:
            self.state = "absent"
            raise ConflictError(f'pod "{self.name}" already exists in namespace '
                                f'"{self.namespace}"', hint="choose another name") from exc
        except CedanaError:
            self.state = "absent"
            raise
        self.state = "created"
        return created

    def keep(self) -> None:
        self.kept = True

    def _remove(self) -> str:
        """Delete the placeholder; '' on success, else why not."""
        try:
            if self.state == "creating":  # the create may or may not have reached the server
                current = self.kube.request("GET", pod_path(self.namespace, self.name))
                annotations = (current.get("metadata") or {}).get("annotations") or {}
                if annotations.get(RESTORE_SESSION_KEY) != self.session:
                    return ""
            self.kube.delete_pod(self.namespace, self.name, grace_period_seconds=0)
            return ""
        except ApiNotFound:
            return ""
        except CedanaError as exc:
            return exc.one_line()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        if self.kept or self.state == "absent" or exc_type is None:
            return
        with self.shield():
            problem = self._remove()
        done = (f"could not delete placeholder pod {self.namespace}/{self.name}: {problem}"
                if problem else f"deleted placeholder pod {self.namespace}/{self.name}")
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted(f"interrupted; {done}") from None
        if isinstance(exc, CedanaError):
            exc.message = f"{exc.message}; {done}"


def wait_pod_running(kube: KubeClient, namespace: str, name: str, container: str,
                     timeout: float, progress: ProgressFn = _no_progress) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    detail = "Pending"
    while True:
        try:
            pod = kube.get_pod(namespace, name)
        except ApiNotFound:
            raise NotFoundError(f'pod "{name}" disappeared while waiting for it to run') \
                from None
        running, detail = placeholder_running(pod, container)
        if running:
            return pod
        progress(f"waiting for pod {name} to run: {detail}")
        if time.monotonic() >= deadline:
            raise OperationTimeout(f'pod "{name}" did not start within {timeout:.0f}s '
                                   f"(last state: {detail})", hint="raise --timeout")
        time.sleep(POLL_SECONDS)


def new_session_id() -> str:
    return uuid.uuid4().hex


def restore_new_pod(kube: KubeClient, wanted: str, new_pod: str, *, node: str | None,
                    namespace: str | None, timeout: float,
                    progress: ProgressFn = _no_progress,
                    shield: Shield = contextlib.nullcontext) -> dict[str, Any]:
    """Create a placeholder from the checkpoint's source pod, wait for it, restore into it."""
    helper, entry = find_checkpoint(kube, wanted)
    checkpoint_id = str(entry["id"])
    if node and node != helper.node:
        if not is_remote(entry):
            raise ConflictError(f"checkpoint {checkpoint_id} is stored on node {helper.node}, "
                                f"not on {node}, and not in the checkpoint registry",
                                hint="omit --node, or checkpoint with --storage remote")
        helper = HelperClient(kube, find_helper_pod(kube, node))
    source_ns, source_pod, container = entry["namespace"], entry["pod"], entry["container"]
    if not (source_ns and source_pod and container):
        raise CedanaError(f"checkpoint {checkpoint_id} does not record its source pod",
                          hint="create a sleeping pod yourself and use --into")
    try:
        source = kube.get_pod(source_ns, source_pod)
    except ApiNotFound:
        raise NotFoundError(
            f"the checkpoint's source pod {source_ns}/{source_pod} no longer exists and its "
            "spec is needed to build the new pod",
            hint="create a sleeping pod yourself and use --into") from None
    placeholder = build_placeholder_pod(source, container, new_pod, node=helper.node,
                                        checkpoint_id=checkpoint_id,
                                        namespace=namespace or source_ns,
                                        session=new_session_id())
    target_ns = placeholder["metadata"]["namespace"]
    started = time.monotonic()
    with PlaceholderSession(kube, placeholder, shield) as session:
        progress(f"creating pod {new_pod}")
        session.create()
        wait_pod_running(kube, target_ns, new_pod, container, timeout, progress)
        progress(f"restoring checkpoint {checkpoint_id} into pod {new_pod}")
        answer = helper.restore(namespace=target_ns, pod=new_pod, container=container,
                                checkpoint_id=checkpoint_id)
        session.keep()
    return {
        "checkpoint_id": checkpoint_id,
        "target": ContainerRef(namespace=target_ns, pod=new_pod, container=container,
                               node=helper.node, image=str(
                                   placeholder["spec"]["containers"][0].get("image") or "")
                               ).to_dict(),
        "source": {"namespace": source_ns, "pod": source_pod, "container": container,
                   "node": helper.node},
        "pid": answer.get("pid"),
        "pid_in_container": answer.get("pid_in_container"),
        "duration_ms": answer.get("duration_ms"),
        "total_ms": round((time.monotonic() - started) * 1000),
        "placeholder_created": True,
    }


def migrate_pod(kube: KubeClient, namespace: str, pod: str, container: str | None, *,
                to_node: str | None, delete_source: bool, new_pod: str | None,
                timeout: float, progress: ProgressFn = _no_progress,
                with_rootfs: bool = True, compression: str | None = None,
                shield: Shield = contextlib.nullcontext) -> dict[str, Any]:
    """Checkpoint a pod's container and restore it into a new pod, measuring the pause.

    The new pod is created and running before the checkpoint, so the pause (checkpoint
    request sent -> restore answered) covers only the dump, the transfer and the restore.
    To another node the checkpoint goes through the helpers' checkpoint registry.
    """
    source_ref, source = resolve_running_container(kube, namespace, pod, container)
    target_node = to_node or source_ref.node
    helper, target_helper = _migration_helpers(kube, source_ref.node, target_node)
    cross_node = helper is not target_helper
    target_name = new_pod or _migrated_name(pod)
    placeholder = build_placeholder_pod(source, source_ref.container, target_name,
                                        node=target_node, session=new_session_id())
    moved = _Moved()
    try:
        with PlaceholderSession(kube, placeholder, shield) as session:
            progress(f"creating pod {target_name} on node {target_node}")
            session.create()
            wait_pod_running(kube, namespace, target_name, source_ref.container, timeout,
                             progress)
            progress(f"checkpointing {pod}/{source_ref.container}")
            _pause(moved, helper, target_helper, kube, source_ref, target_name,
                   leave_running=not delete_source, with_rootfs=with_rootfs,
                   compression=compression, progress=progress)
            session.keep()
    except CedanaError as exc:
        if moved.checkpoint_id:  # failed or interrupted after the dump: say what is left
            exc.hint = (f"checkpoint {moved.checkpoint_id} is kept on node {helper.node}"
                        + (" and in the checkpoint registry" if cross_node else "")
                        + ("; the source container was stopped by the checkpoint"
                           if delete_source else ""))
        raise
    warnings = _finish_migration(kube, source, target_name, moved.checkpoint_id,
                                 delete_source)
    remote = moved.dump.get("remote") or {} if cross_node else {}
    return {
        "checkpoint_id": moved.checkpoint_id,
        "source": source_ref.to_dict(),
        "target": {"namespace": namespace, "pod": target_name, "container":
                   source_ref.container, "node": target_node},
        "pause_ms": moved.pause_ms,
        "checkpoint_ms": moved.dump.get("duration_ms"),
        "transfer_ms": remote.get("duration_ms") if cross_node else 0,
        "restore_ms": moved.answer.get("duration_ms"),
        "bytes_moved": int(remote.get("size_bytes") or 0),
        "uncompressed_bytes": int(remote.get("uncompressed_bytes") or 0),
        "compression": remote.get("compression", ""),
        "remote": remote.get("reference", ""),
        "pid": moved.answer.get("pid"),
        "pid_in_container": moved.answer.get("pid_in_container"),
        "source_deleted": delete_source,
        "with_rootfs": with_rootfs,
        "warnings": warnings,
    }


def _migration_helpers(kube: KubeClient, source_node: str, target_node: str
                       ) -> tuple[HelperClient, HelperClient]:
    """The helpers of the source and the target node (the same one on one node), checked
    before anything changes: reachable, and sharing a registry between nodes."""
    helper = HelperClient(kube, find_helper_pod(kube, source_node))
    target_helper = helper
    if target_node != source_node:
        target_helper = HelperClient(kube, find_helper_pod(kube, target_node))
        for h in (helper, target_helper):  # both must share a registry, checked up front
            if not (h.version().get("checkpoint_repository") or ""):
                raise UsageError(
                    f"migrating to another node needs a checkpoint registry, and the helper on "
                    f"node {h.node} has none",
                    hint="kubectl cedana install --checkpoint-repository REGISTRY/REPO")
    helper.health()  # fail before changing anything when the helper is unreachable
    return helper, target_helper


@dataclasses.dataclass
class _Moved:
    """What the pause of a migration did, as far as it got."""

    checkpoint_id: str = ""
    dump: dict[str, Any] = dataclasses.field(default_factory=dict)
    answer: dict[str, Any] = dataclasses.field(default_factory=dict)
    pause_ms: int = 0


def _pause(moved: _Moved, helper: HelperClient, target_helper: HelperClient, kube: KubeClient,
           source: ContainerRef, target_pod: str, *, leave_running: bool, with_rootfs: bool,
           compression: str | None, progress: ProgressFn) -> None:
    """Checkpoint, then restore into the running placeholder: the pause the user sees."""
    cross_node = helper is not target_helper
    caller_proof(kube).headers(contract.CHECKPOINT)  # made now, not inside the pause
    paused_at = time.monotonic()
    moved.dump = helper.checkpoint(namespace=source.namespace, pod=source.pod,
                                   container=source.container, leave_running=leave_running,
                                   with_rootfs=with_rootfs,
                                   storage="remote" if cross_node else "local",
                                   compression=compression)
    moved.checkpoint_id = str(moved.dump.get("checkpoint_id") or "")
    progress(f"restoring into {target_pod} on node {target_helper.node}")
    moved.answer = target_helper.restore(namespace=source.namespace, pod=target_pod,
                                         container=source.container,
                                         checkpoint_id=moved.checkpoint_id)
    moved.pause_ms = round((time.monotonic() - paused_at) * 1000)


def _finish_migration(kube: KubeClient, source: dict[str, Any], target_pod: str,
                      checkpoint_id: str, delete_source: bool) -> list[str]:
    """Label the new pod with its checkpoint, delete the source if asked; the warnings."""
    namespace, pod = source["metadata"]["namespace"], source["metadata"]["name"]
    warnings = []
    try:
        kube.patch_merge(pod_path(namespace, target_pod),
                         checkpoint_metadata_patch(checkpoint_id))
    except CedanaError as exc:
        warnings.append(f"could not label pod {target_pod} with its checkpoint: "
                        f"{exc.one_line()}")
    if delete_source:
        if (source.get("metadata") or {}).get("ownerReferences"):
            owner = source["metadata"]["ownerReferences"][0]
            warnings.append(f"pod {pod} is managed by {owner.get('kind')} {owner.get('name')}, "
                            "which will create a fresh replacement")
        kube.delete_pod(namespace, pod)
    return warnings


def _migrated_name(pod: str) -> str:
    suffix = "-migrated"
    return pod[:253 - len(suffix)] + suffix


# -- versions ---------------------------------------------------------------------------------
def helper_versions(kube: KubeClient) -> tuple[list[dict[str, Any]], list[CedanaError]]:
    """A row per node: its helper's, runc's and CRIU's versions (or why it did not answer)."""
    def row(helper: HelperPod, info: dict[str, Any], error: CedanaError | None = None
            ) -> list[dict[str, Any]]:
        return [{"node": helper.node, "pod": helper.name, "ready": helper.ready,
                 "helper": info.get("helper", ""), "runc": info.get("runc", ""),
                 "criu": info.get("criu", ""), "error": error.one_line() if error else ""}]

    return gather(lambda helper: row(helper, HelperClient(kube, helper).version()),
                  require_helpers(kube), failed=lambda helper, error: row(helper, {}, error))
