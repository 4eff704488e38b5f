"""The helper's REST API. Routes parse a request, call a plain function, render its answer.

Handlers that block (filesystem walks, runc, CRIU) are plain `def`, so FastAPI runs them in its
thread pool and operations on different containers proceed in parallel.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sidecar import version
from sidecar.config import HelperConfig
from sidecar.errors import (
    HelperError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
)
from sidecar.http.caller import (
    LIST_CHECKPOINTS,
    AuthorizationMiddleware,
    CallerVerifier,
    RoutePolicy,
    access_of,
)
from sidecar.http.middleware import BodyLimitMiddleware, RequestLogMiddleware, request_state
from sidecar.http.schemas import (
    CheckpointRequest,
    CrioRootfsCheckpointRequest,
    ListRequest,
    PruneRequest,
    RestoreRequest,
    RootfsCheckpointRequest,
    RootfsRestoreRequest,
)
from sidecar.kube.api import KubeAPI
from sidecar.node import freezer, proctree, versions
from sidecar.node.discovery import list_containers, validate_root
from sidecar.node.locks import ContainerLocks
from sidecar.ops import lifecycle
from sidecar.ops.checkpoint import CheckpointResult, checkpoint_container
from sidecar.ops.restore import RestoreResult, restore_into
from sidecar.ops.rootfs import checkpoint_rootfs, checkpoint_rootfs_crio, restore_rootfs
from sidecar.storage import store

log = logging.getLogger(__name__)

CheckpointFn = Callable[..., CheckpointResult]
RestoreFn = Callable[..., RestoreResult]


def _error_response(request: Request, error: HelperError) -> JSONResponse:
    request_state(request.scope)["error_code"] = error.code
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


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HelperError)
    async def helper_error(request: Request, exc: HelperError) -> JSONResponse:
        return _error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, fields = describe_validation_errors(list(exc.errors()))
        extra = {"fields": fields} if fields else {}
        return _error_response(request, InvalidRequest(message, **extra))

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
        return _error_response(request, error)


def _default_address(config: HelperConfig) -> str:
    """containerd's socket when the node has it at the usual place (a restore may also pull)."""
    address = config.default_containerd_address
    return address if os.path.exists(address) else ""


def _root(config: HelperConfig, requested: str | None) -> Path:
    return validate_root(requested or config.runtime_root)


def create_app(config: HelperConfig, *, locks: ContainerLocks | None = None,
               checkpoint_fn: CheckpointFn = checkpoint_container,
               restore_fn: RestoreFn = restore_into,
               kube: KubeAPI | None | bool = True,
               verifier: CallerVerifier | None = None) -> FastAPI:
    """The helper's ASGI application for one configuration. `kube` True: connect to the
    Kubernetes API as configured (for Events); None/False: no API. `verifier` checks who calls
    and what they may do (sidecar/http/caller.py); None trusts every caller, as
    `--authorization none` does."""
    locks = locks if locks is not None else ContainerLocks()
    kube_api: KubeAPI | None = (KubeAPI.connect(config.kubeconfig, config.node_name)
                                if kube is True else kube or None)
    store.make_private_dirs(config.checkpoint_dir, Path("/"))
    # a predecessor killed mid-dump: its runc/CRIU go first (they would write on, and put the
    # freezer back as they found it), then what they froze is thawed, then their files go
    proctree.stop_stragglers([config.runc_path, config.criu_path], config.checkpoint_dir)
    freezer.thaw_remembered(config.checkpoint_dir / freezer.JOURNAL_NAME)
    store.cleanup_temporaries(config.checkpoint_dir)

    app = FastAPI(title="cedana-helper", version=version, docs_url=None, redoc_url=None,
                  openapi_url=None, dependencies=[Depends(RoutePolicy(config))])
    _install_error_handlers(app)
    # the last added is the outermost: log every request, including those refused for size
    app.add_middleware(BodyLimitMiddleware, limit=config.max_body_bytes)
    # callers without a valid grant get 401 before their body is even read
    app.add_middleware(AuthorizationMiddleware, verifier=verifier)
    app.add_middleware(RequestLogMiddleware)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/version")
    def get_version() -> dict[str, Any]:
        return {**versions.tool_versions(config), "node": config.node_name,
                "checkpoint_repository": config.remote_repository,
                "compression": config.default_compression,
                "retention": {"max_checkpoints_per_container":
                              config.max_checkpoints_per_container,
                              "max_total_bytes": config.max_total_bytes}}

    @app.get("/list/{namespace}")
    def list_namespace(namespace: str, root: Annotated[str | None, Query()] = None,
                       body: Annotated[ListRequest | None, Body()] = None,
                       ) -> list[dict[str, Any]]:
        requested = root or (body.root if body is not None else None)
        return [c.to_dict() for c in list_containers(_root(config, requested), namespace)]

    @app.post("/checkpoint")
    def post_checkpoint(request: Request, body: CheckpointRequest) -> dict[str, Any]:
        data = body.checkpoint_data
        remote = lifecycle.wants_remote(config, body.storage, data.checkpoint_path)
        try:
            result = checkpoint_fn(
                config, _root(config, data.root), data.namespace, data.sandbox_name,
                data.container_name, data.checkpoint_path or None, body.leave_running,
                locks=locks, with_rootfs=body.with_rootfs,
            )
        except HelperError as exc:
            lifecycle.checkpoint_failed(kube_api, data.namespace, data.sandbox_name,
                                        data.container_name, exc)
            raise
        request_state(request.scope).update(checkpoint_id=result.checkpoint_id,
                                            container_id=result.container.container_id)
        answer = result.to_dict()
        pushed = None
        if remote:
            try:
                pushed = lifecycle.push(config, result,
                                        body.compression or config.default_compression)
            except HelperError as exc:
                exc.extra.update(checkpoint_id=result.checkpoint_id,
                                 checkpoint_path=str(result.checkpoint_path))
                exc.message += f" (checkpoint {result.checkpoint_id} is kept on this node)"
                lifecycle.checkpoint_failed(kube_api, data.namespace, data.sandbox_name,
                                            data.container_name, exc)
                raise
            answer["remote"] = pushed.to_dict()
        answer["storage"] = "remote" if remote else "local"
        lifecycle.checkpointed(kube_api, result, pushed)
        removed = lifecycle.apply_retention(config)
        if removed:
            answer["retention_removed"] = [r["id"] for r in removed]
        return answer

    @app.post("/restore")
    def post_restore(request: Request, body: RestoreRequest) -> dict[str, Any]:
        data = body.checkpoint_data
        request_state(request.scope)["checkpoint_id"] = data.checkpoint_id or ""
        try:
            pulled = None
            if data.checkpoint_id and not data.checkpoint_path:
                pulled = lifecycle.ensure_local(config, data.checkpoint_id)
            result = restore_fn(
                config, _root(config, data.root), data.namespace, data.sandbox_name,
                data.container_name, data.checkpoint_path or None, data.checkpoint_id or None,
                locks=locks,
            )
        except HelperError as exc:
            lifecycle.restore_failed(kube_api, data.namespace, data.sandbox_name,
                                     data.container_name,
                                     data.checkpoint_id or data.checkpoint_path or "?", exc)
            raise
        request_state(request.scope).update(checkpoint_id=result.checkpoint_id,
                                            container_id=result.container.container_id)
        lifecycle.restored(kube_api, result, lifecycle.source_of(config, result.checkpoint_id))
        answer = result.to_dict()
        if pulled is not None:
            answer["pulled"] = pulled
        return answer

    @app.post("/checkpoint/rootfs")
    def post_checkpoint_rootfs(request: Request, body: RootfsCheckpointRequest) -> dict[str, Any]:
        result = checkpoint_rootfs(
            config, _root(config, body.root), body.namespace, body.sandbox_name,
            body.container_name, body.address or config.default_containerd_address,
            body.image_ref, locks=locks)
        request_state(request.scope)["container_id"] = result.container_id
        return result.to_dict()

    @app.post("/checkpoint/rootfs/crio")
    def post_checkpoint_rootfs_crio(request: Request, body: CrioRootfsCheckpointRequest,
                                    ) -> dict[str, Any]:
        result = checkpoint_rootfs_crio(
            config, _root(config, body.root), body.namespace, body.sandbox_name,
            body.container_name, body.image_ref, body.new_image_ref, locks=locks)
        request_state(request.scope)["container_id"] = result.container_id
        return result.to_dict()

    @app.post("/restore/rootfs")
    def post_restore_rootfs(request: Request, body: RootfsRestoreRequest) -> dict[str, Any]:
        result = restore_rootfs(
            config, _root(config, body.root), body.namespace, body.sandbox_name,
            body.container_name, body.address or _default_address(config), body.image_ref,
            locks=locks)
        request_state(request.scope)["container_id"] = result.container_id
        return result.to_dict()

    @app.get("/checkpoints")
    def get_checkpoints(request: Request,
                        remote: Annotated[bool, Query()] = False) -> dict[str, Any]:
        # only the namespaces whose checkpoints the caller may list
        access = access_of(request.scope)
        entries = [e for e in lifecycle.list_checkpoints(config, include_remote=remote)
                   if access.may(str(e.get("namespace") or ""), LIST_CHECKPOINTS)]
        return {"checkpoints": entries, "node": config.node_name}

    @app.post("/checkpoints/prune")
    def post_prune(body: Annotated[PruneRequest | None, Body()] = None) -> dict[str, Any]:
        body = body or PruneRequest()
        removed = lifecycle.apply_retention(config, body.max_per_container,
                                            body.max_total_bytes, body.dry_run)
        return {"removed": removed, "dry_run": body.dry_run, "node": config.node_name}

    @app.get("/checkpoints/{checkpoint_id}")
    def get_checkpoint(request: Request, checkpoint_id: str) -> dict[str, Any]:
        request_state(request.scope)["checkpoint_id"] = checkpoint_id
        return lifecycle.inspect(config, checkpoint_id)

    @app.delete("/checkpoints/{checkpoint_id}")
    def delete_checkpoint(request: Request, checkpoint_id: str) -> dict[str, Any]:
        request_state(request.scope)["checkpoint_id"] = checkpoint_id
        return lifecycle.delete(config, checkpoint_id)

    return app
