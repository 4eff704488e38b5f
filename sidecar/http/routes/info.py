"""GET /healthz and GET /version: open to anyone."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from kubectl_cedana import contract
from sidecar.http.deps import HelperDep
from sidecar.http.policy import anyone
from sidecar.ops import info

router = APIRouter(dependencies=[Depends(anyone)])


@router.get(contract.HEALTHZ)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(contract.VERSION)
def get_version(helper: HelperDep) -> dict[str, Any]:
    return info.version_info(helper.config)
