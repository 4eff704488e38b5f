"""What the plugin and the node helper agree on: the cedana.io resources (group, version,
kinds, plurals, phases, and the labels, annotations and finalizer on them), where the helper
is, its REST routes and caller proof headers, the error codes and their HTTP statuses, the
compression names, and the pod annotation and label keys both write.

Both programs import this one module (the helper through `kubectl_cedana.contract`, which pulls
nothing of the plugin but this file and version.py). Standard library only, and Python 3.9
syntax: it runs in the plugin's zipapp on the oldest Python the plugin supports.
"""
from __future__ import annotations

from typing import NamedTuple
from urllib.parse import quote

# -- where the helper runs ---------------------------------------------------------------------
HELPER_NAMESPACE = "cedana-system"
HELPER_NAME = "cedana-helper"
HELPER_SELECTOR = "app.kubernetes.io/name=cedana-helper"
HELPER_PORT = 1324

# -- routes: the seed's contract, then our additions --------------------------------------------
LIST = "/list/{namespace}"
CHECKPOINT = "/checkpoint"
RESTORE = "/restore"
CHECKPOINT_ROOTFS = "/checkpoint/rootfs"
CHECKPOINT_ROOTFS_CRIO = "/checkpoint/rootfs/crio"
RESTORE_ROOTFS = "/restore/rootfs"
HEALTHZ = "/healthz"
VERSION = "/version"
CHECKPOINTS = "/checkpoints"
CHECKPOINTS_PRUNE = "/checkpoints/prune"
CHECKPOINT_ENTRY = "/checkpoints/{checkpoint_id}"
#: answered to anyone: kubelet's probe and a version check carry no caller proof
OPEN_ROUTES = frozenset({HEALTHZ, VERSION})


def route(template: str, **params: str) -> str:
    """A route with its {parameters} filled in, each quoted as one path segment."""
    return template.format(**{k: quote(v, safe="") for k, v in params.items()})


def is_open(path: str) -> bool:
    """Whether a request path (with or without its leading slash or query) needs no proof."""
    return "/" + path.split("?", 1)[0].strip("/") in OPEN_ROUTES


# -- error codes: every answer that is not 2xx is {"code": CODE, "message": ...} ---------------
class Code:
    """The stable, machine-readable codes of the helper's errors (docs/api.md)."""

    INVALID_REQUEST = "invalid_request"
    PATH_OUTSIDE_CHECKPOINT_DIR = "path_outside_checkpoint_dir"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    BODY_TOO_LARGE = "body_too_large"
    CONTAINER_NOT_FOUND = "container_not_found"
    CHECKPOINT_NOT_FOUND = "checkpoint_not_found"
    CONTAINER_AMBIGUOUS = "container_ambiguous"
    CONTAINER_NOT_RUNNING = "container_not_running"
    OPERATION_IN_PROGRESS = "operation_in_progress"
    ALREADY_RESTORED = "already_restored"
    TARGET_NOT_SLEEPING = "target_not_sleeping"
    TARGET_INCOMPATIBLE = "target_incompatible"
    CHECKPOINT_EXISTS = "checkpoint_exists"
    IO_URING_UNSUPPORTED = "io_uring_unsupported"
    CHECKPOINT_CORRUPTED = "checkpoint_corrupted"
    DUMP_FAILED = "dump_failed"
    RESTORE_FAILED = "restore_failed"
    INTERNAL_ERROR = "internal_error"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    AUTHORIZATION_UNAVAILABLE = "authorization_unavailable"
    IMAGE_MISMATCH = "image_mismatch"
    IMAGE_NOT_FOUND = "image_not_found"
    REGISTRY_AUTH_FAILED = "registry_auth_failed"
    IMAGE_UNSUPPORTED = "image_unsupported"
    REGISTRY_UNREACHABLE = "registry_unreachable"
    REGISTRY_ERROR = "registry_error"
    CONTAINERD_UNAVAILABLE = "containerd_unavailable"
    # the helper trusts nothing a caller says (docs/security.md)
    KUBERNETES_UNAVAILABLE = "kubernetes_unavailable"
    REGISTRY_NOT_ALLOWED = "registry_not_allowed"
    TOO_MANY_REQUESTS = "too_many_requests"
    QUOTA_EXCEEDED = "quota_exceeded"
    REQUEST_TIMEOUT = "request_timeout"
    CHECKPOINT_UNTRUSTED = "checkpoint_untrusted"
    CONTENT_TOO_LARGE = "content_too_large"
    CONTENT_REFUSED = "content_refused"
    # in the status of a cedana.io object only: its helper died during the operation
    HELPER_RESTARTED = "helper_restarted"


#: the HTTP status the helper answers each code with
HTTP_STATUS = {
    Code.INVALID_REQUEST: 400,
    Code.PATH_OUTSIDE_CHECKPOINT_DIR: 400,
    Code.UNAUTHENTICATED: 401,
    Code.FORBIDDEN: 403,
    Code.REGISTRY_AUTH_FAILED: 403,
    Code.NOT_FOUND: 404,
    Code.CONTAINER_NOT_FOUND: 404,
    Code.CHECKPOINT_NOT_FOUND: 404,
    Code.IMAGE_NOT_FOUND: 404,
    Code.METHOD_NOT_ALLOWED: 405,
    Code.CONTAINER_AMBIGUOUS: 409,
    Code.CONTAINER_NOT_RUNNING: 409,
    Code.OPERATION_IN_PROGRESS: 409,
    Code.ALREADY_RESTORED: 409,
    Code.TARGET_NOT_SLEEPING: 409,
    Code.TARGET_INCOMPATIBLE: 409,
    Code.CHECKPOINT_EXISTS: 409,
    Code.IMAGE_MISMATCH: 409,
    Code.BODY_TOO_LARGE: 413,
    Code.IO_URING_UNSUPPORTED: 422,
    Code.CHECKPOINT_CORRUPTED: 422,
    Code.IMAGE_UNSUPPORTED: 422,
    Code.CHECKPOINT_UNTRUSTED: 422,
    Code.CONTENT_TOO_LARGE: 422,
    Code.CONTENT_REFUSED: 422,
    Code.DUMP_FAILED: 500,
    Code.RESTORE_FAILED: 500,
    Code.INTERNAL_ERROR: 500,
    Code.REGISTRY_UNREACHABLE: 502,
    Code.REGISTRY_ERROR: 502,
    Code.CONTAINERD_UNAVAILABLE: 502,
    Code.AUTHORIZATION_UNAVAILABLE: 503,
    Code.KUBERNETES_UNAVAILABLE: 503,
    Code.REGISTRY_NOT_ALLOWED: 403,
    Code.TOO_MANY_REQUESTS: 429,
    Code.QUOTA_EXCEEDED: 507,
    Code.REQUEST_TIMEOUT: 408,
    Code.HELPER_RESTARTED: 500,
}

# -- remote checkpoints ---------------------------------------------------------------------------
COMPRESSIONS = ("none", "gzip", "lz4", "zstd")
DEFAULT_COMPRESSION = "zstd"

# -- what the plugin and the helper write on pods ------------------------------------------------
ANNOTATION_PREFIX = "cedana.io/"
CHECKPOINT_ID_KEY = ANNOTATION_PREFIX + "checkpoint-id"  # label and annotation
SOURCE_POD_KEY = ANNOTATION_PREFIX + "source-pod"  # label and annotation
SOURCE_CONTAINER_KEY = ANNOTATION_PREFIX + "source-container"
SOURCE_NODE_KEY = ANNOTATION_PREFIX + "source-node"
MANAGED_BY = {"app.kubernetes.io/managed-by": "kubectl-cedana"}


# -- the Kubernetes-native API: Checkpoint, Restore, Migration (deploy/base/crds.yaml) ----------
API_GROUP = "cedana.io"
API_VERSION = "v1alpha1"
GROUP_VERSION = API_GROUP + "/" + API_VERSION


class Resource(NamedTuple):
    """One kind of cedana.io object, as its CustomResourceDefinition names it."""

    kind: str
    plural: str
    singular: str

    @property
    def qualified(self) -> str:
        """`checkpoints.cedana.io`: the CRD's name, and what RBAC and kubectl call it."""
        return self.plural + "." + API_GROUP


#: Checkpoint spec.kubeletArchive: the file names the kubelet's checkpoint API gives its
#: archives, checkpoint-POD_NAMESPACE-CONTAINER-TIME.tar (the CRD's pattern says the same), and
#: where it writes them
KUBELET_ARCHIVE_PATTERN = r"checkpoint-([a-z0-9][a-z0-9.-]*)_([a-z0-9-]+)-[A-Za-z0-9._:+-]+\.tar"
KUBELET_CHECKPOINT_DIR = "/var/lib/kubelet/checkpoints"

CHECKPOINT_RESOURCE = Resource("Checkpoint", "checkpoints", "checkpoint")
RESTORE_RESOURCE = Resource("Restore", "restores", "restore")
MIGRATION_RESOURCE = Resource("Migration", "migrations", "migration")
RESOURCES = (CHECKPOINT_RESOURCE, RESTORE_RESOURCE, MIGRATION_RESOURCE)


class Phase:
    """status.phase of every cedana.io object: Pending until a node helper takes it."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


PHASES = (Phase.PENDING, Phase.RUNNING, Phase.SUCCEEDED, Phase.FAILED)
FINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED})

#: label: the node whose helper must act (an optimization the plugin sets; helpers select on
#: it but never trust it: an object without it is claimed by the helper of the right node)
NODE_LABEL = ANNOTATION_PREFIX + "node"
#: annotation: the creating user's name; admission refuses any other value (admission.yaml)
REQUESTED_BY_ANNOTATION = ANNOTATION_PREFIX + "requested-by"
#: label the helper sets on a Checkpoint that succeeded (the same key as on restored pods)
CHECKPOINT_ID_LABEL = CHECKPOINT_ID_KEY
#: finalizer the helper puts on a Checkpoint: deleting it deletes the checkpoint's data on the
#: node and in the registry, then the helper removes the finalizer
CHECKPOINT_DATA_FINALIZER = ANNOTATION_PREFIX + "checkpoint-data"
#: the helpers' user name, which admission lets through (it creates a Migration's Restore)
HELPER_USER = "system:serviceaccount:" + HELPER_NAMESPACE + ":" + HELPER_NAME
#: the checkpoint id's form (the CRD's pattern for Restore.spec.checkpointID)
CHECKPOINT_ID_PATTERN = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


def is_checkpoint_id(text: str) -> bool:
    """Whether `text` is a checkpoint id (a UUID) rather than a Checkpoint object's name."""
    import re  # here: `kubectl cedana --help` compiles nothing

    return re.fullmatch(CHECKPOINT_ID_PATTERN.strip("^$"), text) is not None


def member_checkpoint_id(pod_checkpoint_id: str, index: int, container: str) -> str:
    """The id of one container's checkpoint within a whole-pod checkpoint: the first container
    (index 0) has the pod checkpoint's own id, the others a UUID derived from it and their
    name. So the pod checkpoint's id finds its first member anywhere (on a node, in the
    registry), whose signed manifest lists the containers, and their ids follow."""
    if index == 0:
        return pod_checkpoint_id
    import uuid  # here: `kubectl cedana --help` imports little

    return str(uuid.uuid5(uuid.UUID(pod_checkpoint_id), container))

#: annotation on a Restore a Migration made: the Migration it belongs to
MIGRATION_ANNOTATION = ANNOTATION_PREFIX + "migration"
#: annotation on a pod a helper made for a Restore or a Migration: that object's uid (a pod
#: of that name made by anyone else is never touched)
MADE_FOR_ANNOTATION = ANNOTATION_PREFIX + "made-for"
#: Kubernetes' own: of a ReplicaSet's pods, the one with the lowest cost is removed first
POD_DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"

