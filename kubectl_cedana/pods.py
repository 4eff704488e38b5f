"""Pure functions over pod objects (dicts as the API server returns them).

Picking a container, reading its runtime ID, judging whether it runs, and building the
placeholder ("sleeping") pod a checkpoint is restored into. No I/O here.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubectl_cedana import podspec
from kubectl_cedana.contract import (
    CHECKPOINT_ID_KEY,
)
from kubectl_cedana.errors import CedanaError, ConflictError, NotFoundError, UsageError
from kubectl_cedana.podspec import SLEEP_COMMAND, valid_label_value

__all__ = ["SLEEP_COMMAND", "build_placeholder_pod", "valid_label_value"]

#: container states that will not turn into "running" by waiting
_HOPELESS_WAITING = {"ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName",
                     "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
                     "CrashLoopBackOff"}


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


def build_placeholder_pod(source: Mapping[str, Any], container: str, name: str, *, node: str,
                          checkpoint_id: str = "", namespace: str = "",
                          session: str = "") -> dict[str, Any]:
    """kubectl_cedana.podspec.build_placeholder_pod, with the plugin's error."""
    try:
        return podspec.build_placeholder_pod(source, container, name, node=node,
                                             checkpoint_id=checkpoint_id, namespace=namespace,
                                             session=session)
    except podspec.NoSuchContainer as exc:
        raise NotFoundError(str(exc)) from exc


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
