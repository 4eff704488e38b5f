"""The HTTP side of caller checks: the proof headers are verified before a request's body is
read (401 otherwise), and each route's policy (sidecar/http/policy.py) reviews the request's
Access against what the validated request does (403)."""
from __future__ import annotations

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

from kubectl_cedana import contract
from sidecar.errors import HelperError
from sidecar.http.middleware import request_state, send_error
from sidecar.ops.access import UNRESTRICTED, Access, CallerVerifier


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1")
            for k, v in scope.get("headers") or []}


def access_of(scope: Scope) -> Access:
    """The Access the middleware settled for this request (unrestricted without one)."""
    access = request_state(scope).get("access")
    return access if isinstance(access, Access) else UNRESTRICTED


class AuthorizationMiddleware:
    """401 before anything else runs unless the request carries a valid caller proof; the
    request's Access is left for the routes (access_of)."""

    def __init__(self, app: ASGIApp, verifier: CallerVerifier | None) -> None:
        self.app = app
        self.verifier = verifier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or self.verifier is None
                or scope["path"] in contract.OPEN_ROUTES):
            await self.app(scope, receive, send)
            return
        verifier = self.verifier
        headers = _headers(scope)
        try:
            access = await anyio.to_thread.run_sync(verifier.authenticate, headers)
        except HelperError as exc:
            await send_error(scope, send, exc)
            return
        request_state(scope)["access"] = access
        await self.app(scope, receive, send)
