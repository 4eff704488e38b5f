"""ASGI middleware of the helper: a request body limit (size and time) and one JSON log line
per request.

Both write JSON error bodies ({"code", "message"}) themselves, because they answer before (or
instead of) the application's own exception handlers.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sidecar.errors import (
    BodyTooLarge,
    HelperError,
    InternalError,
    InvalidRequest,
    RequestTimeout,
)

access_log = logging.getLogger("sidecar.access")
log = logging.getLogger(__name__)


def request_state(scope: Scope) -> dict[str, Any]:
    """The per-request dict that Starlette's `request.state` is a view of."""
    state: dict[str, Any] = scope.setdefault("state", {})
    return state


async def send_error(scope: Scope, send: Send, error: HelperError) -> None:
    request_state(scope)["error_code"] = error.code
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    # the error's own (Retry-After of a 429, Connection: close of a 408)
    headers += [(name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in (error.headers or {}).items()]
    await send({
        "type": "http.response.start",
        "status": error.status,
        "headers": headers,
    })
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Refuse bodies over `limit` bytes with 413, whether announced or streamed, and bodies
    that have not arrived `timeout_s` after the helper began to read them with 408 (None: no
    deadline).

    The body is read here in full (it is small by construction) and replayed to the app.
    """

    def __init__(self, app: ASGIApp, limit: int, timeout_s: float | None = None) -> None:
        self.app = app
        self.limit = limit
        self.timeout_s = timeout_s

    def _too_large(self) -> BodyTooLarge:
        return BodyTooLarge(
            f"request body is larger than {self.limit} bytes; the helper's requests are small "
            "JSON documents", limit_bytes=self.limit,
        )

    def _too_slow(self) -> RequestTimeout:
        error = RequestTimeout(
            f"the request body did not arrive within {self.timeout_s:g} s; send it at once "
            "(the helper's requests are small JSON documents)", timeout_s=self.timeout_s)
        error.headers = {"Connection": "close"}
        return error

    async def _read(self, receive: Receive) -> bytes | HelperError | None:
        """The whole body; the error to answer; None when the client went away."""
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await send_error(scope, send, InvalidRequest("Content-Length is not a number"))
                return
            if length > self.limit:
                await send_error(scope, send, self._too_large())
                return
        try:
            with anyio.fail_after(self.timeout_s):
                outcome = await self._read(receive)
        except TimeoutError:
            outcome = self._too_slow()
        if outcome is None:  # the client went away
            return
        if isinstance(outcome, HelperError):
            await send_error(scope, send, outcome)
            return
        body = outcome
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class RequestLogMiddleware:
    """Log method, path, status, duration, checkpoint id and error code of every request;
    turn an exception nobody handled into a 500 internal_error JSON answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        state = request_state(scope)
        status = 0

        async def send_logged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        except Exception as exc:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if status == 0:
                status = 500
                await send_error(scope, send, InternalError(
                    f"the helper failed unexpectedly: {type(exc).__name__}: {exc}"))
        finally:
            extra: dict[str, Any] = {
                "method": scope.get("method"),
                "path": scope.get("path"),
                "status": status,
                "duration_ms": round((time.monotonic() - started) * 1000, 1),
            }
            for key in ("checkpoint_id", "error_code", "container_id", "namespace", "pod",
                        "container"):
                if state.get(key):
                    extra[key] = state[key]
            caller = getattr(state.get("access"), "caller", None)
            if caller is not None:  # who asked: every action is attributable
                extra.update(user=caller.username, uid=caller.uid, groups=list(caller.groups))
            access_log.info("%s %s %s", extra["method"], extra["path"], status, extra=extra)
