"""What tells Kubernetes users what happened: Events on the pods, naming the user who asked
when it is known. Best effort: a failure to record never fails the operation. (The helper
changes no pod: a restored pod's provenance is in its Restore object and in these Events.)"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sidecar.errors import HelperError
from sidecar.kube.api import KubeAPI
from sidecar.registry.remote import RemoteCheckpoint

if TYPE_CHECKING:
    from sidecar.ops.checkpoint import CheckpointResult
    from sidecar.ops.restore import RestoreResult


def connect(kubeconfig: Path | None, node_name: str) -> KubeAPI | None:
    """The Kubernetes API as this helper may use it (None: no credentials, no Events)."""
    return KubeAPI.connect(kubeconfig, node_name)


def _by(user: str) -> str:
    return f" (requested by {user})" if user else ""


def checkpointed(kube: KubeAPI | None, result: CheckpointResult,
                 pushed: RemoteCheckpoint | None, requested_by: str = "") -> None:
    if kube is None:
        return
    c = result.container
    where_to = f"; pushed to {pushed.reference} ({pushed.size_bytes} bytes, " \
               f"{pushed.compression})" if pushed else f" at {result.checkpoint_path}"
    kube.event(c.namespace, c.sandbox_name, "Checkpointed",
               f"container {c.container_name} checkpointed as {result.checkpoint_id} on node "
               f"{kube.node_name} in {result.duration_ms} ms{where_to}{_by(requested_by)}")


def checkpoint_failed(kube: KubeAPI | None, namespace: str, pod: str, container: str,
                      error: HelperError, requested_by: str = "") -> None:
    if kube is not None:
        kube.event(namespace, pod, "CheckpointFailed",
                   f"checkpoint of container {container}{_by(requested_by)} failed "
                   f"({error.code}): {error.message}", warning=True)


def restored(kube: KubeAPI | None, result: RestoreResult, source: dict[str, Any],
             requested_by: str = "") -> None:
    if kube is None:
        return
    t = result.container
    source_pod = f"{source.get('namespace', '')}/{source.get('pod', '')}"
    kube.event(t.namespace, t.sandbox_name, "Restored",
               f"checkpoint {result.checkpoint_id} of {source_pod} (container "
               f"{source.get('container', '')}, node {source.get('node', '')}) restored into "
               f"container {t.container_name} in {result.duration_ms} ms{_by(requested_by)}")


def restore_failed(kube: KubeAPI | None, namespace: str, pod: str, container: str,
                   checkpoint: str, error: HelperError, requested_by: str = "") -> None:
    if kube is not None:
        kube.event(namespace, pod, "RestoreFailed",
                   f"restore of checkpoint {checkpoint} into container {container}"
                   f"{_by(requested_by)} failed ({error.code}): {error.message}", warning=True)
