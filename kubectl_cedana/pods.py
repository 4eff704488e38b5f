"""Pure functions over pod objects (dicts as the API server returns them).

Picking a container, reading its runtime ID, judging whether it runs, and building the
placeholder ("sleeping") pod a checkpoint is restored into. No I/O here.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubectl_cedana.contract import (
    CHECKPOINT_ID_KEY,
    MANAGED_BY,
    RESTORE_SESSION_KEY,
    SOURCE_CONTAINER_KEY,
    SOURCE_NODE_KEY,
    SOURCE_POD_KEY,
)
from kubectl_cedana.errors import CedanaError, ConflictError, NotFoundError, UsageError

#: the placeholder's command: a shell that only sleeps (the image must contain /bin/sh)
SLEEP_COMMAND = ["/bin/sh", "-c", "while true; do sleep 3600; done"]


#: pod annotations that change how the container is confined; the restored process inherits
#: the placeholder's confinement, so these follow the spec
_SECURITY_ANNOTATION_PREFIXES = (
    "container.apparmor.security.beta.kubernetes.io/",
    "seccomp.security.alpha.kubernetes.io/",
    "container.seccomp.security.alpha.kubernetes.io/",
)
#: fields of the source spec that make no sense for a pod pinned to a node by the plugin or
#: that admission computes (and rejects when they are given and disagree)
_DROPPED_SPEC_FIELDS = ("initContainers", "ephemeralContainers", "nodeSelector", "affinity",
                        "topologySpreadConstraints", "priority", "preemptionPolicy", "overhead",
                        "schedulingGates")
_DROPPED_CONTAINER_FIELDS = ("args", "livenessProbe", "readinessProbe", "startupProbe",
                             "lifecycle")
#: container states that will not turn into "running" by waiting
_HOPELESS_WAITING = {"ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName",
                     "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
                     "CrashLoopBackOff"}
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


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


def parse_container_id(container_id: str | None) -> tuple[str, str]:
    """`containerd://abc...` -> ("containerd", "abc..."); a bare ID has no runtime."""
    if not container_id:
        return "", ""
    runtime, sep, ident = container_id.partition("://")
    if not sep:
        return "", container_id
    return runtime, ident


def container_names(pod: Mapping[str, Any]) -> list[str]:
    return [str(c["name"]) for c in (pod.get("spec") or {}).get("containers") or []]


def pod_name(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("name") or "")


def pod_namespace(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("namespace") or "")


def select_container(pod: Mapping[str, Any], wanted: str | None) -> str:
    """The container named by -c, or the only one; several and no -c is a usage error."""
    names = container_names(pod)
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


def container_status(pod: Mapping[str, Any], container: str) -> dict[str, Any]:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == container:
            return dict(status)
    return {}


def running_container(pod: Mapping[str, Any], container: str) -> ContainerRef:
    """The container as a ContainerRef; raises ConflictError unless pod and container run."""
    name, namespace = pod_name(pod), pod_namespace(pod)
    node = str((pod.get("spec") or {}).get("nodeName") or "")
    phase = str((pod.get("status") or {}).get("phase") or "Unknown")
    if not node:
        raise ConflictError(f'pod "{name}" is not scheduled to a node yet (phase {phase})')
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        raise ConflictError(f'pod "{name}" is being deleted')
    if phase != "Running":
        raise ConflictError(f'pod "{name}" is not running (phase {phase})')
    status = container_status(pod, container)
    state = status.get("state") or {}
    if "running" not in state:
        what = next(iter(state), "unknown")
        reason = (state.get(what) or {}).get("reason") or ""
        raise ConflictError(f'container "{container}" of pod "{name}" is not running '
                            f"({what}{': ' + reason if reason else ''})")
    runtime, ident = parse_container_id(status.get("containerID"))
    image = ""
    for spec_container in (pod.get("spec") or {}).get("containers") or []:
        if spec_container.get("name") == container:
            image = str(spec_container.get("image") or "")
    return ContainerRef(namespace=namespace, pod=name, container=container, node=node,
                        container_id=ident, runtime=runtime, image=image)


def valid_label_value(value: str) -> bool:
    return len(value) <= 63 and bool(_LABEL_VALUE.match(value))


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
        raise NotFoundError(f'container "{container}" not found in pod "{pod_name(source)}"')
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

    source_name = pod_name(source)
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
        "metadata": {"name": name, "namespace": namespace or pod_namespace(source),
                     "labels": labels, "annotations": annotations},
        "spec": spec,
    }


def checkpoint_metadata_patch(checkpoint_id: str) -> dict[str, Any]:
    """The merge patch recording, after the fact, which checkpoint a placeholder holds."""
    patch: dict[str, Any] = {"metadata": {"annotations": {CHECKPOINT_ID_KEY: checkpoint_id}}}
    if valid_label_value(checkpoint_id):
        patch["metadata"]["labels"] = {CHECKPOINT_ID_KEY: checkpoint_id}
    return patch


def placeholder_running(pod: Mapping[str, Any], container: str) -> tuple[bool, str]:
    """(True, "") once the placeholder's container runs; (False, what it waits for) before.

    Raises CedanaError for states that waiting will not fix (image missing, no /bin/sh, the
    pod rejected by the kubelet, ...).
    """
    name = pod_name(pod)
    status = pod.get("status") or {}
    phase = str(status.get("phase") or "Pending")
    if phase in ("Failed", "Succeeded"):
        reason = status.get("reason") or ""
        message = status.get("message") or ""
        raise CedanaError(f'placeholder pod "{name}" ended (phase {phase}'
                          f"{', ' + reason if reason else ''}){': ' + message if message else ''}")
    cstatus = container_status(pod, container)
    state = cstatus.get("state") or {}
    if "running" in state and phase == "Running":
        return True, ""
    for terminated in (state.get("terminated"), (cstatus.get("lastState") or {})
                       .get("terminated")):
        if terminated:
            raise CedanaError(
                f'the placeholder\'s container "{container}" exited '
                f"({terminated.get('reason') or 'exit code ' + str(terminated.get('exitCode'))}"
                f"{': ' + terminated['message'] if terminated.get('message') else ''})",
                hint="the placeholder runs /bin/sh; an image without a shell cannot host it: "
                     "prepare a sleeping pod yourself and use --into")
    waiting = state.get("waiting") or {}
    reason = str(waiting.get("reason") or "")
    if reason in _HOPELESS_WAITING:
        message = waiting.get("message") or ""
        raise CedanaError(f'placeholder pod "{name}" cannot start: {reason}'
                          f"{': ' + message if message else ''}")
    return False, reason or phase
