"""Objects created without the cedana.io/node label (a plain `kubectl apply`): the helper of
the node they concern labels them, and then reconciles them like the others. The label is only
a routing hint: every reconciler checks the pod is really on its node before acting."""
from __future__ import annotations

from typing import Any

from kubectl_cedana.contract import (
    CHECKPOINT_ID_KEY,
    FINAL_PHASES,
    NODE_LABEL,
    Code,
)
from sidecar.kube.objects import Conflict, Gone
from sidecar.reconcile.common import CHECKPOINTS, MIGRATIONS, Ctx, audit, failed, meta, spec, status
from sidecar.reconcile.restores import checkpoint_of

#: an unclaimed object whose pod or checkpoint nobody finds is failed after this long
UNCLAIMED_S = 30.0


def node_of(ctx: Ctx, plural: str, obj: dict[str, Any]) -> str | None:
    """The node whose helper acts on this object; None when it cannot be known (yet)."""
    namespace, sp = str(meta(obj)["namespace"]), spec(obj)
    if plural in (CHECKPOINTS, MIGRATIONS):
        pod = ctx.objects.get_pod(namespace, str(sp.get("podName") or ""))
        return str((pod or {}).get("spec", {}).get("nodeName") or "") or None
    target = sp.get("target") or {}
    if target.get("podName"):
        pod = ctx.objects.get_pod(namespace, str(target["podName"]))
        return str((pod or {}).get("spec", {}).get("nodeName") or "") or None
    new_pod = sp.get("newPod") or {}
    if new_pod.get("node"):
        return str(new_pod["node"])
    # the checkpoint's own node
    checkpoint_id, source_namespace = checkpoint_of(ctx, obj)
    found = ctx.objects.find(CHECKPOINTS, source_namespace,
                             f"{CHECKPOINT_ID_KEY}={checkpoint_id}")
    return str(status(found[0]).get("node") or "") or None if found else None


def claim(ctx: Ctx, plural: str, obj: dict[str, Any]) -> None:
    md = meta(obj)
    if md.get("deletionTimestamp") or (md.get("labels") or {}).get(NODE_LABEL) \
            or status(obj).get("phase") in FINAL_PHASES:
        return
    try:
        node = node_of(ctx, plural, obj)
    except Exception:  # noqa: BLE001 - not known yet (a Checkpoint still running): later
        node = None
    if node == ctx.node:
        try:
            ctx.objects.patch_meta(plural, obj, {"labels": {NODE_LABEL: ctx.node}})
            audit("claim", obj, "claimed")
        except (Conflict, Gone):
            pass  # changed meanwhile: the next event decides again
        return
    if node is None and _age_s(obj) > UNCLAIMED_S:
        # no helper can find what it names: every helper may say so, the first one wins
        try:
            ctx.objects.patch_status(plural, obj, failed(
                obj, Code.NOT_FOUND, "no node helper found the pod or checkpoint this object "
                "names (is it running? is the helper installed on its node?)"),
                precondition=True)
        except (Conflict, Gone):
            pass


def _age_s(obj: dict[str, Any]) -> float:
    from datetime import UTC, datetime

    created = str(meta(obj).get("creationTimestamp") or "")
    try:
        then = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return (datetime.now(UTC) - then).total_seconds()
