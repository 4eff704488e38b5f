"""What happens around a checkpoint or restore: the remote copy, pulling a remote checkpoint
before a restore, the catalogue of local and remote checkpoints, retention, and the Events and
annotations that tell Kubernetes users what happened."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from kubectl_cedana.contract import (
    CHECKPOINT_ID_KEY,
    SOURCE_CONTAINER_KEY,
    SOURCE_NODE_KEY,
    SOURCE_POD_KEY,
)
from sidecar.config import HelperConfig
from sidecar.errors import CheckpointNotFound, HelperError, InvalidRequest
from sidecar.kube.api import KubeAPI
from sidecar.node import criu_stats
from sidecar.ops.checkpoint import CheckpointResult
from sidecar.ops.restore import RestoreResult
from sidecar.registry.remote import RemoteCheckpoint, RemoteStore, check_compression, remote_entry
from sidecar.storage import store
from sidecar.storage.catalogue import Catalogue

log = logging.getLogger(__name__)

# -- remote --------------------------------------------------------------------------------------
def remote_store(config: HelperConfig) -> RemoteStore | None:
    if not config.remote_repository:
        return None
    return RemoteStore(config.remote_repository, config.registry)


def wants_remote(config: HelperConfig, storage: str | None, checkpoint_path: str | None) -> bool:
    """The seed's rule: an empty checkpoint_path means remote (when this node has a registry).
    `storage` says it explicitly; checked before anything is dumped."""
    if storage == "remote" and not config.remote_repository:
        raise InvalidRequest("storage \"remote\" needs a checkpoint registry; this helper has "
                             "none configured (cedana-helper serve --checkpoint-repository)",
                             fields=["storage"])
    if storage in ("local", "remote"):
        return storage == "remote"
    return not checkpoint_path and bool(config.remote_repository)


def push(config: HelperConfig, result: CheckpointResult, compression: str | None
         ) -> RemoteCheckpoint:
    remote = remote_store(config)
    assert remote is not None
    manifest = store.load_manifest(result.checkpoint_path)
    pushed = remote.push(result.checkpoint_path, manifest, check_compression(compression))
    Catalogue(config.checkpoint_dir).merge(result.checkpoint_id, {
        "remote": {"reference": pushed.reference, "digest": pushed.digest,
                   "size_bytes": pushed.size_bytes, "compression": pushed.compression}})
    return pushed


def ensure_local(config: HelperConfig, checkpoint_id: str) -> dict[str, Any] | None:
    """Pull a checkpoint this node does not hold from the registry; returns what was pulled."""
    catalogue = Catalogue(config.checkpoint_dir)
    try:
        entry = catalogue.get(checkpoint_id)
        if Path(entry["path"]).is_dir():
            return None
    except CheckpointNotFound:
        entry = None
    remote = remote_store(config)
    if remote is None:
        if entry is None:
            raise CheckpointNotFound(
                f"no checkpoint with id {checkpoint_id} on node {config.node_name}, and this "
                "helper has no checkpoint registry to look in", checkpoint_id=checkpoint_id)
        return None
    _check_id(checkpoint_id)
    final_dir = config.checkpoint_dir / checkpoint_id
    manifest, image, digest = remote.pull(checkpoint_id, final_dir)
    layer = image["layers"][0]
    source = manifest.source
    catalogue.add({
        "id": checkpoint_id, "path": str(final_dir), "namespace": source.get("namespace", ""),
        "pod": source.get("pod", ""), "container": source.get("container", ""),
        "container_id": source.get("container_id", ""), "image": source.get("image", ""),
        "node": source.get("node", ""), "size_bytes": store.directory_size(final_dir),
        "created": manifest.created, "status": "complete", "pulled": True,
        "pulled_to": config.node_name, "options": manifest.criu_options, "restores": [],
        "remote": {"reference": remote.name(checkpoint_id), "digest": digest,
                   "size_bytes": int(layer.get("size") or 0),
                   "compression": (image.get("annotations") or {}).get(
                       "io.cedana.checkpoint.compression", "")},
    })
    return {"reference": remote.name(checkpoint_id), "digest": digest,
            "size_bytes": int(layer.get("size") or 0)}


def _check_id(checkpoint_id: str) -> None:
    if not checkpoint_id or "/" in checkpoint_id or checkpoint_id.startswith(".") or len(
            checkpoint_id) > 128 or not all(c.isalnum() or c in "-_." for c in checkpoint_id):
        raise InvalidRequest(f"checkpoint_id {checkpoint_id!r} is not a checkpoint id",
                             fields=["checkpoint_data.checkpoint_id"])


# -- catalogue -----------------------------------------------------------------------------------
def where(entry: dict[str, Any]) -> str:
    local = bool(entry.get("path")) and os.path.isdir(str(entry.get("path")))
    remote = bool(entry.get("remote"))
    return "local+remote" if local and remote else "remote" if remote else "local"


def list_checkpoints(config: HelperConfig, include_remote: bool) -> list[dict[str, Any]]:
    entries = {e["id"]: dict(e) for e in Catalogue(config.checkpoint_dir).list()}
    remote = remote_store(config) if include_remote else None
    if remote is not None:
        for found in remote.list():
            known = entries.get(found["id"])
            if known is None:
                entries[found["id"]] = found
            else:
                known["remote"] = {**found["remote"], **(known.get("remote") or {})}
                known.setdefault("compression", found.get("compression"))
    for entry in entries.values():
        entry["where"] = where(entry)
        if entry.get("remote"):
            entry.setdefault("compression", entry["remote"].get("compression", ""))
        entry.setdefault("compression", "none")
    return sorted(entries.values(), key=lambda e: str(e.get("created", "")))


def inspect(config: HelperConfig, checkpoint_id: str) -> dict[str, Any]:
    catalogue = Catalogue(config.checkpoint_dir)
    try:
        entry = catalogue.get(checkpoint_id)
    except CheckpointNotFound:
        remote = remote_store(config)
        if remote is None:
            raise
        image, digest = remote.manifest(checkpoint_id)
        entry = remote_entry(image, digest, remote.name(checkpoint_id))
        entry["image_manifest"] = image
    path = Path(str(entry.get("path", "")))
    entry["present"] = bool(entry.get("path")) and path.is_dir()
    if entry["present"]:
        try:
            entry["manifest"] = store.load_manifest(path).to_dict()
        except HelperError as exc:
            entry["manifest_error"] = exc.message
        stats = criu_stats.read(path / "stats-dump")
        if stats is not None:
            entry["criu_stats"] = stats
    entry["where"] = where(entry)
    return entry


def delete(config: HelperConfig, checkpoint_id: str) -> dict[str, Any]:
    """Delete local files and the remote image; 404 when neither exists."""
    catalogue = Catalogue(config.checkpoint_dir)
    local: dict[str, Any] | None
    try:
        local = catalogue.delete(checkpoint_id)
    except CheckpointNotFound:
        local = None
    remote_deleted = False
    remote = remote_store(config)
    if remote is not None:
        remote_deleted = remote.delete(checkpoint_id)
    if local is None and not remote_deleted:
        raise CheckpointNotFound(f"no checkpoint with id {checkpoint_id} on node "
                                 f"{config.node_name}" + (" nor in its registry" if remote
                                                          else ""),
                                 checkpoint_id=checkpoint_id)
    path = (local or {}).get("path")
    return {"deleted": True, "checkpoint_id": checkpoint_id, "path": path,
            "removed_files": bool(path) and not os.path.exists(str(path)),
            "removed_remote": remote_deleted}


# -- retention -----------------------------------------------------------------------------------
def plan_retention(entries: list[dict[str, Any]], max_per_container: int,
                   max_total_bytes: int) -> list[dict[str, Any]]:
    """Which entries go, oldest first: beyond N per container, then until the node's total
    local size fits. Pure, so it can be tested on its own."""
    ordered = sorted(entries, key=lambda e: str(e.get("created", "")))
    doomed: list[dict[str, Any]] = []
    if max_per_container > 0:
        groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for entry in ordered:
            key = (str(entry.get("namespace")), str(entry.get("pod")),
                   str(entry.get("container")))
            groups.setdefault(key, []).append(entry)
        for group in groups.values():
            doomed.extend(group[:max(0, len(group) - max_per_container)])
    if max_total_bytes > 0:
        ids = {e["id"] for e in doomed}
        total = sum(int(e.get("size_bytes") or 0) for e in ordered if e["id"] not in ids)
        for entry in ordered:
            if total <= max_total_bytes:
                break
            if entry["id"] in ids:
                continue
            doomed.append(entry)
            ids.add(entry["id"])
            total -= int(entry.get("size_bytes") or 0)
    return sorted(doomed, key=lambda e: str(e.get("created", "")))


def apply_retention(config: HelperConfig, max_per_container: int | None = None,
                    max_total_bytes: int | None = None, dry_run: bool = False
                    ) -> list[dict[str, Any]]:
    per_container = config.max_checkpoints_per_container if max_per_container is None \
        else max_per_container
    total = config.max_total_bytes if max_total_bytes is None else max_total_bytes
    if per_container <= 0 and total <= 0:
        return []  # no limits: nothing to read after every checkpoint
    entries = [e for e in Catalogue(config.checkpoint_dir).list()
               if e.get("status", "complete") == "complete" and not e.get("pulled")]
    doomed = plan_retention(entries, per_container, total)
    removed = []
    for entry in doomed:
        record = {"id": entry["id"], "pod": entry.get("pod"), "container": entry.get("container"),
                  "created": entry.get("created"), "size_bytes": entry.get("size_bytes"),
                  "remote": bool(entry.get("remote"))}
        if not dry_run:
            try:
                delete(config, entry["id"])
            except HelperError as exc:
                record["error"] = exc.message
                log.warning("retention could not delete %s: %s", entry["id"], exc.message)
        removed.append(record)
    if removed and not dry_run:
        log.info("retention removed %d checkpoint(s)", len(removed),
                 extra={"removed": [r["id"] for r in removed]})
    return removed


# -- events and provenance -----------------------------------------------------------------------
def checkpointed(kube: KubeAPI | None, result: CheckpointResult,
                 pushed: RemoteCheckpoint | None) -> None:
    if kube is None:
        return
    c = result.container
    where_to = f"; pushed to {pushed.reference} ({pushed.size_bytes} bytes, " \
               f"{pushed.compression})" if pushed else f" at {result.checkpoint_path}"
    kube.event(c.namespace, c.sandbox_name, "Checkpointed",
               f"container {c.container_name} checkpointed as {result.checkpoint_id} on node "
               f"{kube.node_name} in {result.duration_ms} ms{where_to}")


def checkpoint_failed(kube: KubeAPI | None, namespace: str, pod: str, container: str,
                      error: HelperError) -> None:
    if kube is not None:
        kube.event(namespace, pod, "CheckpointFailed",
                   f"checkpoint of container {container} failed ({error.code}): {error.message}",
                   warning=True)


def restored(kube: KubeAPI | None, result: RestoreResult, source: dict[str, Any]) -> None:
    if kube is None:
        return
    t = result.container
    source_pod = f"{source.get('namespace', '')}/{source.get('pod', '')}"
    kube.event(t.namespace, t.sandbox_name, "Restored",
               f"checkpoint {result.checkpoint_id} of {source_pod} (container "
               f"{source.get('container', '')}, node {source.get('node', '')}) restored into "
               f"container {t.container_name} in {result.duration_ms} ms")
    kube.annotate_pod(t.namespace, t.sandbox_name, {
        CHECKPOINT_ID_KEY: result.checkpoint_id,
        SOURCE_POD_KEY: source_pod,
        SOURCE_CONTAINER_KEY: str(source.get("container", "")),
        SOURCE_NODE_KEY: str(source.get("node", "")),
    })


def restore_failed(kube: KubeAPI | None, namespace: str, pod: str, container: str,
                   checkpoint: str, error: HelperError) -> None:
    if kube is not None:
        kube.event(namespace, pod, "RestoreFailed",
                   f"restore of checkpoint {checkpoint} into container {container} failed "
                   f"({error.code}): {error.message}", warning=True)


def source_of(config: HelperConfig, checkpoint_id: str) -> dict[str, Any]:
    try:
        entry = Catalogue(config.checkpoint_dir).get(checkpoint_id)
    except CheckpointNotFound:
        return {}
    return {k: entry.get(k, "") for k in ("namespace", "pod", "container", "node")}

