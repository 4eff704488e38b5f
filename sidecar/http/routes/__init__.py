"""The helper's routes, one module per area; each route parses, states its policy
(sidecar/http/policy.py), calls one function of sidecar.ops and returns its answer."""
from __future__ import annotations

from fastapi import APIRouter

from sidecar.http.routes import checkpoints, containers, info, restore, rootfs

ROUTERS: list[APIRouter] = [m.router for m in (info, containers, checkpoints, restore, rootfs)]
