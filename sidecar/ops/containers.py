"""The containers of this node, as the helper lists and addresses them.

Nothing a caller says about a container is believed: the runc root must be one the
administrator configured (a caller-named directory could hold a state.json of its making), and
a container the runtime describes is acted on only when the Kubernetes API knows it: a pod of
that name in that namespace, scheduled on this node, whose status names this very container ID
and a start time that matches the process (pid reuse)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from kubectl_cedana import podspec
from sidecar.config import HelperConfig
from sidecar.errors import (
    ContainerNotFound,
    ContainerNotRunning,
    HelperError,
    InvalidRequest,
    KubernetesUnavailable,
)
from sidecar.kube.api import KubeAPI
from sidecar.node import proctree
from sidecar.node.discovery import (
    RuncContainer,
    find_container,
    list_containers,
    load_spec,
    validate_root,
)
from sidecar.ops.context import Helper

log = logging.getLogger(__name__)

#: the API's startedAt has whole seconds, the kernel's boot time too
START_TOLERANCE_S = 3.0
#: the init process exists from `runc create` on, the API's startedAt is `runc start`: on a
#: busy node (a 4 GiB program's pod among many starting) seconds apart. A process that started
#: before the container did cannot be a reused pid (that starts after); one that started after
#: it by more than START_TOLERANCE_S can
CREATE_TO_START_S = 120.0


def allowed_roots(config: HelperConfig, requested: str | Path | None) -> tuple[Path, ...]:
    """The runtime root a request names (one the administrator configured), else every
    configured one this node has (a CRI-O node has crun's and runc's, a containerd node its
    runc root): the container is looked for in each."""
    if requested:
        return (allowed_root(config, requested),)
    present = tuple(r for r in config.allowed_runtime_roots if r.is_dir())
    return present or (validate_root(config.runtime_root),)


def allowed_root(config: HelperConfig, requested: str | Path | None) -> Path:
    """The runtime root a request names (one the administrator configured), else the default."""
    if not requested:
        return validate_root(config.runtime_root)
    allowed = {os.path.realpath(r): r for r in config.allowed_runtime_roots}
    real = os.path.realpath(requested) if os.path.isabs(str(requested)) else ""
    if real not in allowed:
        raise InvalidRequest(
            f"root {str(requested)!r} is not a runtime root of this helper (configured: "
            f"{', '.join(str(r) for r in config.allowed_runtime_roots)})", fields=["root"])
    return validate_root(allowed[real])


@dataclass(frozen=True)
class Containers:
    """The containers under configured runtime roots, found by the runtime's annotations and,
    when the helper has the Kubernetes API, checked against it before anything is done."""

    #: one root (a request named it) or several (all this node has)
    roots: tuple[Path, ...] | Path
    kube: KubeAPI | None = None
    node_name: str = ""
    #: the pods the API answered for the containers found, by (namespace, name)
    pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict, compare=False)

    def find(self, namespace: str, sandbox: str, container: str) -> RuncContainer:
        target = find_container(self.roots, namespace, sandbox, container)
        if target.alive:
            _same_process(target)
            if self.kube is not None:
                self.pods[(namespace, sandbox)] = _known_to_kubernetes(self.kube, self.node_name,
                                                                       target)
        return target

    def list(self, namespace: str) -> list[RuncContainer]:
        return list_containers(self.roots, namespace)


def containers_of(helper: Helper, requested_root: str | None) -> Containers:
    """The containers a request may address: under an allowed root, checked with the API."""
    return Containers(allowed_roots(helper.config, requested_root), helper.kube,
                      helper.config.node_name)


def list_namespace(helper: Helper, namespace: str, root: str | None) -> list[dict[str, Any]]:
    """The Kubernetes containers of one namespace under the runtime roots (GET /list)."""
    return [c.to_dict() for c in containers_of(helper, root).list(namespace)]


def _same_process(target: RuncContainer) -> None:
    """The pid runc recorded is still the container's init, not a process that reused it."""
    if target.init_start is not None and proctree.start_ticks(target.pid) != target.init_start:
        raise ContainerNotRunning(
            f"the init process {target.pid} of container {target.container_id} has exited "
            "(its pid now belongs to another process)", container_id=target.container_id)


def _started_at(status: dict[str, Any]) -> float | None:
    text = ((status.get("state") or {}).get("running") or {}).get("startedAt")
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp() if text \
            else None
    except ValueError:
        return None


def _known_to_kubernetes(kube: KubeAPI, node_name: str,
                         target: RuncContainer) -> dict[str, Any]:
    what = f"{target.namespace}/{target.sandbox_name}/{target.container_name}"
    try:
        pod = kube.get_pod(target.namespace, target.sandbox_name)
    except Exception as exc:
        raise KubernetesUnavailable(
            f"cannot ask the Kubernetes API about pod {target.namespace}/{target.sandbox_name}: "
            f"{exc}") from exc
    if pod is None:
        raise ContainerNotFound(
            f"container {target.container_id} says it belongs to pod {target.namespace}/"
            f"{target.sandbox_name}, which the Kubernetes API does not have",
            container_id=target.container_id)
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    if spec.get("nodeName") != node_name:
        raise ContainerNotFound(
            f"pod {target.namespace}/{target.sandbox_name} runs on node "
            f"{spec.get('nodeName') or '(none)'}, not on this helper's node {node_name}")
    statuses = [s for key in ("containerStatuses", "initContainerStatuses",
                              "ephemeralContainerStatuses") for s in status.get(key) or []]
    named = [s for s in statuses if s.get("name") == target.container_name]
    ids = {str(s.get("containerID") or "").partition("://")[2] for s in named}
    if target.container_id not in ids:
        raise ContainerNotFound(
            f"the Kubernetes API does not list container {target.container_id} as "
            f"{what} (its status names {', '.join(sorted(i for i in ids if i)) or 'none'})",
            container_id=target.container_id)
    started = next((_started_at(s) for s in named
                    if str(s.get("containerID") or "").endswith(target.container_id)), None)
    process_started = proctree.start_time(target.pid)
    if started is not None and process_started is not None \
            and not -CREATE_TO_START_S <= process_started - started <= START_TOLERANCE_S:
        raise ContainerNotFound(
            f"container {what} started at {started:.0f} per the Kubernetes API, but its init "
            f"process {target.pid} started at {process_started:.0f}",
            container_id=target.container_id)
    return pod


def recorded_pod(pod: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a checkpoint keeps of its pod, so that a placeholder can be made from it later
    (the source may be gone by then): its identity, labels, annotations, owners and spec."""
    if not pod:
        return None
    meta = pod.get("metadata") or {}
    return {"metadata": {k: meta[k] for k in ("name", "namespace", "uid", "labels",
                                               "annotations", "ownerReferences") if k in meta},
            "spec": pod.get("spec") or {}}


def programs_of(helper: Helper, namespace: str, pod: str, names: list[str]
                ) -> dict[str, list[str]]:
    """Each named container's program as it runs (its OCI spec's process.args, the image's
    entrypoint included), for those found: what a placeholder runs afresh when restarted."""
    found = {}
    containers = containers_of(helper, None)
    for name in names:
        try:
            process = load_spec(containers.find(namespace, pod, name)).get("process") or {}
        except (HelperError, OSError, ValueError, AttributeError):
            continue
        args = process.get("args") if isinstance(process, dict) else None
        if isinstance(args, list) and args:
            # a restored pod runs its program under cedana-pause: the program alone
            program = podspec.unwrap_command([str(a) for a in args])
            if program:
                found[name] = program
    return found
