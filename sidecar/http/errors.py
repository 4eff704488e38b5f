"""Every failure becomes a JSON answer {"code", "message", ...} with the code's status."""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sidecar.errors import HelperError, InvalidRequest, MethodNotAllowed, NotFound
from sidecar.http.middleware import request_state


def error_response(request: Request, error: HelperError) -> JSONResponse:
    state = request_state(request.scope)
    state["error_code"] = error.code
    for key in ("checkpoint_id", "container_id"):  # for the request's log line
        if error.extra.get(key) and not state.get(key):
            state[key] = error.extra[key]
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def describe_validation_errors(errors: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """One readable sentence naming the offending fields, and the fields as dotted paths."""
    parts = []
    fields = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        if loc and loc[0] in ("body", "query", "path"):
            loc = loc[1:]
        if err.get("type") == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "invalid JSON")
            parts.append(f"request body is not valid JSON ({detail} at position "
                         f"{loc[0] if loc else '?'})")
            continue
        field = ".".join(loc)
        if not field:
            parts.append("request body must be a JSON object sent with "
                         "Content-Type: application/json")
            continue
        fields.append(field)
        msg = str(err.get("msg", "is invalid"))
        if err.get("type") == "missing":
            msg = "field required"
        parts.append(f"{field}: {msg}")
    return "; ".join(parts[:5]) or "invalid request", fields


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HelperError)
    async def helper_error(request: Request, exc: HelperError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, fields = describe_validation_errors(list(exc.errors()))
        extra = {"fields": fields} if fields else {}
        return error_response(request, InvalidRequest(message, **extra))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error: HelperError
        if exc.status_code == 404:
            error = NotFound(f"no route {request.method} {request.url.path}; see docs/api.md")
        elif exc.status_code == 405:
            error = MethodNotAllowed(
                f"{request.method} is not allowed on {request.url.path}"
                + (f" (allowed: {exc.headers['Allow']})" if exc.headers and
                   "Allow" in exc.headers else ""))
            error.headers = dict(exc.headers or {})
        elif exc.status_code == 400:
            error = InvalidRequest(f"bad request: {exc.detail}")
        else:
            error = HelperError(str(exc.detail))
            error.status = exc.status_code
            error.code = f"http_{exc.status_code}"
        return error_response(request, error)
