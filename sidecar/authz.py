"""Who may ask the helper to act, and on which namespaces (docs/security.md).

The API server's pod proxy drops the caller's `Authorization` header, so the caller's identity
cannot reach the helper. Instead a caller proves what Kubernetes lets it do: it creates a
CheckpointAccess object (cedana.io/v1alpha1) in a namespace - RBAC decides who may - whose spec
holds the sha256 of a random secret, and sends, on every request:

    X-Cedana-Grants: NAMESPACE/NAME[,NAMESPACE/NAME...]
    X-Cedana-Proof: SECRET

The helper reads each named object with its own service account and accepts it when it exists,
was never modified (generation 1), is not older than its ttlSeconds (at most MAX_TTL_S) and its
digest matches the secret. A request may then act on, and see the checkpoints of, exactly the
namespaces of the grants it holds: no grant is 401, a grant for another namespace is 403.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sidecar import store
from sidecar.catalogue import Catalogue
from sidecar.config import HelperConfig
from sidecar.errors import (
    AuthorizationUnavailable,
    CheckpointNotFound,
    Forbidden,
    HelperError,
    Unauthenticated,
)
from sidecar.middleware import request_state, send_error
from sidecar.paths import confine

log = logging.getLogger(__name__)

GROUP = "cedana.io"
VERSION = "v1alpha1"
PLURAL = "checkpointaccesses"
KIND = "CheckpointAccess"
GRANTS_HEADER = "x-cedana-grants"
PROOF_HEADER = "x-cedana-proof"
PERMISSION = f"create {PLURAL}.{GROUP}"

#: answered to anyone: kubelet's probes and a version check carry no proof
OPEN_PATHS = frozenset({"/healthz", "/version"})
MAX_TTL_S = 3600
#: the API server's clock and ours may disagree a little
CLOCK_SKEW_S = 60
#: a verified grant is trusted again without asking the API server for this long
CACHE_S = 15.0
MAX_GRANTS = 256
MODES = ("kubernetes", "none")

_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class Access:
    """What one request may do: `namespaces=None` is everything (`--authorization none`)."""

    namespaces: frozenset[str] | None

    @property
    def unrestricted(self) -> bool:
        return self.namespaces is None

    def may(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces

    def require(self, namespace: str, what: str) -> None:
        if not self.may(namespace):
            held = ", ".join(sorted(self.namespaces or ())) or "none"
            raise Forbidden(
                f"{what} is in namespace {namespace!r}, but the request holds CheckpointAccess "
                f"grants only for: {held}; acting there needs \"{PERMISSION}\" in namespace "
                f"{namespace} (ClusterRole cedana-checkpointer)",
                namespace=namespace, permission=f"{PERMISSION} in namespace {namespace}")


UNRESTRICTED = Access(None)
GrantReader = Callable[[str, str], "Mapping[str, Any] | None"]


class GrantLookupFailed(Exception):
    """The API server could not be asked (as opposed to: it said no)."""


def proof_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def parse_grants(value: str) -> list[tuple[str, str]]:
    """`ns/name, ns/name` -> pairs; malformed entries make the whole header invalid."""
    refs: list[tuple[str, str]] = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        namespace, sep, name = part.partition("/")
        if not sep or not _NAMESPACE.fullmatch(namespace) or not _NAME.fullmatch(name):
            raise Unauthenticated(f"X-Cedana-Grants entry {part[:80]!r} is not NAMESPACE/NAME")
        refs.append((namespace, name))
    if len(refs) > MAX_GRANTS:
        raise Unauthenticated(f"X-Cedana-Grants names {len(refs)} grants; at most "
                              f"{MAX_GRANTS} are read")
    return refs


def _timestamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=timezone.utc).timestamp()


def grant_problem(obj: Mapping[str, Any], digest: str, now: float) -> tuple[str, float]:
    """Why this CheckpointAccess does not vouch for the secret ('' if it does), and until
    when it is valid."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    if meta.get("deletionTimestamp"):
        return "is being deleted", 0.0
    if int(meta.get("generation") or 0) != 1:
        return "was modified after it was created", 0.0
    expected = spec.get("proofSHA256")
    if not isinstance(expected, str) or not hmac.compare_digest(expected.lower(), digest):
        return "was not created for this proof", 0.0
    try:
        created = _timestamp(str(meta.get("creationTimestamp") or ""))
        ttl = min(int(spec.get("ttlSeconds") or 0), MAX_TTL_S)
    except (TypeError, ValueError):
        return "has no valid creationTimestamp or ttlSeconds", 0.0
    expires = created + ttl
    if now > expires + CLOCK_SKEW_S:
        return f"expired {int(now - expires)} s ago", 0.0
    if created > now + CLOCK_SKEW_S:
        return "was created in the future", 0.0
    return "", expires + CLOCK_SKEW_S


class GrantVerifier:
    """Turns the request headers into an Access, asking the API server about each grant."""

    def __init__(self, read_grant: GrantReader, clock: Callable[[], float] = time.time) -> None:
        self.read_grant = read_grant
        self.clock = clock
        self._cache: dict[tuple[str, str, str], float] = {}
        self._lock = threading.Lock()

    def authenticate(self, headers: Mapping[str, str]) -> Access:
        grants_value = headers.get(GRANTS_HEADER, "")
        secret = headers.get(PROOF_HEADER, "")
        if not grants_value or not secret:
            raise Unauthenticated(
                "no proof of access: the helper acts only for callers Kubernetes vouches for. "
                "Send X-Cedana-Grants (NAMESPACE/NAME of CheckpointAccess objects you created) "
                "and X-Cedana-Proof (the secret whose sha256 is their spec.proofSHA256); "
                "kubectl cedana does this for you once the CheckpointAccess kind is installed "
                "(kubectl cedana install; docs/security.md)")
        refs = parse_grants(grants_value)
        if not refs:
            raise Unauthenticated("X-Cedana-Grants names no grant")
        digest = proof_digest(secret)
        now = self.clock()
        granted: set[str] = set()
        problems: list[str] = []
        for namespace, name in refs:
            if namespace in granted:
                continue
            problem = self._check(namespace, name, digest, now)
            if problem:
                problems.append(f"{namespace}/{name} {problem}")
            else:
                granted.add(namespace)
        if not granted:
            raise Unauthenticated("no valid CheckpointAccess grant: " + "; ".join(problems[:5]),
                                  grants=[f"{ns}/{n}" for ns, n in refs[:20]])
        if problems:
            log.info("ignored grants: %s", "; ".join(problems[:5]))
        return Access(frozenset(granted))

    def _check(self, namespace: str, name: str, digest: str, now: float) -> str:
        key = (namespace, name, digest)
        with self._lock:
            until = self._cache.get(key)
        if until is not None and now < until:
            return ""
        try:
            obj = self.read_grant(namespace, name)
        except GrantLookupFailed as exc:
            raise AuthorizationUnavailable(
                f"cannot read CheckpointAccess {namespace}/{name} from the Kubernetes API to "
                f"check the caller: {exc}") from exc
        if obj is None:
            return "does not exist"
        problem, valid_until = grant_problem(obj, digest, now)
        if not problem:
            with self._lock:
                if len(self._cache) > 4096:
                    self._cache.clear()
                self._cache[key] = min(valid_until, now + CACHE_S)
        return problem


def kubernetes_reader(api_client: Any, timeout_s: float = 5.0) -> GrantReader:
    """Read grants with the helper's own credentials (service account or --kubeconfig)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    custom = client.CustomObjectsApi(api_client)

    def read(namespace: str, name: str) -> Mapping[str, Any] | None:
        try:
            obj: Mapping[str, Any] = custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _request_timeout=timeout_s)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise GrantLookupFailed(f"HTTP {exc.status} {exc.reason}") from exc
        except Exception as exc:  # noqa: BLE001 - transport errors of urllib3 and friends
            raise GrantLookupFailed(f"{type(exc).__name__}: {exc}") from exc
        return obj

    return read


# -- the HTTP side ----------------------------------------------------------------------------
def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1")
            for k, v in scope.get("headers") or []}


def access_of(scope: Scope) -> Access:
    """The Access the middleware settled for this request (unrestricted without one)."""
    access = request_state(scope).get("access")
    return access if isinstance(access, Access) else UNRESTRICTED


class AuthorizationMiddleware:
    """401 before anything else runs unless the request carries valid grants; the catalogue
    answer (GET /checkpoints) keeps only entries of granted namespaces."""

    def __init__(self, app: ASGIApp, verifier: GrantVerifier | None) -> None:
        self.app = app
        self.verifier = verifier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.verifier is None or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        verifier = self.verifier
        headers = _headers(scope)
        try:
            access = await anyio.to_thread.run_sync(verifier.authenticate, headers)
        except HelperError as exc:
            await send_error(scope, send, exc)
            return
        request_state(scope)["access"] = access
        if scope.get("method") == "GET" and scope["path"].rstrip("/") == "/checkpoints":
            await self._filtered_catalogue(scope, receive, send, access)
            return
        await self.app(scope, receive, send)

    async def _filtered_catalogue(self, scope: Scope, receive: Receive, send: Send,
                                  access: Access) -> None:
        start: Message | None = None
        chunks: list[bytes] = []

        async def collect(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    await flush()
            else:
                await send(message)

        async def flush() -> None:
            assert start is not None
            body = b"".join(chunks)
            if start["status"] == 200:
                body = filter_catalogue(body, access)
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, collect)


def filter_catalogue(body: bytes, access: Access) -> bytes:
    """The catalogue answer with only the entries of namespaces `access` may see."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if isinstance(data, dict) and isinstance(data.get("checkpoints"), list):
        kept = [e for e in data["checkpoints"]
                if isinstance(e, dict) and access.may(str(e.get("namespace") or ""))]
        # how many were left out (never whose): a client may then ask with more grants
        data["hidden"] = len(data["checkpoints"]) - len(kept)
        data["checkpoints"] = kept
        return json.dumps(data).encode()
    return body


# -- which namespaces a route acts on ------------------------------------------------------------
def _body_field(body: Any, *path: str) -> str | None:
    for key in path:
        if not isinstance(body, dict):
            return None
        body = body.get(key)
    return body if isinstance(body, str) else None


class RoutePolicy:
    """The namespaces each route acts on, checked against the request's Access (403)."""

    def __init__(self, config: HelperConfig) -> None:
        self.config = config
        self.checkpoint_dir = config.checkpoint_dir
        self.catalogue = Catalogue(config.checkpoint_dir)
        self._warned: set[str] = set()

    def _checkpoint_namespace(self, checkpoint_id: str | None, path: str | None) -> str | None:
        """The source namespace of a checkpoint named by id or path; None if unknown."""
        if checkpoint_id:
            try:
                return str(self.catalogue.get(checkpoint_id).get("namespace") or "")
            except CheckpointNotFound:
                pass
            # not on this node: a restore by id would pull it from the checkpoint registry,
            # so its source is read there (errors propagate: fail closed)
            from sidecar import lifecycle
            from sidecar.remote import remote_entry

            remote = lifecycle.remote_store(self.config)
            if remote is None:
                return None  # the route answers checkpoint_not_found
            try:
                image, digest = remote.manifest(checkpoint_id)
            except CheckpointNotFound:
                return None
            return str(remote_entry(image, digest, remote.name(checkpoint_id)).get(
                "namespace") or "")
        if path:
            try:
                real = confine(self.checkpoint_dir, path)
            except HelperError:
                return None  # the route refuses it with its own code
            for entry in self.catalogue.list():
                if entry.get("path") == str(real):
                    return str(entry.get("namespace") or "")
            try:
                return str(store.load_manifest(real).source.get("namespace") or "")
            except HelperError:
                return None
        return None

    def acted_on(self, method: str, route: str, params: Mapping[str, str],
                 body: Any) -> list[tuple[str, str]] | None:
        """(namespace, what) pairs the request acts on; None when the route has no policy."""
        if route in OPEN_PATHS or (method, route) == ("GET", "/checkpoints"):
            return []  # open, or filtered by the middleware
        if (method, route) == ("GET", "/list/{namespace}"):
            return [(params.get("namespace", ""), "the listing")]
        if (method, route) == ("POST", "/checkpoint"):
            ns = _body_field(body, "checkpoint_data", "namespace")
            return [(ns, "the pod to checkpoint")] if ns else []
        if (method, route) == ("POST", "/restore"):
            out: list[tuple[str, str]] = []
            ns = _body_field(body, "checkpoint_data", "namespace")
            if ns:
                out.append((ns, "the restore target"))
            source = self._checkpoint_namespace(
                _body_field(body, "checkpoint_data", "checkpoint_id"),
                _body_field(body, "checkpoint_data", "checkpoint_path"))
            if source is not None:
                out.append((source, "the checkpoint's source pod"))
            return out
        if method == "POST" and route in ("/checkpoint/rootfs", "/checkpoint/rootfs/crio",
                                          "/restore/rootfs"):
            ns = _body_field(body, "namespace")
            return [(ns, "the pod")] if ns else []
        if (method, route) == ("POST", "/checkpoints/prune"):
            # retention may delete any checkpoint of the node: the caller must hold every
            # namespace that has one
            return sorted({(str(e.get("namespace") or ""), "a checkpoint prune may delete")
                           for e in self.catalogue.list()})
        if route == "/checkpoints/{checkpoint_id}" and method in ("GET", "DELETE"):
            source = self._checkpoint_namespace(params.get("checkpoint_id"), None)
            return [(source, "the checkpoint's source pod")] if source is not None else []
        return None

    async def __call__(self, request: Request) -> None:
        access = access_of(request.scope)
        if access.unrestricted:
            return
        route = getattr(request.scope.get("route"), "path", request.url.path)
        body: Any = None
        if request.method in ("POST", "PUT", "PATCH", "DELETE"):
            raw = await request.body()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None  # the route answers invalid_request
        acted = await anyio.to_thread.run_sync(
            self.acted_on, request.method, route, dict(request.path_params), body)
        if acted is None:
            if route not in self._warned:
                self._warned.add(route)
                log.warning("route %s %s has no namespace policy in sidecar/authz.py; any "
                            "holder of a valid grant may call it", request.method, route)
            return
        for namespace, what in acted:
            access.require(namespace, what)


def routes_without_policy(policy: RoutePolicy, routes: Iterable[tuple[str, str]]) -> list[str]:
    """Routes (method, path) without a policy: a unit test keeps this empty."""
    missing = []
    for method, path in routes:
        params = {name: "x" for name in re.findall(r"{(\w+)}", path)}
        if policy.acted_on(method, path, params, None) is None:
            missing.append(f"{method} {path}")
    return missing


def build_verifier(mode: str, kubeconfig: Path | None, node_name: str) -> GrantVerifier | None:
    """`--authorization`: kubernetes (grants read with the helper's own API access) or none."""
    if mode == "none":
        log.warning("--authorization none: every caller that reaches this port is trusted")
        return None
    if mode != "kubernetes":
        raise ValueError(f"unknown authorization mode {mode!r} (one of {', '.join(MODES)})")
    from sidecar.kubeapi import KubeAPI

    api = KubeAPI.connect(kubeconfig, node_name)
    if api is None:
        raise RuntimeError(
            "--authorization kubernetes needs the Kubernetes API to check callers: run the "
            "helper in a pod with its service account, or pass --kubeconfig; "
            "--authorization none trusts every caller (tests on a loopback address only)")
    return GrantVerifier(kubernetes_reader(api.api_client))
