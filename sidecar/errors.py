"""The helper's errors: each has a stable machine-readable `code`, an HTTP status and a message
a person can act on. The HTTP layer renders them as {"code": ..., "message": ..., **extra}.
"""
from __future__ import annotations

from typing import Any


class HelperError(Exception):
    code: str = "internal_error"
    status: int = 500

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra: dict[str, Any] = extra
        self.headers: dict[str, str] | None = None  # extra HTTP headers (e.g. Allow on 405)

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.extra}


class InvalidRequest(HelperError):
    code = "invalid_request"
    status = 400


class PathOutsideCheckpointDir(HelperError):
    code = "path_outside_checkpoint_dir"
    status = 400


class NotFound(HelperError):
    """An unknown route."""

    code = "not_found"
    status = 404


class MethodNotAllowed(HelperError):
    code = "method_not_allowed"
    status = 405


class BodyTooLarge(HelperError):
    code = "body_too_large"
    status = 413


class ContainerNotFound(HelperError):
    code = "container_not_found"
    status = 404


class CheckpointNotFound(HelperError):
    code = "checkpoint_not_found"
    status = 404


class ContainerAmbiguous(HelperError):
    code = "container_ambiguous"
    status = 409


class ContainerNotRunning(HelperError):
    code = "container_not_running"
    status = 409


class OperationInProgress(HelperError):
    code = "operation_in_progress"
    status = 409


class AlreadyRestored(HelperError):
    code = "already_restored"
    status = 409


class TargetNotSleeping(HelperError):
    """The restore target is not a placeholder (e.g. it is the checkpoint's running source)."""

    code = "target_not_sleeping"
    status = 409


class CheckpointExists(HelperError):
    code = "checkpoint_exists"
    status = 409


class TargetIncompatible(HelperError):
    """The restore target lacks something the checkpoint needs (e.g. a bind mount)."""

    code = "target_incompatible"
    status = 409


class IoUringUnsupported(HelperError):
    code = "io_uring_unsupported"
    status = 422


class CheckpointCorrupted(HelperError):
    code = "checkpoint_corrupted"
    status = 422


class DumpFailed(HelperError):
    code = "dump_failed"
    status = 500


class RestoreFailed(HelperError):
    code = "restore_failed"
    status = 500


class ToolFailed(HelperError):
    """An external binary (runc, criu, nsenter) failed outside a dump or restore."""

    code = "tool_failed"
    status = 500


class NotImplementedYet(HelperError):
    code = "not_implemented"
    status = 501


class InternalError(HelperError):
    code = "internal_error"
    status = 500


class RegistryAuthFailed(HelperError):
    """The registry refused the node's credentials, or the node has none for it."""

    code = "registry_auth_failed"
    status = 403


class ImageNotFound(HelperError):
    code = "image_not_found"
    status = 404


class ImageMismatch(HelperError):
    """The image named in a request is not the one the container runs."""

    code = "image_mismatch"
    status = 409


class RegistryUnreachable(HelperError):
    code = "registry_unreachable"
    status = 502


class RegistryError(HelperError):
    """The registry answered with something other than success or an auth refusal."""

    code = "registry_error"
    status = 502


class ContainerdUnavailable(HelperError):
    code = "containerd_unavailable"
    status = 502


class ImageUnsupported(HelperError, ValueError):
    """An image the helper cannot build on (e.g. an index or manifest list, not a manifest)."""

    code = "image_unsupported"
    status = 422


class Unauthenticated(HelperError):
    """No proof of who may act (or a proof Kubernetes does not vouch for)."""

    code = "unauthenticated"
    status = 401


class Forbidden(HelperError):
    """A valid proof, but not for the namespace the request acts on."""

    code = "forbidden"
    status = 403


class AuthorizationUnavailable(HelperError):
    """The Kubernetes API that vouches for callers cannot be asked right now."""

    code = "authorization_unavailable"
    status = 503


ALL_ERRORS: tuple[type[HelperError], ...] = (
    InvalidRequest, PathOutsideCheckpointDir, NotFound, MethodNotAllowed, BodyTooLarge,
    ContainerNotFound, CheckpointNotFound, ContainerAmbiguous, ContainerNotRunning,
    OperationInProgress, AlreadyRestored, TargetNotSleeping, CheckpointExists, TargetIncompatible,
    IoUringUnsupported, CheckpointCorrupted, DumpFailed, RestoreFailed, ToolFailed,
    NotImplementedYet, InternalError, RegistryAuthFailed, ImageNotFound, ImageMismatch,
    RegistryUnreachable, RegistryError, ContainerdUnavailable, ImageUnsupported,
    Unauthenticated, Forbidden, AuthorizationUnavailable,
)
