"""What routes are given: the helper's context, and a way to name ids in the request log."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from sidecar.http.caller import access_of
from sidecar.http.middleware import request_state
from sidecar.ops.context import Helper


def helper_of(request: Request) -> Helper:
    helper: Helper = request.app.state.helper
    return helper


#: a route's parameter: the helper's configuration, locks and API connection
HelperDep = Annotated[Helper, Depends(helper_of)]


def logged(request: Request, answer: dict[str, Any],
           target: dict[str, Any] | None = None) -> dict[str, Any]:
    """The answer, its checkpoint and container ids (and the pod it acted on) noted for the
    request's log line."""
    state = request_state(request.scope)
    for key in ("namespace", "pod", "container"):
        if target and target.get(key):
            state[key] = target[key]
    for key in ("checkpoint_id", "container_id"):
        if answer.get(key):
            state[key] = answer[key]
    return answer


def aimed_at(request: Request, target: dict[str, Any]) -> None:
    """Note what a request acts on for its log line before anything is checked, so that a
    refused request names the namespace and pod it aimed at too."""
    state = request_state(request.scope)
    for key in ("namespace", "pod", "container"):
        if target.get(key):
            state[key] = target[key]


def requester(request: Request) -> str:
    """The user name of the request's caller, for Events ("" when callers are not checked)."""
    caller = access_of(request.scope).caller
    return caller.username if caller is not None else ""
