"""The checkpoints of this node and of its checkpoint registry: list, inspect, delete, and whose
they are (for the Events of a restore and for the callers' permissions)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sidecar.config import HelperConfig
from sidecar.errors import CheckpointNotFound, HelperError
from sidecar.node import criu_stats
from sidecar.ops.transfer import delete_remote, remote_checkpoint, remote_entries, remote_source
from sidecar.storage import signing, store
from sidecar.storage.catalogue import Catalogue
from sidecar.storage.paths import client_path


def where(entry: dict[str, Any]) -> str:
    local = bool(entry.get("path")) and os.path.isdir(str(entry.get("path")))
    remote = bool(entry.get("remote"))
    return "local+remote" if local and remote else "remote" if remote else "local"


def list_checkpoints(config: HelperConfig, include_remote: bool) -> list[dict[str, Any]]:
    entries = {e["id"]: dict(e) for e in Catalogue(config.checkpoint_dir).list()}
    if include_remote:
        for found in remote_entries(config):
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
        found = remote_checkpoint(config, checkpoint_id)
        if found is None:
            raise
        entry, entry["image_manifest"] = found
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
    remote_deleted = delete_remote(config, checkpoint_id)
    if local is None and not remote_deleted:
        raise CheckpointNotFound(f"no checkpoint with id {checkpoint_id} on node "
                                 f"{config.node_name}" + (" nor in its registry"
                                                          if config.remote_repository else ""),
                                 checkpoint_id=checkpoint_id)
    path = (local or {}).get("path")
    return {"deleted": True, "checkpoint_id": checkpoint_id, "path": path,
            "removed_files": bool(path) and not os.path.exists(str(path)),
            "removed_remote": remote_deleted}


def source_of(config: HelperConfig, checkpoint_id: str) -> dict[str, Any]:
    try:
        entry = Catalogue(config.checkpoint_dir).get(checkpoint_id)
    except CheckpointNotFound:
        return {}
    return {k: entry.get(k, "") for k in ("namespace", "pod", "container", "node")}


def source_namespace(config: HelperConfig, checkpoint_id: str | None,
                     path: str | None, namespace: str = "") -> str | None:
    """The namespace of the pod a checkpoint named by id or path was taken from; None if it
    is not known (the operation then answers checkpoint_not_found or refuses the path).

    This node's own record (its catalogue) for what it holds; otherwise the checkpoint's
    signed manifest, never what a registry's annotations or an unsigned file say: a
    checkpoint that is not signed with this helper's key is CheckpointUntrusted here already.
    A restore asks again about the namespace of the manifest it verified (ops/restore.py)."""
    catalogue = Catalogue(config.checkpoint_dir)
    if checkpoint_id:
        try:
            return str(catalogue.get(checkpoint_id).get("namespace") or "")
        except CheckpointNotFound:
            pass
        # not on this node: a restore by id would pull it from the checkpoint registry, so its
        # signed manifest is read there (errors propagate: the caller is refused, never let
        # through)
        return remote_source(config, checkpoint_id)
    if path:
        try:
            real = client_path(config.checkpoint_dir, namespace, path)
        except HelperError:
            return None
        for entry in catalogue.list():
            if entry.get("path") == str(real):
                return str(entry.get("namespace") or "")
        try:
            manifest = store.load_manifest(real)
        except HelperError:
            return None
        manifest.check_signature(signing.helper_key(config), str(real))
        return str(manifest.source.get("namespace") or "")
    return None


def namespaces(config: HelperConfig) -> list[str]:
    """Every namespace with a checkpoint in this node's catalogue."""
    return sorted({str(e.get("namespace") or "") for e in Catalogue(config.checkpoint_dir).list()})
