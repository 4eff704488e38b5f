"""Pure functions over pod objects (dicts as the API server returns them), shared by the plugin
and the node helper: reading a container's status and runtime ID, building the placeholder
("sleeping") pod a checkpoint is restored into, and judging whether that placeholder runs.

The node helper creates the placeholder of a Restore with `newPod` (and of a Migration) from
the pod spec it recorded when it took the checkpoint; it imports this module through
`kubectl_cedana.podspec`, so: standard library only, Python 3.9 syntax, no I/O, and errors
of its own (PodSpecError) that each side turns into its own.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from kubectl_cedana.contract import (
    CHECKPOINT_ID_KEY,
    MANAGED_BY,
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
#: container states that will not turn into "running" by waiting
_HOPELESS_WAITING = {"ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName",
                     "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
                     "CrashLoopBackOff"}
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


class PodSpecError(ValueError):
    """A pod object cannot serve what was asked (no such container, ...)."""


class PlaceholderFailed(PodSpecError):
    """The placeholder pod will not run, whatever one waits for."""


def parse_container_id(container_id: str | None) -> tuple[str, str]:
    """`containerd://abc...` -> ("containerd", "abc..."); a bare ID has no runtime."""
    if not container_id:
        return "", ""
    runtime, sep, ident = container_id.partition("://")
    if not sep:
        return "", container_id
    return runtime, ident


def pod_name(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("name") or "")


def pod_namespace(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("namespace") or "")


def container_names(pod: Mapping[str, Any]) -> list[str]:
    return [str(c["name"]) for c in (pod.get("spec") or {}).get("containers") or []]


def is_native_sidecar(container: Mapping[str, Any]) -> bool:
    """An init container that keeps running beside the pod's containers (restartPolicy
    Always, GA in Kubernetes 1.33)."""
    return container.get("restartPolicy") == "Always"


def pod_containers(pod: Mapping[str, Any]) -> list[str]:
    """Every container that runs for the pod's lifetime, in the order the kubelet starts them:
    its native sidecars, then its containers. What a whole-pod checkpoint takes."""
    spec = pod.get("spec") or {}
    sidecars = [str(c["name"]) for c in spec.get("initContainers") or []
                if is_native_sidecar(c)]
    return sidecars + [str(c["name"]) for c in spec.get("containers") or []]


def container_status(pod: Mapping[str, Any], container: str) -> dict[str, Any]:
    status = pod.get("status") or {}
    for item in (status.get("containerStatuses") or []) + \
            (status.get("initContainerStatuses") or []):
        if item.get("name") == container:
            return dict(item)
    return {}


def valid_label_value(value: str) -> bool:
    return len(value) <= 63 and bool(_LABEL_VALUE.match(value))


def _sleeper(template: Mapping[str, Any]) -> dict[str, Any]:
    sleeper = dict(template)
    for key in _DROPPED_CONTAINER_FIELDS:
        sleeper.pop(key, None)
    sleeper["command"] = list(SLEEP_COMMAND)
    if sleeper.get("ports"):
        sleeper["ports"] = [{k: v for k, v in port.items() if k not in ("hostPort", "hostIP")}
                            for port in sleeper["ports"]]
    return sleeper


def build_placeholder_pod(source: Mapping[str, Any], container: str | None, name: str, *,
                          node: str, checkpoint_id: str = "", namespace: str = "",
                          annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A pod that can receive a checkpoint of `container` of `source` (None: of every container
    of a whole-pod checkpoint): same images, env, mounts, volumes, resources and security
    settings, but the commands only sleep.

    - only the checkpointed containers are kept: one container, or for a whole pod its
      containers and native sidecars (restartable init containers, kept as such); ordinary init
      containers already ran in the source, other containers would start afresh, not restored;
    - probes and lifecycle hooks are removed: they would judge or poke a sleeping shell;
    - hostPort is removed from ports (the source may still hold it on the same node);
    - the pod is pinned to `node` with spec.nodeName (a local checkpoint lives on that node's
      disk), so scheduling constraints are dropped;
    - the source's labels are not copied: they would put the placeholder behind the source's
      Services and let its ReplicaSet adopt (and possibly delete) it.
    `annotations` are added to the placeholder's own (e.g. the Restore it was made for).
    """
    source_spec = copy.deepcopy(dict(source.get("spec") or {}))
    spec = {k: v for k, v in source_spec.items() if k not in _DROPPED_SPEC_FIELDS}
    if container is None:
        spec["containers"] = [_sleeper(c) for c in source_spec.get("containers") or []]
        sidecars = [_sleeper(c) for c in source_spec.get("initContainers") or []
                    if is_native_sidecar(c)]
        if sidecars:
            spec["initContainers"] = sidecars
        if not spec["containers"]:
            raise PodSpecError(f'pod "{pod_name(source)}" has no containers')
    else:
        template = next((c for c in source_spec.get("containers") or []
                         if c.get("name") == container), None)
        if template is None:
            raise PodSpecError(f'container "{container}" not found in pod "{pod_name(source)}"')
        spec["containers"] = [_sleeper(template)]
    spec["nodeName"] = node

    source_name = pod_name(source)
    labels: dict[str, str] = dict(MANAGED_BY)
    notes: dict[str, str] = {SOURCE_POD_KEY: source_name,
                             SOURCE_CONTAINER_KEY: container or ",".join(pod_containers(source))}
    source_node = str(source_spec.get("nodeName") or "")
    if source_node:
        notes[SOURCE_NODE_KEY] = source_node
    if valid_label_value(source_name):
        labels[SOURCE_POD_KEY] = source_name
    if checkpoint_id:
        notes[CHECKPOINT_ID_KEY] = checkpoint_id
        if valid_label_value(checkpoint_id):
            labels[CHECKPOINT_ID_KEY] = checkpoint_id
    notes.update(annotations or {})
    for key, value in ((source.get("metadata") or {}).get("annotations") or {}).items():
        if key.startswith(_SECURITY_ANNOTATION_PREFIXES):
            notes[key] = value
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace or pod_namespace(source),
                     "labels": labels, "annotations": notes},
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

    Raises PlaceholderFailed for states that waiting will not fix (image missing, no /bin/sh,
    the pod rejected by the kubelet, ...).
    """
    name = pod_name(pod)
    status = pod.get("status") or {}
    phase = str(status.get("phase") or "Pending")
    if phase in ("Failed", "Succeeded"):
        reason = status.get("reason") or ""
        message = status.get("message") or ""
        raise PlaceholderFailed(f'placeholder pod "{name}" ended (phase {phase}'
                                f"{', ' + reason if reason else ''})"
                                f"{': ' + message if message else ''}")
    cstatus = container_status(pod, container)
    state = cstatus.get("state") or {}
    if "running" in state and phase == "Running":
        return True, ""
    for terminated in (state.get("terminated"), (cstatus.get("lastState") or {})
                       .get("terminated")):
        if terminated:
            raise PlaceholderFailed(
                f'the placeholder\'s container "{container}" exited '
                f"({terminated.get('reason') or 'exit code ' + str(terminated.get('exitCode'))}"
                f"{': ' + terminated['message'] if terminated.get('message') else ''}); "
                "the placeholder runs /bin/sh, which an image without a shell cannot host: "
                "prepare a sleeping pod yourself and restore into it")
    waiting = state.get("waiting") or {}
    reason = str(waiting.get("reason") or "")
    if reason in _HOPELESS_WAITING:
        message = waiting.get("message") or ""
        raise PlaceholderFailed(f'placeholder pod "{name}" cannot start: {reason}'
                                f"{': ' + message if message else ''}")
    return False, reason or phase
