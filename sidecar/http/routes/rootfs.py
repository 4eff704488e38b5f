"""A container's changed files as an image layer: POST /checkpoint/rootfs (containerd),
POST /checkpoint/rootfs/crio, POST /restore/rootfs."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from kubectl_cedana import contract
from sidecar.http.deps import HelperDep, aimed_at, logged
from sidecar.http.policy import CallerAccess, policy
from sidecar.http.schemas import (
    CrioRootfsCheckpointRequest,
    RootfsCheckpointRequest,
    RootfsRestoreRequest,
)
from sidecar.ops import rootfs
from sidecar.ops.access import CHECKPOINT, RESTORE

router = APIRouter()


@policy
def may_commit(request: Request, body: RootfsCheckpointRequest, access: CallerAccess) -> None:
    aimed_at(request, body.target())
    access.require(body.namespace, CHECKPOINT, "the pod")


@policy
def may_commit_crio(request: Request, body: CrioRootfsCheckpointRequest,
                    access: CallerAccess) -> None:
    aimed_at(request, body.target())
    access.require(body.namespace, CHECKPOINT, "the pod")


@policy
def may_apply(request: Request, body: RootfsRestoreRequest, access: CallerAccess) -> None:
    aimed_at(request, body.target())
    access.require(body.namespace, RESTORE, "the pod")


@router.post(contract.CHECKPOINT_ROOTFS, dependencies=[Depends(may_commit)])
def post_checkpoint_rootfs(request: Request, helper: HelperDep, body: RootfsCheckpointRequest
                           ) -> dict[str, Any]:
    return logged(request, rootfs.commit(
        helper, **body.target(), image_ref=body.image_ref, address=body.address), body.target())


@router.post(contract.CHECKPOINT_ROOTFS_CRIO, dependencies=[Depends(may_commit_crio)])
def post_checkpoint_rootfs_crio(request: Request, helper: HelperDep,
                                body: CrioRootfsCheckpointRequest) -> dict[str, Any]:
    return logged(request, rootfs.commit_crio(
        helper, **body.target(), image_ref=body.image_ref, new_image_ref=body.new_image_ref),
        body.target())


@router.post(contract.RESTORE_ROOTFS, dependencies=[Depends(may_apply)])
def post_restore_rootfs(request: Request, helper: HelperDep, body: RootfsRestoreRequest
                        ) -> dict[str, Any]:
    return logged(request, rootfs.apply(
        helper, **body.target(), image_ref=body.image_ref, address=body.address), body.target())
