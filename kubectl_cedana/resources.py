"""The cedana.io objects (Checkpoint, Restore, Migration; docs/api.md#resources): where they
live in the API, the objects the plugin creates, and waiting, with a watch, until the node
helper that reconciles one has finished it.

Objects are plain dicts as the API server sends them; nothing here knows about click.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from kubectl_cedana.contract import (
    API_GROUP,
    CHECKPOINT_ID_LABEL,
    FINAL_PHASES,
    GROUP_VERSION,
    NODE_LABEL,
    REQUESTED_BY_ANNOTATION,
    Phase,
    Resource,
)
from kubectl_cedana.errors import (
    ApiError,
    ApiNotFound,
    HelperNotInstalled,
    NotFoundError,
    OperationTimeout,
    ResourceFailed,
)
from kubectl_cedana.kube import KubeClient
from kubectl_cedana.podspec import valid_label_value

ProgressFn = Callable[[str], None]
#: one watch lasts at most this long; then the object is read again and watched anew
WATCH_SECONDS = 300
POLL_SECONDS = 0.5
INSTALL_HINT = "run `kubectl cedana install`"


def _no_progress(_text: str) -> None:
    return None


# -- where they live --------------------------------------------------------------------------
def collection_path(resource: Resource, namespace: str | None) -> str:
    """The collection of one namespace, or of every namespace (None)."""
    where = f"/namespaces/{quote(namespace, safe='')}" if namespace else ""
    return f"/apis/{GROUP_VERSION}{where}/{resource.plural}"


def object_path(resource: Resource, namespace: str, name: str) -> str:
    return f"{collection_path(resource, namespace)}/{quote(name, safe='')}"


def display(resource: Resource, obj: Mapping[str, Any]) -> str:
    """kubectl's way of naming it: `checkpoint.cedana.io/counter-x7k2p`."""
    meta = obj.get("metadata") or {}
    name = meta.get("name") or f"{meta.get('generateName', '')}<generated>"
    return f"{resource.singular}.{API_GROUP}/{name}"


def name_of(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


def namespace_of(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("namespace") or "")


def status_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    return dict(obj.get("status") or {})


def phase_of(obj: Mapping[str, Any]) -> str:
    """status.phase; an object no helper has written yet is Pending."""
    return str(status_of(obj).get("phase") or Phase.PENDING)


def node_of(obj: Mapping[str, Any]) -> str:
    """The node whose helper acts: status.node once written, else the plugin's label."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return str(status_of(obj).get("node") or labels.get(NODE_LABEL) or "")


def is_final(obj: Mapping[str, Any]) -> bool:
    return phase_of(obj) in FINAL_PHASES


# -- the objects the plugin creates -----------------------------------------------------------
def new_object(resource: Resource, namespace: str, spec: dict[str, Any], *, name: str = "",
               generate_from: str = "", node: str = "", user: str = "",
               finalizers: tuple[str, ...] = ()) -> dict[str, Any]:
    """A new object of `resource`: named `name`, else `generate_from-` plus what the API server
    adds; labelled with the node whose helper must act (when the name can be a label value)
    and annotated with the requesting user (admission checks it is the creator). `finalizers`:
    set at creation, so that the helper need not add them (one API round trip less before a
    checkpoint starts) and no data exists without them."""
    metadata: dict[str, Any] = {"namespace": namespace}
    if finalizers:
        metadata["finalizers"] = list(finalizers)
    if name:
        metadata["name"] = name
    else:
        metadata["generateName"] = f"{generate_from}-"
    if node and valid_label_value(node):
        metadata["labels"] = {NODE_LABEL: node}
    if user:
        metadata["annotations"] = {REQUESTED_BY_ANNOTATION: user}
    return {"apiVersion": GROUP_VERSION, "kind": resource.kind, "metadata": metadata,
            "spec": spec}


def _not_installed(exc: ApiNotFound) -> bool:
    """A 404 without details is the API server not knowing the resource at all (no CRD);
    a missing object or namespace names itself in the Status's details."""
    return not exc.api_status.get("details")


def _missing(resource: Resource, exc: ApiNotFound, what: str) -> Exception:
    if _not_installed(exc):
        return HelperNotInstalled(f"the cedana.io API is not installed in this cluster (the API "
                                  f"server does not serve {resource.qualified})",
                                  hint=INSTALL_HINT)
    return NotFoundError(what if (exc.api_status.get("details") or {}).get("kind") ==
                         resource.plural else exc.message)


def create(kube: KubeClient, resource: Resource, obj: dict[str, Any], *,
           dry_run: bool = False) -> dict[str, Any]:
    """POST the object (server-side dry run: validated and admitted, never stored)."""
    namespace = str(obj["metadata"]["namespace"])
    try:
        return dict(kube.request("POST", collection_path(resource, namespace), body=obj,
                                 query={"dryRun": "All"} if dry_run else None))
    except ApiNotFound as exc:
        raise _missing(resource, exc, exc.message) from None


def get(kube: KubeClient, resource: Resource, namespace: str, name: str) -> dict[str, Any]:
    try:
        return dict(kube.request("GET", object_path(resource, namespace, name)))
    except ApiNotFound as exc:
        raise _missing(resource, exc, f'{resource.singular} "{name}" not found in namespace '
                                      f'"{namespace}"') from None


def list_objects(kube: KubeClient, resource: Resource, namespace: str | None, *,
                 label_selector: str = "") -> list[dict[str, Any]]:
    """The objects of one namespace (every namespace with None), each with its kind."""
    try:
        listing = kube.request("GET", collection_path(resource, namespace),
                               query={"labelSelector": label_selector or None}) or {}
    except ApiNotFound as exc:
        raise _missing(resource, exc, exc.message) from None
    items = []
    for item in listing.get("items") or []:
        item.setdefault("apiVersion", GROUP_VERSION)  # lists omit them per item
        item.setdefault("kind", resource.kind)
        items.append(dict(item))
    return items


def delete(kube: KubeClient, resource: Resource, namespace: str, name: str, *,
           dry_run: bool = False) -> dict[str, Any] | None:
    """DELETE the object; what the API server answered: the object while finalizers hold it,
    else a Status (None when it was already gone)."""
    try:
        answer = kube.request("DELETE", object_path(resource, namespace, name),
                              query={"dryRun": "All"} if dry_run else None)
    except ApiNotFound:
        return None
    return dict(answer) if isinstance(answer, dict) else None


def find_by_checkpoint_id(kube: KubeClient, namespace: str | None, checkpoint_id: str,
                          resource: Resource) -> list[dict[str, Any]]:
    """Checkpoints carrying `checkpoint_id` (the label the helper sets on success)."""
    return list_objects(kube, resource, namespace,
                        label_selector=f"{CHECKPOINT_ID_LABEL}={checkpoint_id}")


# -- failures ---------------------------------------------------------------------------------
def failure(resource: Resource, obj: Mapping[str, Any]) -> ResourceFailed:
    """The error for an object that ended Failed: its errorCode and message, one line."""
    status = status_of(obj)
    node = node_of(obj)
    message = str(status.get("message") or "no message from the helper")
    where = f" on node {node}" if node else ""
    return ResourceFailed(f"{resource.singular} {namespace_of(obj)}/{name_of(obj)} failed"
                          f"{where}: {message}", code=str(status.get("errorCode") or ""),
                          node=node, body=status)


# -- waiting ----------------------------------------------------------------------------------
def describe(resource: Resource, obj: Mapping[str, Any]) -> str:
    """A status line for the progress display: `checkpoint x: Running on node n1: dumping`."""
    status = status_of(obj)
    phase = phase_of(obj)
    node = node_of(obj)
    text = f"{resource.singular} {name_of(obj)}: {phase}"
    if not status:
        return text + (f", waiting for the cedana helper on node {node}" if node else
                       ", waiting for a cedana helper to take it")
    if node:
        text += f" on node {node}"
    latest = str(status.get("message") or "")
    if not latest:
        conditions = [c for c in status.get("conditions") or [] if c.get("message")]
        if conditions:
            latest = str(conditions[-1]["message"])
    return f"{text}: {latest}" if latest else text


def wait_final(kube: KubeClient, resource: Resource, obj: dict[str, Any], *,
               timeout: float, progress: ProgressFn = _no_progress) -> dict[str, Any]:
    """Watch the object until its phase is Succeeded or Failed, and return it then.

    Each watch starts at the resourceVersion last seen, so no change is missed; when the
    server ends a watch (its timeout, or 410 Gone for a version it no longer keeps) the
    object is read again and watched anew. Deleted meanwhile: NotFoundError; `timeout`
    seconds without an end: OperationTimeout (the helper goes on either way).
    """
    namespace, name = namespace_of(obj), name_of(obj)
    deadline = time.monotonic() + timeout
    current = obj
    version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
    while True:
        progress(describe(resource, current))
        if is_final(current):
            return current
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise OperationTimeout(
                f"{resource.singular} {namespace}/{name} did not finish within "
                f"{timeout:.0f}s ({describe(resource, current)})",
                hint=f"it goes on: kubectl -n {namespace} get {resource.qualified} {name} -w")
        resync = not version
        started = time.monotonic()
        if version:
            query = {"fieldSelector": f"metadata.name={name}", "resourceVersion": version,
                     "allowWatchBookmarks": "true"}
            for event in kube.watch(collection_path(resource, namespace), query=query,
                                    seconds=max(1, int(min(remaining, WATCH_SECONDS)))):
                kind = event.get("type")
                changed = event.get("object") or {}
                if kind == "ERROR":
                    if changed.get("code") == 410:  # too old: read it again
                        resync = True
                        break
                    raise ApiError(f"watching {resource.singular} {name}: "
                                   f"{changed.get('message') or changed}",
                                   status=int(changed.get("code") or 500),
                                   reason=str(changed.get("reason") or ""), api_status=changed)
                version = str((changed.get("metadata") or {}).get("resourceVersion") or version)
                if kind == "BOOKMARK":
                    continue
                if kind == "DELETED":
                    raise NotFoundError(f"{resource.singular} {namespace}/{name} was deleted "
                                        "before it finished")
                current = changed
                progress(describe(resource, current))
                if is_final(current):
                    return current
        if time.monotonic() - started < 1:  # a watch the server ended at once: no busy loop
            time.sleep(POLL_SECONDS)
        if resync or time.monotonic() < deadline:
            current = get(kube, resource, namespace, name)  # changes between two watches
            version = str((current.get("metadata") or {}).get("resourceVersion") or "")


def wait_deleted(kube: KubeClient, resource: Resource, namespace: str, name: str, *,
                 timeout: float, progress: ProgressFn = _no_progress) -> dict[str, Any] | None:
    """Wait until the object is gone; None then, else (after `timeout`) the object as it
    was last seen, still held by its finalizers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            current = get(kube, resource, namespace, name)
        except NotFoundError:
            return None
        finalizers = (current.get("metadata") or {}).get("finalizers") or []
        progress(f"waiting for {resource.singular} {name} to go (finalizers: "
                 f"{', '.join(finalizers) or 'none'})")
        if time.monotonic() >= deadline:
            return current
        time.sleep(POLL_SECONDS)
