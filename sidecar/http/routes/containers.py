"""GET /list/{namespace}: the containers of a namespace on this node."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request

from kubectl_cedana import contract
from sidecar.http.deps import HelperDep, aimed_at
from sidecar.http.middleware import request_state
from sidecar.http.policy import CallerAccess, policy
from sidecar.http.schemas import ListRequest
from sidecar.ops import containers
from sidecar.ops.access import LIST_PODS

router = APIRouter()


@policy
def may_list(request: Request, namespace: str, access: CallerAccess) -> None:
    aimed_at(request, {"namespace": namespace})
    access.require(namespace, LIST_PODS, "the containers")


# the seed sends the root in a JSON body, even with GET; ?root= works too
@router.get(contract.LIST, dependencies=[Depends(may_list)])
def list_namespace(request: Request, helper: HelperDep, namespace: str,
                   root: Annotated[str | None, Query()] = None,
                   body: Annotated[ListRequest | None, Body()] = None) -> list[dict[str, Any]]:
    requested = root or (body.root if body is not None else None)
    request_state(request.scope)["namespace"] = namespace
    return containers.list_namespace(helper, namespace, requested)
