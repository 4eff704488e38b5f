"""Who may call a route is declared on the route itself: each route carries exactly one policy,
a FastAPI dependency that reads the validated request and asks the request's Access
(sidecar/ops/access.py) for what the request does; a refusal is 403 before the route runs.

    @policy
    def may_checkpoint(body: CheckpointRequest, access: CallerAccess) -> None:
        access.require(body.checkpoint_data.namespace, CHECKPOINT, "the pod to checkpoint")

    @router.post(contract.CHECKPOINT, dependencies=[Depends(may_checkpoint)])

create_app refuses to start with a route that has none, so a new route cannot be forgotten.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.routing import APIRoute

from sidecar.http.caller import access_of
from sidecar.ops.access import Access

F = TypeVar("F", bound=Callable[..., None])
_POLICIES: set[Callable[..., Any]] = set()


def caller_access(request: Request) -> Access:
    return access_of(request.scope)


#: a route's (or a policy's) parameter: what this request's caller may do
CallerAccess = Annotated[Access, Depends(caller_access)]


def policy(check: F) -> F:
    """Mark `check` as a route policy (use it in the route's `dependencies`)."""
    _POLICIES.add(check)
    return check


@policy
def anyone(access: CallerAccess) -> None:
    """Open routes: kubelet's probe and the version (the middleware asks no proof for them)."""


@policy
def filtered_by_route(access: CallerAccess) -> None:
    """The route itself leaves out what the caller may not see."""


def routes_without_policy(routers: Iterable[APIRouter]) -> list[str]:
    """`METHOD path` of every route that carries no policy (or more than one)."""
    missing = []
    for router in routers:
        for route in router.routes:
            if not isinstance(route, APIRoute):
                continue
            policies = [d.call for d in route.dependant.dependencies if d.call in _POLICIES]
            if len(policies) != 1:
                missing += [f"{method} {route.path}" for method in sorted(route.methods or ())]
    return missing
