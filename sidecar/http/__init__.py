"""The helper's HTTP layer: the FastAPI application, its routes, middleware, request schemas
and caller checks. It parses and renders; the work is done by sidecar.ops."""
