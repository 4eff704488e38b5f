"""Pure functions over pod objects for the plugin's commands: picking the container a
command names and judging whether it runs, with the plugin's errors. No I/O here; what the
node helper needs too is in kubectl_cedana/podspec.py.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubectl_cedana.errors import ConflictError, NotFoundError, UsageError
from kubectl_cedana.podspec import (
    container_status,
    parse_container_id,
    pod_containers,
    pod_name,
    pod_namespace,
)


@dataclass(frozen=True)
class ContainerRef:
    """One container of one pod, with where it runs."""

    namespace: str
    pod: str
    container: str
    node: str
    container_id: str = ""
    runtime: str = ""
    image: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"namespace": self.namespace, "pod": self.pod, "container": self.container,
                "node": self.node, "container_id": self.container_id, "runtime": self.runtime,
                "image": self.image}


def select_container(pod: Mapping[str, Any], wanted: str | None) -> str:
    """The container named by -c (a native sidecar too), or the only one; several and no -c
    is a usage error."""
    names = pod_containers(pod)
    name = pod_name(pod)
    if wanted:
        if wanted not in names:
            raise NotFoundError(f'container "{wanted}" not found in pod "{name}"',
                                hint=f"containers: {', '.join(names) or 'none'}")
        return wanted
    if len(names) == 1:
        return names[0]
    if not names:
        raise NotFoundError(f'pod "{name}" has no containers')
    raise UsageError(f'pod "{name}" has {len(names)} containers: {", ".join(names)}',
                     hint="choose one with -c CONTAINER")


def running_pod(pod: Mapping[str, Any]) -> str:
    """The node of a running pod; raises ConflictError unless it is scheduled and running."""
    name = pod_name(pod)
    node = str((pod.get("spec") or {}).get("nodeName") or "")
    phase = str((pod.get("status") or {}).get("phase") or "Unknown")
    if not node:
        raise ConflictError(f'pod "{name}" is not scheduled to a node yet (phase {phase})')
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        raise ConflictError(f'pod "{name}" is being deleted')
    if phase != "Running":
        raise ConflictError(f'pod "{name}" is not running (phase {phase})')
    return node


def running_container(pod: Mapping[str, Any], container: str) -> ContainerRef:
    """The container as a ContainerRef; raises ConflictError unless pod and container run."""
    name, namespace = pod_name(pod), pod_namespace(pod)
    node = running_pod(pod)
    status = container_status(pod, container)
    state = status.get("state") or {}
    if "running" not in state:
        what = next(iter(state), "unknown")
        reason = (state.get(what) or {}).get("reason") or ""
        raise ConflictError(f'container "{container}" of pod "{name}" is not running '
                            f"({what}{': ' + reason if reason else ''})")
    runtime, ident = parse_container_id(status.get("containerID"))
    image = ""
    spec = pod.get("spec") or {}
    for spec_container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        if spec_container.get("name") == container:
            image = str(spec_container.get("image") or "")
    return ContainerRef(namespace=namespace, pod=name, container=container, node=node,
                        container_id=ident, runtime=runtime, image=image)


def container_rows(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    """`list`'s rows for one pod: each container with its node, state and runtime ID, as the
    kubelet reports them in the pod's status."""
    spec = pod.get("spec") or {}
    node = str(spec.get("nodeName") or "")
    deleting = bool((pod.get("metadata") or {}).get("deletionTimestamp"))
    rows = []
    for container in spec.get("containers") or []:
        name = str(container.get("name") or "")
        status = container_status(pod, name)
        state = status.get("state") or {}
        what = next(iter(state), "")
        runtime, ident = parse_container_id(status.get("containerID"))
        rows.append({
            "namespace": pod_namespace(pod), "pod": pod_name(pod), "container": name,
            "node": node, "status": "terminating" if deleting and what == "running"
            else what or "unknown",
            "reason": str((state.get(what) or {}).get("reason") or ""),
            "ready": bool(status.get("ready")),
            "restarts": int(status.get("restartCount") or 0),
            "container_id": ident, "runtime": runtime,
            "image": str(container.get("image") or ""),
        })
    return rows
