"""The helper's ASGI application: middleware, error handlers and the routes of
sidecar/http/routes.

Routes that block (filesystem walks, runc, CRIU, registries) are plain `def`, so FastAPI runs
them in its thread pool and operations on different containers proceed in parallel.
"""
from __future__ import annotations

from fastapi import FastAPI

from sidecar import version
from sidecar.config import HelperConfig
from sidecar.http import routes
from sidecar.http.caller import AuthorizationMiddleware
from sidecar.http.errors import install_error_handlers
from sidecar.http.middleware import BodyLimitMiddleware, RequestLogMiddleware
from sidecar.http.policy import routes_without_policy
from sidecar.ops import events
from sidecar.ops.access import CallerVerifier
from sidecar.ops.context import ContainerLocks, Helper, KubeAPI
from sidecar.ops.info import recover


def create_app(config: HelperConfig, *, locks: ContainerLocks | None = None,
               kube: KubeAPI | None | bool = True,
               verifier: CallerVerifier | None = None) -> FastAPI:
    """The helper's application for one configuration. `kube` True: connect to the Kubernetes
    API as configured (for Events); None/False: no API. `verifier` checks who calls and what
    they may do (sidecar/ops/access.py); None trusts every caller, as `--authorization none`
    does."""
    api = events.connect(config.kubeconfig, config.node_name) if kube is True else kube or None
    helper = Helper(config, api, locks if locks is not None else ContainerLocks())
    recover(config)

    app = FastAPI(title="cedana-helper", version=version, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.helper = helper
    install_error_handlers(app)
    # the last added is the outermost: log every request, including those refused for size
    app.add_middleware(BodyLimitMiddleware, limit=config.max_body_bytes,
                       timeout_s=config.body_timeout_s)
    # callers without a valid proof get 401 before their body is even read
    app.add_middleware(AuthorizationMiddleware, verifier=verifier)
    app.add_middleware(RequestLogMiddleware)
    unguarded = routes_without_policy(routes.ROUTERS)
    if unguarded:
        raise RuntimeError("routes without exactly one policy (sidecar/http/policy.py): "
                           + ", ".join(unguarded))
    for router in routes.ROUTERS:
        app.include_router(router)
    return app
