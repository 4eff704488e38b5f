"""The placeholder ("sleeping") pod a checkpoint is restored into, built from the checkpointed
pod's spec. Shared by the plugin and the node helper (which makes the new pods of Restore and
Migration objects): standard library only, no I/O."""
from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from kubectl_cedana.contract import (
    CHECKPOINT_ID_KEY,
    MANAGED_BY,
    RESTORE_SESSION_KEY,
    SOURCE_CONTAINER_KEY,
    SOURCE_NODE_KEY,
    SOURCE_POD_KEY,
)

#: the placeholder's command: a shell that only sleeps (the image must contain /bin/sh)
SLEEP_COMMAND = ["/bin/sh", "-c", "while true; do sleep 3600; done"]
#: pod annotations that change how the container is confined; the restored process inherits
#: the placeholder's confinement, so these follow the spec
_SECURITY_ANNOTATION_PREFIXES = (
    "container.apparmor.security.beta.kubernetes.io/",
    "seccomp.security.alpha.kubernetes.io/",
    "container.seccomp.security.alpha.kubernetes.io/",
)
#: fields of the source spec that make no sense for a pod pinned to a node or that admission
#: computes (and rejects when they are given and disagree)
_DROPPED_SPEC_FIELDS = ("initContainers", "ephemeralContainers", "nodeSelector", "affinity",
                        "topologySpreadConstraints", "priority", "preemptionPolicy", "overhead",
                        "schedulingGates")
_DROPPED_CONTAINER_FIELDS = ("args", "livenessProbe", "readinessProbe", "startupProbe",
                             "lifecycle")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


class NoSuchContainer(KeyError):
    """The source pod has no container of that name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "no such container"


def valid_label_value(value: str) -> bool:
    return len(value) <= 63 and bool(_LABEL_VALUE.match(value))


def _name(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("name", ""))


def _namespace(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("namespace", ""))


def build_placeholder_pod(source: Mapping[str, Any], container: str, name: str, *, node: str,
                          checkpoint_id: str = "", namespace: str = "",
                          session: str = "") -> dict[str, Any]:
    """A pod that can receive a checkpoint of `container` of `source`: same image, env,
    mounts, volumes, resources and security settings, but the command only sleeps.

    - only the checkpointed container is kept (init containers already ran in the source;
      other containers would start afresh, not restored);
    - probes and lifecycle hooks are removed: they would judge or poke a sleeping shell;
    - hostPort is removed from ports (the source may still hold it on the same node);
    - the pod is pinned to `node` with spec.nodeName (a local checkpoint lives on that node's
      disk), so scheduling constraints are dropped;
    - the source's labels are not copied: they would put the placeholder behind the source's
      Services and let its ReplicaSet adopt (and possibly delete) it.
    """
    source_spec = copy.deepcopy(dict(source.get("spec") or {}))
    template = next((c for c in source_spec.get("containers") or []
                     if c.get("name") == container), None)
    if template is None:
        raise NoSuchContainer(f'container "{container}" not found in pod "{_name(source)}"')
    sleeper = dict(template)
    for key in _DROPPED_CONTAINER_FIELDS:
        sleeper.pop(key, None)
    sleeper["command"] = list(SLEEP_COMMAND)
    if sleeper.get("ports"):
        sleeper["ports"] = [{k: v for k, v in port.items() if k not in ("hostPort", "hostIP")}
                            for port in sleeper["ports"]]
    spec = {k: v for k, v in source_spec.items() if k not in _DROPPED_SPEC_FIELDS}
    spec["containers"] = [sleeper]
    spec["nodeName"] = node

    source_name = _name(source)
    labels: dict[str, str] = dict(MANAGED_BY)
    annotations: dict[str, str] = {SOURCE_POD_KEY: source_name,
                                   SOURCE_CONTAINER_KEY: container}
    source_node = str(source_spec.get("nodeName") or "")
    if source_node:
        annotations[SOURCE_NODE_KEY] = source_node
    if valid_label_value(source_name):
        labels[SOURCE_POD_KEY] = source_name
    if checkpoint_id:
        annotations[CHECKPOINT_ID_KEY] = checkpoint_id
        if valid_label_value(checkpoint_id):
            labels[CHECKPOINT_ID_KEY] = checkpoint_id
    if session:
        annotations[RESTORE_SESSION_KEY] = session
    for key, value in ((source.get("metadata") or {}).get("annotations") or {}).items():
        if key.startswith(_SECURITY_ANNOTATION_PREFIXES):
            annotations[key] = value
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace or _namespace(source),
                     "labels": labels, "annotations": annotations},
        "spec": spec,
    }
