"""Retention: beyond N checkpoints per container, then beyond B bytes on the node, the oldest
go (local files and registry image alike)."""
from __future__ import annotations

import logging
from typing import Any

from sidecar.config import HelperConfig
from sidecar.errors import HelperError
from sidecar.ops.catalogue import delete
from sidecar.storage.catalogue import Catalogue

log = logging.getLogger(__name__)


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
