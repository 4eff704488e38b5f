"""The helper's settings, fixed at start-up and passed down explicitly."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from kubectl_cedana.contract import DEFAULT_COMPRESSION, KUBELET_CHECKPOINT_DIR

DEFAULT_RUNTIME_ROOT = Path("/run/containerd/runc/k8s.io")
DEFAULT_CRIU_RUNC_CONFIG = Path("/etc/criu/runc.conf")
MAX_BODY_BYTES = 1024 * 1024
# where the node's own tools keep registry credentials and TLS trust
DEFAULT_DOCKER_CONFIGS = (
    Path("/root/.docker/config.json"),
    Path("/var/lib/kubelet/config.json"),  # the kubelet's own pull credentials
    Path("/run/containers/0/auth.json"),  # podman / CRI-O
    Path("/etc/containers/auth.json"),
)
DEFAULT_CONTAINERD_CONFIG = Path("/etc/containerd/config.toml")
DEFAULT_CERTS_DIRS = (
    Path("/etc/containerd/certs.d"),
    Path("/etc/docker/certs.d"),
    Path("/etc/containers/certs.d"),
)


def default_node_name() -> str:
    return os.environ.get("NODE_NAME") or socket.gethostname()


#: a container holding 1 GiB or more migrates post-copy by default
DEFAULT_POST_COPY_ABOVE_BYTES = 1 << 30


@dataclass(frozen=True)
class NodeRegistrySettings:
    """Where the node keeps registry settings (read by sidecar/registry/credentials.py)."""

    docker_configs: tuple[Path, ...] = DEFAULT_DOCKER_CONFIGS
    containerd_config: Path = DEFAULT_CONTAINERD_CONFIG
    certs_dirs: tuple[Path, ...] = DEFAULT_CERTS_DIRS


# checkpoint authenticity and size limits (docs/security.md)
GIB = 1 << 30
#: most bytes a checkpoint pulled from the registry may hold once unpacked
DEFAULT_MAX_CHECKPOINT_BYTES = 64 * GIB
#: most bytes one image layer of /restore/rootfs may take, downloaded and unpacked
DEFAULT_MAX_LAYER_BYTES = 16 * GIB

# resource limits (docs/security.md#limits)
#: checkpoints, restores and rootfs commits/applies running at once on one helper
DEFAULT_MAX_OPERATIONS = 8
#: ... of which for pods of one namespace
DEFAULT_MAX_OPERATIONS_PER_NAMESPACE = 4
#: the checkpoint directory's default quota: this share of its filesystem (cedana-helper serve)
DEFAULT_CHECKPOINT_DIR_SHARE = 0.25
#: a connection must deliver a request's complete headers this soon after it opens (or after
#: the first byte of a later request on it)
DEFAULT_HEADER_TIMEOUT_S = 10.0
#: a request's body must have arrived this soon after the helper starts reading it
DEFAULT_BODY_TIMEOUT_S = 60.0
#: an idle keep-alive connection is closed after this long
DEFAULT_KEEP_ALIVE_TIMEOUT_S = 5
#: connections open at once (uvicorn's limit_concurrency: while as many are open, or as many
#: requests run, requests are answered 503)
DEFAULT_MAX_CONNECTIONS = 64
#: a request's line and headers (beyond: 400); a bearer token may take 16 KiB of it
DEFAULT_MAX_HEADER_BYTES = 32 * 1024


@dataclass(frozen=True)
class HelperConfig:
    """Where checkpoints live, where containers are found and which binaries run them."""

    checkpoint_dir: Path
    # the runc root of requests that name none; requests may name it or one of runtime_roots
    runtime_root: Path = DEFAULT_RUNTIME_ROOT
    runtime_roots: tuple[Path, ...] = ()
    runc_path: str = "runc"
    # crun: checkpoints the containers found under a crun root (a CRI-O node's default runtime)
    crun_path: str = "crun"
    ctr_path: str = "ctr"
    criu_path: str = "criu"
    # what runc runs as CRIU for dumps: cedana-criu-guard, which dies with runc ("": criu)
    criu_guard: str = ""
    #: cedana-enter-cgroups (node/enter_cgroups.c); "" runs the Python module instead
    enter_cgroups_path: str = ""
    #: cedana-lazy-guard (node/lazy_guard.c); "" runs the Python module instead
    lazy_guard_path: str = ""
    nsenter_path: str = "nsenter"
    unshare_path: str = "unshare"
    # runc 1.1 passes this file to CRIU unless the container's `org.criu.config` annotation
    # names another; options runc has no flag for (link-remap, skip-in-flight) go here.
    criu_runc_config: Path = DEFAULT_CRIU_RUNC_CONFIG
    node_name: str = field(default_factory=default_node_name)
    dump_timeout_s: float = 600.0
    restore_timeout_s: float = 600.0
    max_body_bytes: int = MAX_BODY_BYTES
    # where this node keeps registry credentials and TLS trust (rootfs commits and pulls)
    registry: NodeRegistrySettings = field(default_factory=NodeRegistrySettings)
    default_containerd_address: str = "/run/containerd/containerd.sock"
    containerd_addresses: tuple[str, ...] = ()
    # where the node's registry credentials may be used by the rootfs routes: "HOST[/PATH]"
    # prefixes, "{namespace}" standing for the request's namespace; none: nowhere
    registry_prefixes: tuple[str, ...] = ()
    # the Kubernetes API for Events, annotations and caller checks: None means the pod's
    # service account when run in a pod, else no API
    kubeconfig: Path | None = None
    # checkpoints in a registry: "host/repo" (tag = checkpoint id); "" keeps them on the node
    remote_repository: str = ""
    default_compression: str = DEFAULT_COMPRESSION
    # retention, applied after each checkpoint (0: no limit)
    max_checkpoints_per_container: int = 0
    max_total_bytes: int = 0
    # -- checkpoint authenticity and size limits (docs/security.md) --
    # the cluster's checkpoint signing key (--signing-key); None: this node's own key, made in
    # checkpoint_dir (local checkpoints only)
    signing_key_file: Path | None = None
    max_checkpoint_bytes: int = DEFAULT_MAX_CHECKPOINT_BYTES
    max_layer_bytes: int = DEFAULT_MAX_LAYER_BYTES
    # -- resource limits (docs/security.md#limits); 0: no limit --
    # heavy operations (checkpoint, restore, rootfs commit/apply) at once: on this helper, and
    # for pods of one namespace (ops/limits.py)
    max_operations: int = DEFAULT_MAX_OPERATIONS
    max_operations_per_namespace: int = DEFAULT_MAX_OPERATIONS_PER_NAMESPACE
    # bytes the checkpoint directory may hold (checked before a dump or a pull); 0: no quota.
    # `cedana-helper serve` defaults it to DEFAULT_CHECKPOINT_DIR_SHARE of the filesystem
    max_checkpoint_dir_bytes: int = 0
    # where the kubelet's checkpoint API writes its archives (a Checkpoint's kubeletArchive
    # names one there)
    kubelet_checkpoint_dir: Path = Path(KUBELET_CHECKPOINT_DIR)
    # the HTTP server (sidecar/http/server.py)
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    keep_alive_timeout_s: int = DEFAULT_KEEP_ALIVE_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    # the image placeholder pods copy cedana-pause from ("": they run /bin/sh of the workload)
    placeholder_image: str = ""
    # checkpoints from other helpers (ops/peer.py): the port every helper of the cluster
    # receives on (0: none) and the address it listens on
    peer_port: int = 0
    peer_address: str = ""
    # a migration to another node whose container holds this much memory (resident) or more
    # goes post-copy unless it says otherwise (0: only when it asks, spec.lazy)
    post_copy_above_bytes: int = DEFAULT_POST_COPY_ABOVE_BYTES

    def runtime_path(self, engine: str) -> str:
        """The OCI runtime binary for containers of `engine` ("runc" or "crun")."""
        return self.crun_path if engine == "crun" else self.runc_path

    @property
    def allowed_runtime_roots(self) -> tuple[Path, ...]:
        """The runtime roots requests may name: the administrator's, never a caller's."""
        return (self.runtime_root, *(r for r in self.runtime_roots if r != self.runtime_root))

    @property
    def allowed_containerd_addresses(self) -> tuple[str, ...]:
        """containerd sockets a request may name (rootfs routes): the administrator's."""
        return (self.default_containerd_address,
                *(a for a in self.containerd_addresses if a != self.default_containerd_address))

    def __post_init__(self) -> None:
        # the confinement checks compare real paths, so keep the real one
        object.__setattr__(self, "checkpoint_dir", Path(os.path.realpath(self.checkpoint_dir)))
