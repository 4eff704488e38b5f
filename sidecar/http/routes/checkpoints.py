"""POST /checkpoint, and the catalogue: GET /checkpoints, POST /checkpoints/prune,
GET and DELETE /checkpoints/{checkpoint_id}."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request

from kubectl_cedana import contract
from sidecar.http.deps import HelperDep, aimed_at, logged, requester
from sidecar.http.middleware import request_state
from sidecar.http.policy import CallerAccess, filtered_by_route, policy
from sidecar.http.schemas import CheckpointRequest, PruneRequest
from sidecar.ops import catalogue, retention
from sidecar.ops.access import CHECKPOINT, DELETE_CHECKPOINT, LIST_CHECKPOINTS, READ_CHECKPOINT
from sidecar.ops.checkpoint import checkpoint

router = APIRouter()


@policy
def may_checkpoint(request: Request, body: CheckpointRequest, access: CallerAccess) -> None:
    aimed_at(request, body.checkpoint_data.target())
    access.require(body.checkpoint_data.namespace, CHECKPOINT, "the pod to checkpoint")


@router.post(contract.CHECKPOINT, dependencies=[Depends(may_checkpoint)])
def post_checkpoint(request: Request, helper: HelperDep, body: CheckpointRequest
                    ) -> dict[str, Any]:
    data = body.checkpoint_data
    return logged(request, checkpoint(
        helper, **data.target(), checkpoint_path=data.checkpoint_path,
        leave_running=body.leave_running, with_rootfs=body.with_rootfs, storage=body.storage,
        compression=body.compression, requested_by=requester(request),
        hold_connections=body.hold_connections), data.target())


@router.get(contract.CHECKPOINTS, dependencies=[Depends(filtered_by_route)])
def get_checkpoints(helper: HelperDep, access: CallerAccess,
                    remote: Annotated[bool, Query()] = False) -> dict[str, Any]:
    # only the namespaces whose checkpoints the caller may list
    entries = [e for e in catalogue.list_checkpoints(helper.config, include_remote=remote)
               if access.may(str(e.get("namespace") or ""), LIST_CHECKPOINTS)]
    return {"checkpoints": entries, "node": helper.config.node_name}


@policy
def may_prune(helper: HelperDep, access: CallerAccess) -> None:
    # retention may delete any checkpoint of the node: the caller must be allowed to delete in
    # every namespace that has one
    if not access.unrestricted:
        for namespace in catalogue.namespaces(helper.config):
            access.require(namespace, DELETE_CHECKPOINT, "a checkpoint prune may delete")


@router.post(contract.CHECKPOINTS_PRUNE, dependencies=[Depends(may_prune)])
def post_prune(helper: HelperDep,
               body: Annotated[PruneRequest | None, Body()] = None) -> dict[str, Any]:
    body = body or PruneRequest()
    removed = retention.apply_retention(helper.config, body.max_per_container,
                                        body.max_total_bytes, body.dry_run)
    return {"removed": removed, "dry_run": body.dry_run, "node": helper.config.node_name}


@policy
def may_read_or_delete(request: Request, helper: HelperDep, access: CallerAccess,
                       checkpoint_id: str) -> None:
    if access.unrestricted:
        return
    namespace = catalogue.source_namespace(helper.config, checkpoint_id, None)
    if namespace is not None:  # else the route answers checkpoint_not_found
        permission = READ_CHECKPOINT if request.method == "GET" else DELETE_CHECKPOINT
        access.require(namespace, permission, "the checkpoint")


@router.get(contract.CHECKPOINT_ENTRY, dependencies=[Depends(may_read_or_delete)])
def get_checkpoint(request: Request, helper: HelperDep, checkpoint_id: str) -> dict[str, Any]:
    request_state(request.scope)["checkpoint_id"] = checkpoint_id
    return catalogue.inspect(helper.config, checkpoint_id)


@router.delete(contract.CHECKPOINT_ENTRY, dependencies=[Depends(may_read_or_delete)])
def delete_checkpoint(request: Request, helper: HelperDep, checkpoint_id: str
                      ) -> dict[str, Any]:
    request_state(request.scope)["checkpoint_id"] = checkpoint_id
    return catalogue.delete(helper.config, checkpoint_id)
