"""Pure functions over pod objects (dicts as the API server returns them), shared by the plugin
and the node helper: reading a container's status and runtime ID, and building the placeholder
("sleeping") pod a checkpoint is restored into.

The node helper creates the placeholder of a Restore with `newPod` (and of a Migration) from
the pod spec it recorded when it took the checkpoint; it imports this module through
`kubectl_cedana.podspec`, so: standard library only, Python 3.9 syntax, no I/O, and errors
of its own (PodSpecError) that each side turns into its own.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any

from kubectl_cedana.contract import (
    ANNOTATION_PREFIX,
    CHECKPOINT_ID_KEY,
    MANAGED_BY,
    SOURCE_CONTAINER_KEY,
    SOURCE_NODE_KEY,
    SOURCE_POD_KEY,
)

#: kubectl's own: the container `kubectl logs` and `exec` pick when none is named
DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"
#: the placeholder's command without a pause image: a shell that only sleeps (the workload's
#: image must then contain /bin/sh)
SLEEP_COMMAND = ["/bin/sh", "-c", "while true; do sleep 3600; done"]
#: with a pause image (the node helper's): an init container copies its static cedana-pause
#: into an emptyDir every placeholder container mounts here, and runs it; nothing is needed
#: from the workload's image (sidecar/pause/cedana-pause.c)
PAUSE_DIR = "/.cedana"
PAUSE_VOLUME = "cedana-placeholder"
PAUSE_PROGRAM = PAUSE_DIR + "/cedana-pause"
PAUSE_SOURCE = "/usr/local/bin/cedana-pause"
#: how long the startup probe gives the restore (then the kubelet restarts the container,
#: which runs the program afresh)
RESTORE_WINDOW_S = 3600

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


class PodSpecError(ValueError):
    """A pod object cannot serve what was asked (no such container, ...)."""


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


def _sleeper(template: Mapping[str, Any], pause: bool = False,
             command: Sequence[str] | None = None, sidecar: bool = False) -> dict[str, Any]:
    """The placeholder of one container. With `pause`: cedana-pause sleeps in it until the
    helper restores the program beside it; its startup probe holds the source's liveness and
    readiness probes back until then; a restart of the container runs `command` (the program
    as the source ran it) afresh. preStop hooks stay; postStart hooks would poke the placeholder.
    A native `sidecar` gets no probes: the kubelet starts the pod's containers only once its
    startup probe passed, which would be never before the restore.
    Without: a sleeping /bin/sh, no probes, no hooks."""
    sleeper = dict(template)
    if not pause:
        for key in _DROPPED_CONTAINER_FIELDS:
            sleeper.pop(key, None)
        sleeper["command"] = list(SLEEP_COMMAND)
    else:
        name = str(template.get("name") or "")
        if command is None:
            command = [*(template.get("command") or []), *(template.get("args") or [])]
        for key in ("args", "startupProbe"):
            sleeper.pop(key, None)
        pre_stop = (template.get("lifecycle") or {}).get("preStop")
        sleeper.pop("lifecycle", None)
        if pre_stop:
            sleeper["lifecycle"] = {"preStop": pre_stop}
        sleeper["command"] = [PAUSE_PROGRAM, "run", name,
                              *(["--", *command] if command else [])]
        if sidecar:
            for key in ("livenessProbe", "readinessProbe"):
                sleeper.pop(key, None)
        else:
            sleeper["startupProbe"] = {"exec": {"command": [PAUSE_PROGRAM, "restored"]},
                                       "periodSeconds": 1, "timeoutSeconds": 5,
                                       "failureThreshold": RESTORE_WINDOW_S}
        sleeper["volumeMounts"] = [*(template.get("volumeMounts") or []),
                                   {"name": PAUSE_VOLUME, "mountPath": PAUSE_DIR}]
    if sleeper.get("ports"):
        sleeper["ports"] = [{k: v for k, v in port.items() if k not in ("hostPort", "hostIP")}
                            for port in sleeper["ports"]]
    return sleeper


def unwrap_command(args: Sequence[str]) -> list[str]:
    """The program a placeholder's `cedana-pause run NAME -- PROGRAM...` runs; other commands
    as they are."""
    args = list(args)
    if args[:2] == [PAUSE_PROGRAM, "run"]:
        return args[args.index("--") + 1:] if "--" in args else []
    return args


def unwrap_placeholder(pod: Mapping[str, Any]) -> dict[str, Any]:
    """A pod as it was before a restore made it a placeholder (its own containers' commands,
    without cedana-pause, its init container, volume and startup probe), so that a placeholder
    made from a restored pod (a checkpoint of a checkpoint) is like the first. The source's
    own startup probe, which the first placeholder dropped, stays dropped. Other pods as
    they are."""
    copied = copy.deepcopy(dict(pod))
    spec = copied.get("spec") or {}
    if not any(v.get("name") == PAUSE_VOLUME for v in spec.get("volumes") or []):
        return copied
    spec["volumes"] = [v for v in spec.get("volumes") or [] if v.get("name") != PAUSE_VOLUME]
    init = [c for c in spec.get("initContainers") or [] if c.get("name") != PAUSE_VOLUME]
    if init:
        spec["initContainers"] = init
    else:
        spec.pop("initContainers", None)
    ours = {"exec": {"command": [PAUSE_PROGRAM, "restored"]}}
    for container in [*(spec.get("containers") or []), *init]:
        command = unwrap_command(container.get("command") or [])
        if command:
            container["command"] = command
        else:
            container.pop("command", None)
        container["volumeMounts"] = [m for m in container.get("volumeMounts") or []
                                     if m.get("name") != PAUSE_VOLUME]
        if not container["volumeMounts"]:
            del container["volumeMounts"]
        probe = container.get("startupProbe") or {}
        if probe.get("exec") == ours["exec"]:
            container.pop("startupProbe")
    return copied


def _pause_init(image: str) -> dict[str, Any]:
    """The init container that puts cedana-pause where the placeholder's containers run it."""
    return {"name": PAUSE_VOLUME, "image": image, "imagePullPolicy": "IfNotPresent",
            "command": ["cp", PAUSE_SOURCE, PAUSE_PROGRAM],
            "volumeMounts": [{"name": PAUSE_VOLUME, "mountPath": PAUSE_DIR}],
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                          "limits": {"memory": "64Mi"}},
            "securityContext": {"runAsUser": 65534, "runAsGroup": 65534, "runAsNonRoot": True,
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                                "seccompProfile": {"type": "RuntimeDefault"}}}


def build_placeholder_pod(source: Mapping[str, Any], container: str | None, name: str, *,
                          node: str, checkpoint_id: str = "", namespace: str = "",
                          annotations: Mapping[str, str] | None = None,
                          pause_image: str = "",
                          commands: Mapping[str, Sequence[str]] | None = None
                          ) -> dict[str, Any]:
    """A pod that can receive a checkpoint of `container` of `source` (None: of every container
    of a whole-pod checkpoint): same images, env, mounts, volumes, resources and security
    settings, but the commands only sleep.

    - only the checkpointed containers are kept: one container, or for a whole pod its
      containers and native sidecars (restartable init containers, kept as such); ordinary init
      containers already ran in the source, other containers would start afresh, not restored;
    - with `pause_image` (what the node helpers do) the containers run cedana-pause, copied by
      an init container from that image, so the workload's image needs nothing (no shell);
      the source's liveness and readiness probes are kept behind a startup probe that passes
      once the restored program runs; a restart runs the program afresh (`commands`: each
      container's program as the source ran it; default its spec's command and args);
    - without it the containers run a sleeping /bin/sh, and probes and lifecycle hooks are
      removed: they would judge or poke a sleeping shell;
    - hostPort is removed from ports (the source may still hold it on the same node);
    - the pod is pinned to `node` with spec.nodeName (a local checkpoint lives on that node's
      disk), so scheduling constraints are dropped;
    - the source's labels are not copied: they would put the placeholder behind the source's
      Services and let its ReplicaSet adopt (and possibly delete) it.
    `annotations` are added to the placeholder's own (e.g. the Restore it was made for).
    """
    source = unwrap_placeholder(source)  # a restored pod's own placeholder: as its source was
    source_spec = copy.deepcopy(dict(source.get("spec") or {}))
    spec = {k: v for k, v in source_spec.items() if k not in _DROPPED_SPEC_FIELDS}
    pause = bool(pause_image)
    commands = commands or {}

    def sleeper(template: Mapping[str, Any]) -> dict[str, Any]:
        return _sleeper(template, pause, commands.get(str(template.get("name") or "")),
                        sidecar=is_native_sidecar(template))

    sidecars: list[dict[str, Any]] = []
    if container is None:
        spec["containers"] = [sleeper(c) for c in source_spec.get("containers") or []]
        sidecars = [sleeper(c) for c in source_spec.get("initContainers") or []
                    if is_native_sidecar(c)]
        if not spec["containers"]:
            raise PodSpecError(f'pod "{pod_name(source)}" has no containers')
    else:
        template = next((c for c in source_spec.get("containers") or []
                         if c.get("name") == container), None)
        if template is None:
            raise PodSpecError(f'container "{container}" not found in pod "{pod_name(source)}"')
        spec["containers"] = [sleeper(template)]
    if pause:
        spec["volumes"] = [*(spec.get("volumes") or []),
                           {"name": PAUSE_VOLUME, "emptyDir": {"sizeLimit": "16Mi"}}]
        sidecars = [_pause_init(pause_image), *sidecars]
    if sidecars:
        spec["initContainers"] = sidecars
    spec["nodeName"] = node

    source_name = pod_name(source)
    labels: dict[str, str] = dict(MANAGED_BY)
    notes: dict[str, str] = {SOURCE_POD_KEY: source_name,
                             SOURCE_CONTAINER_KEY: container or ",".join(pod_containers(source))}
    source_node = str(source_spec.get("nodeName") or "")
    if source_node:
        notes[SOURCE_NODE_KEY] = source_node
    # `kubectl logs/exec PLACEHOLDER` go to the restored program, not the pause's init container
    notes[DEFAULT_CONTAINER_ANNOTATION] = str(spec["containers"][0].get("name") or "")
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


#: controllers that count their pods by labels and owner, not by name or node: a pod of theirs
#: restored elsewhere can take its source's place (migrate --delete-source)
REPLACEABLE_OWNERS = ("ReplicaSet",)


def controller_of(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """The owner reference marked as the pod's controller, if any."""
    for owner in (pod.get("metadata") or {}).get("ownerReferences") or []:
        if owner.get("controller"):
            return dict(owner)
    return None


def take_place_refusal(pod: Mapping[str, Any]) -> str | None:
    """Why a restored copy cannot take this pod's place once it is deleted (None: it can).
    A StatefulSet starts a pod of the same name again, a DaemonSet one on the same node, a Job
    counts its pods' completions: each would run the workload twice."""
    owner = controller_of(pod)
    if owner is None or owner.get("kind") in REPLACEABLE_OWNERS:
        return None
    return (f'pod "{pod_name(pod)}" is run by {owner.get("kind")} {owner.get("name")}, which '
            "would start it again once it is deleted: only a pod of a ReplicaSet (a "
            "Deployment) or of no controller can be replaced by its restored copy; migrate "
            "without deleting the source to make a copy")


def take_place_patch(source: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch that puts a restored pod in its source's place: the source's labels
    (so its Services and its ReplicaSet's selector find it) and owners (so the ReplicaSet
    counts it instead of starting a fresh replica). Our own cedana.io/ labels stay ours."""
    meta = source.get("metadata") or {}
    labels = {k: v for k, v in (meta.get("labels") or {}).items()
              if not str(k).startswith(ANNOTATION_PREFIX)}
    patch: dict[str, Any] = {"metadata": {"labels": labels}}
    if meta.get("ownerReferences"):
        patch["metadata"]["ownerReferences"] = copy.deepcopy(meta["ownerReferences"])
    return patch


def checkpoint_metadata_patch(checkpoint_id: str) -> dict[str, Any]:
    """The merge patch recording, after the fact, which checkpoint a placeholder holds."""
    patch: dict[str, Any] = {"metadata": {"annotations": {CHECKPOINT_ID_KEY: checkpoint_id}}}
    if valid_label_value(checkpoint_id):
        patch["metadata"]["labels"] = {CHECKPOINT_ID_KEY: checkpoint_id}
    return patch
