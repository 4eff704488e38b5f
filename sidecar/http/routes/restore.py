"""POST /restore: a checkpoint (by path or id; pulled from the registry when this node lacks
it) into a sleeping container."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from kubectl_cedana import contract
from sidecar.http.deps import HelperDep, aimed_at, logged, requester
from sidecar.http.middleware import request_state
from sidecar.http.policy import CallerAccess, policy
from sidecar.http.schemas import RestoreRequest
from sidecar.ops import catalogue
from sidecar.ops.access import READ_CHECKPOINT, RESTORE
from sidecar.ops.restore import restore

router = APIRouter()


@policy
def may_restore(request: Request, helper: HelperDep, body: RestoreRequest,
                access: CallerAccess) -> None:
    data = body.checkpoint_data
    aimed_at(request, data.target())
    access.require(data.namespace, RESTORE, "the restore target")
    if access.unrestricted:
        return
    source = catalogue.source_namespace(helper.config, data.checkpoint_id, data.checkpoint_path,
                                        data.namespace)
    if source is not None:  # else the route answers checkpoint_not_found or refuses the path
        access.require(source, READ_CHECKPOINT, "the checkpoint's source pod")


@router.post(contract.RESTORE, dependencies=[Depends(may_restore)])
def post_restore(request: Request, helper: HelperDep, body: RestoreRequest,
                 access: CallerAccess) -> dict[str, Any]:
    data = body.checkpoint_data
    request_state(request.scope)["checkpoint_id"] = data.checkpoint_id or ""
    # the operation asks again about the source namespace its verified manifest names
    return logged(request, restore(
        helper, **data.target(), checkpoint_path=data.checkpoint_path,
        checkpoint_id=data.checkpoint_id, access=access, requested_by=requester(request)),
        data.target())
