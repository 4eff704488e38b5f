"""Find Kubernetes containers in an OCI runtime's root by the CRI annotations of their bundles.

Every container runc manages has a directory `<root>/<id>/state.json`. Its `config.labels`
holds `bundle=<dir>` (plus the annotations as `key=value`); the bundle's config.json carries the
annotations containerd's CRI plugin or CRI-O wrote. crun (CRI-O's default runtime) keeps
`<root>/<id>/status` (pid, its start time, bundle, rootfs, cgroup path) and a copy of the
bundle's `config.json` there instead. Sandboxes (pause containers) are skipped.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar.errors import ContainerAmbiguous, ContainerNotFound, InvalidRequest
from sidecar.node import proctree

log = logging.getLogger(__name__)

# containerd's CRI plugin (also k3s, which embeds containerd)
CRI_CONTAINER_TYPE = "io.kubernetes.cri.container-type"
CRI_SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
CRI_SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
CRI_CONTAINER_NAME = "io.kubernetes.cri.container-name"
CRI_SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
CRI_IMAGE_NAME = "io.kubernetes.cri.image-name"
# CRI-O
CRIO_CONTAINER_TYPE = "io.kubernetes.cri-o.ContainerType"
CRIO_POD_NAME = "io.kubernetes.pod.name"
CRIO_POD_NAMESPACE = "io.kubernetes.pod.namespace"
CRIO_CONTAINER_NAME = "io.kubernetes.container.name"
CRIO_SANDBOX_ID = "io.kubernetes.cri-o.SandboxID"
CRIO_IMAGE_NAME = "io.kubernetes.cri-o.ImageName"
CRIO_IMAGE = "io.kubernetes.cri-o.Image"

RUNNING, PAUSED, STOPPED, CREATED = "running", "paused", "stopped", "created"
#: the OCI runtimes whose state directories the helper reads, by the file each keeps there
RUNC, CRUN = "runc", "crun"
STATE_FILES = {RUNC: "state.json", CRUN: "status"}
CGROUP_V1_FREEZER = "/sys/fs/cgroup/freezer"


@dataclass(frozen=True)
class RuncContainer:
    namespace: str
    sandbox_name: str
    container_name: str
    container_id: str
    pid: int
    status: str
    image: str
    bundle: str
    rootfs: str
    sandbox_id: str
    runtime: str  # "containerd" or "cri-o": which annotation family named it
    created: str
    annotations: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    # runc's record of when its init process started (clock ticks after boot)
    init_start: int | None = field(default=None, repr=False, compare=False)
    # the OCI runtime that runs it (runc or crun) and that runtime's root it was found under
    engine: str = field(default=RUNC, compare=False)
    state_root: str = field(default="", repr=False, compare=False)

    @property
    def alive(self) -> bool:
        return self.status in (RUNNING, PAUSED)

    def to_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "sandbox_name": self.sandbox_name,
            "container_name": self.container_name,
            "container_id": self.container_id,
            "pid": self.pid,
            "status": self.status,
            "image": self.image,
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "sandbox_id": self.sandbox_id,
            "runtime": self.runtime,
            "created": self.created,
            "engine": self.engine,
        }


def validate_root(root: str | Path) -> Path:
    path = Path(root)
    if not str(root) or not path.is_absolute():
        raise InvalidRequest(f"root {str(root)!r} must be an absolute path to a runc root")
    if not path.is_dir():
        raise InvalidRequest(
            f"root {str(root)!r} is not a directory on this node; use the runc root of the "
            "node's runtime (containerd: /run/containerd/runc/k8s.io, CRI-O: /run/runc)"
        )
    return path


def _read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    return data


def _labels(state: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in (state.get("config") or {}).get("labels") or []:
        if isinstance(item, str) and "=" in item:
            key, _, value = item.partition("=")
            labels[key] = value
    return labels


def resolve_bundle(root: Path, bundle: str) -> tuple[str, str]:
    """Return (bundle path as visible here, prefix that had to be added).

    A helper pod that sees the host's / under a prefix (the seed's k3s root is
    /host/run/containerd/runc/k8s.io) finds host paths such as the bundle below one of the
    runc root's ancestors.
    """
    if not bundle or os.path.isdir(bundle):
        return bundle, ""
    for ancestor in root.parents:
        prefix = str(ancestor)
        if prefix != "/" and os.path.isdir(prefix + bundle):
            return prefix + bundle, prefix
    return bundle, ""


def _is_frozen(cgroup_paths: dict[str, str], prefix: str) -> bool:
    candidates = []
    if cgroup_paths.get("freezer"):
        candidates.append((cgroup_paths["freezer"], "freezer.state", "FROZEN"))
    if cgroup_paths.get(""):
        candidates.append((cgroup_paths[""], "cgroup.freeze", "1"))
    for directory, name, frozen_value in candidates:
        for base in (directory, prefix + directory) if prefix else (directory,):
            try:
                with open(os.path.join(base, name), encoding="utf-8") as f:
                    return f.read().strip() == frozen_value
            except OSError:
                continue
    return False


def container_status(state_dir: Path, state: dict[str, Any], prefix: str = "") -> str:
    pid = int(state.get("init_process_pid") or 0)
    if pid <= 0:
        return STOPPED
    started = proctree.start_ticks(pid)
    if started is None:
        return STOPPED
    recorded = state.get("init_process_start")
    if recorded not in (None, 0, "") and int(recorded) != started:
        return STOPPED  # the pid was reused by another process
    if (state_dir / "exec.fifo").exists():
        return CREATED
    if _is_frozen(state.get("cgroup_paths") or {}, prefix):
        return PAUSED
    return RUNNING


def _classify(annotations: dict[str, str]) -> tuple[str, str] | None:
    """(runtime family, container type) or None when no CRI annotation is present."""
    if CRI_CONTAINER_TYPE in annotations:
        return "containerd", annotations[CRI_CONTAINER_TYPE]
    if CRIO_CONTAINER_TYPE in annotations:
        return "cri-o", annotations[CRIO_CONTAINER_TYPE]
    return None


def _crun_state(state_dir: Path) -> dict[str, Any]:
    """crun's `status` and config.json copy, in the shape of runc's state.json."""
    status = _read_json(state_dir / STATE_FILES[CRUN])
    labels = [f"bundle={status.get('bundle') or ''}"]
    try:
        spec = _read_json(state_dir / "config.json")
    except (OSError, ValueError):
        spec = {}
    labels += [f"{k}={v}" for k, v in (spec.get("annotations") or {}).items()]
    cgroup = str(status.get("cgroup-path") or "")
    return {
        "id": state_dir.name,
        "init_process_pid": status.get("pid"),
        "init_process_start": status.get("process-start-time"),
        "created": status.get("created"),
        "config": {"labels": labels, "rootfs": status.get("rootfs")},
        # cgroup v1: its freezer directory (cgroup v2 is the same path under the v2 mount)
        "cgroup_paths": {"freezer": CGROUP_V1_FREEZER + "/" + cgroup.lstrip("/")} if cgroup else {},
    }


def read_container(root: Path, state_dir: Path) -> RuncContainer | None:
    """Describe one runc or crun container, or None for sandboxes and non-Kubernetes ones."""
    engine = RUNC if (state_dir / STATE_FILES[RUNC]).exists() else CRUN
    state = _read_json(state_dir / STATE_FILES[RUNC]) if engine == RUNC else _crun_state(state_dir)
    labels = _labels(state)
    bundle_label = labels.get("bundle", "")
    bundle, prefix = resolve_bundle(root, bundle_label) if bundle_label else ("", "")
    spec: dict[str, Any] = {}
    if bundle:
        try:
            spec = _read_json(Path(bundle) / "config.json")
        except (OSError, ValueError) as exc:
            log.debug("no readable config.json in bundle %s: %s", bundle, exc)
    # config.json is authoritative; runc also copies the annotations into state.json's labels
    annotations = {k: v for k, v in labels.items() if k != "bundle"}
    annotations.update({str(k): str(v) for k, v in (spec.get("annotations") or {}).items()})
    kind = _classify(annotations)
    if kind is None or kind[1] != "container":
        return None
    runtime = kind[0]
    if runtime == "containerd":
        namespace = annotations.get(CRI_SANDBOX_NAMESPACE, "")
        sandbox_name = annotations.get(CRI_SANDBOX_NAME, "")
        container_name = annotations.get(CRI_CONTAINER_NAME, "")
        sandbox_id = annotations.get(CRI_SANDBOX_ID, "")
        image = annotations.get(CRI_IMAGE_NAME, "")
    else:
        namespace = annotations.get(CRIO_POD_NAMESPACE, "")
        sandbox_name = annotations.get(CRIO_POD_NAME, "")
        container_name = annotations.get(CRIO_CONTAINER_NAME, "")
        sandbox_id = annotations.get(CRIO_SANDBOX_ID, "")
        image = annotations.get(CRIO_IMAGE_NAME) or annotations.get(CRIO_IMAGE, "")
    root_path = str((spec.get("root") or {}).get("path") or "")
    if root_path and not os.path.isabs(root_path):
        rootfs = os.path.join(bundle, root_path)
    elif root_path:
        rootfs = prefix + root_path
    else:
        rootfs = str((state.get("config") or {}).get("rootfs") or "")
    return RuncContainer(
        namespace=namespace,
        sandbox_name=sandbox_name,
        container_name=container_name,
        container_id=str(state.get("id") or state_dir.name),
        pid=int(state.get("init_process_pid") or 0),
        status=container_status(state_dir, state, prefix),
        image=image,
        bundle=bundle,
        rootfs=rootfs,
        sandbox_id=sandbox_id,
        runtime=runtime,
        created=str(state.get("created") or ""),
        annotations=annotations,
        init_start=int(state["init_process_start"]) if state.get("init_process_start") else None,
        engine=engine,
        state_root=str(root),
    )


Roots = str | Path | tuple[Path, ...]


def _roots(root: Roots) -> tuple[Path, ...]:
    return tuple(root) if isinstance(root, tuple) else (Path(root),)


def list_containers(root: Roots, namespace: str | None = None) -> list[RuncContainer]:
    """All Kubernetes workload containers under the runtime root(s), optionally of one
    namespace."""
    found: list[RuncContainer] = []
    for one in _roots(root):
        root_path = validate_root(one)
        state_files = [f for name in STATE_FILES.values() for f in root_path.glob(f"*/{name}")]
        for state_file in sorted(state_files):
            if state_file.name != STATE_FILES[RUNC] and \
                    (state_file.parent / STATE_FILES[RUNC]).exists():
                continue  # runc's, read once
            try:
                container = read_container(root_path, state_file.parent)
            except (OSError, ValueError, TypeError) as exc:
                # a container being created or deleted right now; skip it
                log.debug("skipping %s: %s", state_file, exc)
                continue
            if container is None:
                continue
            if namespace is not None and container.namespace != namespace:
                continue
            found.append(container)
    return found


def find_container(root: Roots, namespace: str, sandbox: str,
                   container: str) -> RuncContainer:
    """The one container named (namespace, pod, container) under the runtime root(s).

    A running (or paused) container wins over stopped leftovers of earlier restarts; two live
    matches are ambiguous. With only stopped matches the newest one is returned and the caller
    decides whether that is acceptable.
    """
    in_namespace = list_containers(root, namespace)
    matches = [c for c in in_namespace
               if c.sandbox_name == sandbox and c.container_name == container]
    if not matches:
        in_pod = sorted({c.container_name for c in in_namespace if c.sandbox_name == sandbox})
        if in_pod:
            hint = f"pod {sandbox!r} has containers: {', '.join(in_pod)}"
        else:
            pods = sorted({c.sandbox_name for c in in_namespace})
            hint = (f"pods with containers in {namespace!r} on this node: {', '.join(pods)}"
                    if pods else f"no containers of namespace {namespace!r} on this node")
        where = ", ".join(str(r) for r in _roots(root))
        raise ContainerNotFound(
            f"no container {container!r} of pod {sandbox!r} in namespace {namespace!r} "
            f"under runtime root {where} ({hint})"
        )
    live = [c for c in matches if c.alive]
    if len(live) > 1:
        ids = ", ".join(c.container_id for c in live)
        raise ContainerAmbiguous(
            f"{len(live)} running containers match {namespace}/{sandbox}/{container}: {ids}",
            container_ids=[c.container_id for c in live],
        )
    if live:
        return live[0]
    return max(matches, key=lambda c: c.created)


def load_spec(container: RuncContainer) -> dict[str, Any]:
    """The container's OCI runtime spec (the bundle's config.json)."""
    return _read_json(Path(container.bundle) / "config.json")
