"""What tells Kubernetes users what happened: Events on the pods and the provenance annotations
of a restored pod. Best effort: a failure to record never fails the operation."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubectl_cedana.contract import (
    CHECKPOINT_ID_KEY,
    SOURCE_CONTAINER_KEY,
    SOURCE_NODE_KEY,
    SOURCE_POD_KEY,
)
from sidecar.errors import HelperError
from sidecar.kube.api import KubeAPI
from sidecar.registry.remote import RemoteCheckpoint

if TYPE_CHECKING:
    from sidecar.ops.checkpoint import CheckpointResult
    from sidecar.ops.restore import RestoreResult


def connect(kubeconfig: Path | None, node_name: str) -> KubeAPI | None:
    """The Kubernetes API as this helper may use it (None: no credentials, no Events)."""
    return KubeAPI.connect(kubeconfig, node_name)


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
