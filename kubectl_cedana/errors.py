"""The plugin's errors: each carries a message for a person and a stable exit status.

The CLI turns any of these into one line on stderr (`error: ...`) and exits with `exit_code`.
Nothing here imports the Kubernetes client.
"""
from __future__ import annotations

import enum
from typing import Any

from kubectl_cedana.contract import Code


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1  # anything without a more specific status, including API permission errors
    USAGE = 2  # the command line is wrong or incomplete
    NOT_FOUND = 3  # a pod, container, checkpoint or helper does not exist
    CONFLICT = 4  # the object exists but is in the wrong state (not running, busy, ...)
    REMOTE = 5  # the node helper failed or could not be reached
    TIMEOUT = 124  # same value as timeout(1)
    INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


class CedanaError(Exception):
    """An error with a message meant for the person at the terminal."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, *, hint: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details: dict[str, Any] = dict(details or {})

    def one_line(self) -> str:
        text = self.message
        if self.hint:
            text = f"{text} ({self.hint})"
        return " ".join(text.split())


class UsageError(CedanaError):
    exit_code = ExitCode.USAGE


class NotFoundError(CedanaError):
    exit_code = ExitCode.NOT_FOUND


class ConflictError(CedanaError):
    exit_code = ExitCode.CONFLICT


class HelperFailure(CedanaError):
    """The node helper (or the path to it) failed."""

    exit_code = ExitCode.REMOTE


class OperationTimeout(CedanaError):
    exit_code = ExitCode.TIMEOUT


class Interrupted(CedanaError):
    exit_code = ExitCode.INTERRUPTED

    def __init__(self, message: str = "interrupted", **kw: Any) -> None:
        super().__init__(message, **kw)


class ConfigError(CedanaError):
    """The kubeconfig cannot be used (missing file, unknown context, bad credentials)."""


class ApiError(CedanaError):
    """The Kubernetes API server refused a request; carries its Status object."""

    def __init__(self, message: str, *, status: int, reason: str = "",
                 api_status: dict[str, Any] | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.status = status
        self.reason = reason
        self.api_status: dict[str, Any] = dict(api_status or {})


class ApiNotFound(ApiError):
    exit_code = ExitCode.NOT_FOUND


class ApiConflict(ApiError):
    exit_code = ExitCode.CONFLICT


class ApiInvalid(ApiError):
    """422: what was asked for does not pass the resource's schema (a bad --name, ...)."""

    exit_code = ExitCode.USAGE


class PermissionDenied(ApiError):
    """403 from the API server; `permission` names what the user lacks."""

    def __init__(self, message: str, *, permission: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.permission = permission


class HelperNotInstalled(NotFoundError):
    """No helper (or no cedana.io API) where one is needed: run `kubectl cedana install`."""


#: how each of the helper's error codes (status.errorCode of a Failed object) maps onto the
#: plugin's exit statuses; anything else (dump_failed, restore_failed, checkpoint_corrupted,
#: a code this plugin does not know yet, ...) is REMOTE: the helper or its node failed
CODE_EXIT: dict[str, ExitCode] = {
    Code.INVALID_REQUEST: ExitCode.USAGE,
    Code.PATH_OUTSIDE_CHECKPOINT_DIR: ExitCode.USAGE,
    Code.CONTAINER_AMBIGUOUS: ExitCode.USAGE,
    Code.CONTAINER_NOT_FOUND: ExitCode.NOT_FOUND,
    Code.CHECKPOINT_NOT_FOUND: ExitCode.NOT_FOUND,
    Code.IMAGE_NOT_FOUND: ExitCode.NOT_FOUND,
    Code.OPERATION_IN_PROGRESS: ExitCode.CONFLICT,
    Code.ALREADY_RESTORED: ExitCode.CONFLICT,
    Code.CONTAINER_NOT_RUNNING: ExitCode.CONFLICT,
    Code.TARGET_NOT_SLEEPING: ExitCode.CONFLICT,
    Code.TARGET_INCOMPATIBLE: ExitCode.CONFLICT,
    Code.CHECKPOINT_EXISTS: ExitCode.CONFLICT,
    Code.IMAGE_MISMATCH: ExitCode.CONFLICT,
    Code.FORBIDDEN: ExitCode.ERROR,
    Code.REGISTRY_NOT_ALLOWED: ExitCode.ERROR,
}


class ResourceFailed(HelperFailure):
    """A cedana.io object ended in phase Failed: the helper's error code and message, from
    its status; the exit status follows the code (CODE_EXIT)."""

    def __init__(self, message: str, *, code: str, node: str = "",
                 body: dict[str, Any] | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.code = code
        self.node = node
        self.body: dict[str, Any] = dict(body or {})  # the object's status, shown by --debug
        self.exit_code = CODE_EXIT.get(code, ExitCode.REMOTE)

    def one_line(self) -> str:
        line = super().one_line()
        return f"{line} [{self.code}]" if self.code else line
