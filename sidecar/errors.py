"""The helper's errors: each has a stable machine-readable `code`, an HTTP status and a message
a person can act on. The HTTP layer renders them as {"code": ..., "message": ..., **extra}.
Codes and their statuses are the plugin's too: kubectl_cedana/contract.py.
"""
from __future__ import annotations

from typing import Any

from kubectl_cedana.contract import HTTP_STATUS, Code


class HelperError(Exception):
    code: str = Code.INTERNAL_ERROR

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.status: int = HTTP_STATUS.get(self.code, 500)
        self.extra: dict[str, Any] = extra
        self.headers: dict[str, str] | None = None  # extra HTTP headers (e.g. Allow on 405)

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.extra}


class InvalidRequest(HelperError):
    code = Code.INVALID_REQUEST


class PathOutsideCheckpointDir(HelperError):
    code = Code.PATH_OUTSIDE_CHECKPOINT_DIR


class NotFound(HelperError):
    """An unknown route."""

    code = Code.NOT_FOUND


class MethodNotAllowed(HelperError):
    code = Code.METHOD_NOT_ALLOWED


class BodyTooLarge(HelperError):
    code = Code.BODY_TOO_LARGE


class ContainerNotFound(HelperError):
    code = Code.CONTAINER_NOT_FOUND


class CheckpointNotFound(HelperError):
    code = Code.CHECKPOINT_NOT_FOUND


class ContainerAmbiguous(HelperError):
    code = Code.CONTAINER_AMBIGUOUS


class ContainerNotRunning(HelperError):
    code = Code.CONTAINER_NOT_RUNNING


class OperationInProgress(HelperError):
    code = Code.OPERATION_IN_PROGRESS


class AlreadyRestored(HelperError):
    code = Code.ALREADY_RESTORED


class TargetNotSleeping(HelperError):
    """The restore target is not a placeholder (e.g. it is the checkpoint's running source)."""

    code = Code.TARGET_NOT_SLEEPING


class CheckpointExists(HelperError):
    code = Code.CHECKPOINT_EXISTS


class TargetIncompatible(HelperError):
    """The restore target lacks something the checkpoint needs (e.g. a bind mount)."""

    code = Code.TARGET_INCOMPATIBLE


class IoUringUnsupported(HelperError):
    code = Code.IO_URING_UNSUPPORTED


class CheckpointCorrupted(HelperError):
    code = Code.CHECKPOINT_CORRUPTED


class DumpFailed(HelperError):
    code = Code.DUMP_FAILED


class RestoreFailed(HelperError):
    code = Code.RESTORE_FAILED




class InternalError(HelperError):
    code = Code.INTERNAL_ERROR


class RegistryAuthFailed(HelperError):
    """The registry refused the node's credentials, or the node has none for it."""

    code = Code.REGISTRY_AUTH_FAILED


class ImageNotFound(HelperError):
    code = Code.IMAGE_NOT_FOUND


class ImageMismatch(HelperError):
    """The image named in a request is not the one the container runs."""

    code = Code.IMAGE_MISMATCH


class RegistryUnreachable(HelperError):
    code = Code.REGISTRY_UNREACHABLE


class RegistryError(HelperError):
    """The registry answered with something other than success or an auth refusal."""

    code = Code.REGISTRY_ERROR


class ContainerdUnavailable(HelperError):
    code = Code.CONTAINERD_UNAVAILABLE


class ImageUnsupported(HelperError, ValueError):
    """An image the helper cannot build on (e.g. an index or manifest list, not a manifest)."""

    code = Code.IMAGE_UNSUPPORTED


class Unauthenticated(HelperError):
    """No proof of who may act (or a proof Kubernetes does not vouch for)."""

    code = Code.UNAUTHENTICATED


class Forbidden(HelperError):
    """A valid proof, but not for the namespace the request acts on."""

    code = Code.FORBIDDEN


class CheckpointUntrusted(HelperError):
    """A checkpoint whose manifest is not signed with this helper's signing key: not made by a
    helper of this cluster, or changed since (docs/security.md)."""

    code = Code.CHECKPOINT_UNTRUSTED


class ContentTooLarge(HelperError):
    """A download, or what it expands to, goes beyond its declared size or a configured limit
    (a decompression bomb, a registry that sends more than it announced)."""

    code = Code.CONTENT_TOO_LARGE


class ContentRefused(HelperError):
    """An image layer or a checkpoint's changed files hold something the helper never writes
    into a container's root filesystem (a device node); `member` names it. Refused before
    anything of the archive is written (docs/security.md)."""

    code = Code.CONTENT_REFUSED


class AuthorizationUnavailable(HelperError):
    """The Kubernetes API that vouches for callers cannot be asked right now."""

    code = Code.AUTHORIZATION_UNAVAILABLE


class KubernetesUnavailable(HelperError):
    """The API server could not be asked who a container belongs to: nothing is done."""

    code = Code.KUBERNETES_UNAVAILABLE


class RegistryNotAllowed(HelperError):
    """The node's registry credentials are used only where the administrator allowed."""

    code = Code.REGISTRY_NOT_ALLOWED


class TooManyRequests(HelperError):
    """Over a rate or concurrency limit; `retry_after_s` becomes the Retry-After header."""

    code = Code.TOO_MANY_REQUESTS

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message, **extra)
        retry_after = extra.get("retry_after_s")
        if isinstance(retry_after, (int, float)):
            self.headers = {"Retry-After": str(max(1, round(retry_after)))}


class QuotaExceeded(HelperError):
    """The checkpoint directory's quota is used up."""

    code = Code.QUOTA_EXCEEDED


class RequestTimeout(HelperError):
    """A request's body did not arrive in time (--body-timeout)."""

    code = Code.REQUEST_TIMEOUT


class HelperRestarted(HelperError):
    """A cedana.io object's operation was cut short by a restart of its node helper."""

    code = Code.HELPER_RESTARTED

