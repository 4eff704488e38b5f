"""Who may ask the helper to act, and on what (docs/security.md).

The API server's pod proxy drops the caller's `Authorization` header, so the caller's
credentials never reach the helper. The caller therefore has the API server record who it is:
it creates a CertificateSigningRequest whose `spec.signerName` is
`cedana.io/caller-proof-<sha256 of a random secret>` - the API server itself fills in
`spec.username`, `groups`, `uid` and `extra` from the credentials it authenticated (token, client
certificate, anything), and the spec can never change afterwards. Nobody signs it: the signer
name is ours and the request's key was thrown away. On every request the caller sends

    X-Cedana-Caller: CSR_NAME        X-Cedana-Proof: SECRET

The helper reads the CSR with its own service account, checks the secret against the signer
name and the CSR's age, and then asks the API server, as the kubelet does, with a
SubjectAccessReview in that identity's name whether it may do what the request does:

    checkpoint a pod of NS          create checkpoints.cedana.io           in NS
    restore into a pod of NS        create checkpoints.cedana.io/restore   in NS
    ... from a checkpoint of NS2    get    checkpoints.cedana.io           in NS2
    see checkpoints of NS           list   checkpoints.cedana.io           in NS (catalogue filter)
    inspect / delete one of NS      get / delete checkpoints.cedana.io     in NS
    list the containers of NS       list   pods                            in NS

No proof (or one Kubernetes does not vouch for) is 401; a proof without the permission is 403.
"""
from __future__ import annotations

import hmac
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import anyio
from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from kubectl_cedana import contract
from kubectl_cedana.contract import PROOF_TTL_S, SIGNER_PREFIX, proof_digest
from sidecar.config import HelperConfig
from sidecar.errors import (
    AuthorizationUnavailable,
    CheckpointNotFound,
    Forbidden,
    HelperError,
    Unauthenticated,
)
from sidecar.http.middleware import request_state, send_error
from sidecar.kube.api import KubeAPI
from sidecar.storage import store
from sidecar.storage.catalogue import Catalogue
from sidecar.storage.paths import confine

log = logging.getLogger(__name__)

GROUP = "cedana.io"
# the request headers, as the ASGI scope spells them
CALLER_HEADER = contract.CALLER_HEADER.lower()
PROOF_HEADER = contract.PROOF_HEADER.lower()
#: the API server's clock and ours may disagree a little
CLOCK_SKEW_S = 60
#: verified proofs and review answers are trusted again without asking for this long
CACHE_S = 10.0
MODES = ("kubernetes", "none")

_CSR_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


@dataclass(frozen=True)
class Permission:
    """One SubjectAccessReview question: may the caller `verb` `resource` in `namespace`?"""

    verb: str
    resource: str
    group: str = GROUP
    subresource: str = ""

    def describe(self, namespace: str) -> str:
        what = self.resource + (f".{self.group}" if self.group else "") + \
            (f"/{self.subresource}" if self.subresource else "")
        return f"{self.verb} {what} in namespace {namespace}"


CHECKPOINT = Permission("create", "checkpoints")
RESTORE = Permission("create", "checkpoints", subresource="restore")
READ_CHECKPOINT = Permission("get", "checkpoints")
LIST_CHECKPOINTS = Permission("list", "checkpoints")
DELETE_CHECKPOINT = Permission("delete", "checkpoints")
LIST_PODS = Permission("list", "pods", group="")


@dataclass(frozen=True)
class Caller:
    """Who the API server says created the caller's proof."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def review_user(self) -> dict[str, Any]:
        return {"user": self.username, "uid": self.uid, "groups": list(self.groups),
                "extra": {k: list(v) for k, v in self.extra}}


Reviewer = Callable[[Caller, str, Permission], tuple[bool, str]]


@dataclass
class Access:
    """What one request may do: `caller=None` is everything (`--authorization none`)."""

    caller: Caller | None
    reviewer: Reviewer | None = None
    _answers: dict[tuple[str, Permission], tuple[bool, str]] = field(default_factory=dict)

    @property
    def unrestricted(self) -> bool:
        return self.caller is None

    def review(self, namespace: str, permission: Permission) -> tuple[bool, str]:
        if self.caller is None or self.reviewer is None:
            return True, ""
        key = (namespace, permission)
        if key not in self._answers:
            self._answers[key] = self.reviewer(self.caller, namespace, permission)
        return self._answers[key]

    def may(self, namespace: str, permission: Permission) -> bool:
        return self.review(namespace, permission)[0]

    def require(self, namespace: str, permission: Permission, what: str) -> None:
        allowed, reason = self.review(namespace, permission)
        if not allowed:
            needed = permission.describe(namespace)
            who = self.caller.username if self.caller else "?"
            raise Forbidden(
                f"{who} may not act on {what} in namespace {namespace!r}: that needs "
                f"\"{needed}\" (ClusterRole cedana-checkpointer)"
                + (f"; authorizer: {reason}" if reason else ""),
                namespace=namespace, permission=needed, user=who)


UNRESTRICTED = Access(None)
CsrReader = Callable[[str], "Mapping[str, Any] | None"]


class ApiUnavailable(Exception):
    """The API server could not be asked (as opposed to: it said no)."""


def _timestamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=timezone.utc).timestamp()


def proof_problem(csr: Mapping[str, Any], digest: str, now: float) -> tuple[str, float]:
    """Why this CSR does not vouch for the secret ('' if it does), and until when it does."""
    meta = csr.get("metadata") or {}
    spec = csr.get("spec") or {}
    if meta.get("deletionTimestamp"):
        return "is being deleted", 0.0
    if not hmac.compare_digest(str(spec.get("signerName") or ""), SIGNER_PREFIX + digest):
        return "was not made for this proof", 0.0
    if not spec.get("username"):
        return "names no user", 0.0
    try:
        created = _timestamp(str(meta.get("creationTimestamp") or ""))
    except ValueError:
        return "has no valid creationTimestamp", 0.0
    expires = created + PROOF_TTL_S
    if now > expires + CLOCK_SKEW_S:
        return f"expired {int(now - expires)} s ago (proofs last {PROOF_TTL_S} s)", 0.0
    if created > now + CLOCK_SKEW_S:
        return "was created in the future", 0.0
    return "", expires + CLOCK_SKEW_S


def caller_of(csr: Mapping[str, Any]) -> Caller:
    spec = csr.get("spec") or {}
    extra = spec.get("extra") or {}
    return Caller(str(spec.get("username") or ""), str(spec.get("uid") or ""),
                  tuple(str(g) for g in spec.get("groups") or ()),
                  tuple(sorted((str(k), tuple(str(x) for x in v or ()))
                               for k, v in extra.items())))


class CallerVerifier:
    """Turns the request headers into an Access: who the caller is, and a cached reviewer."""

    def __init__(self, read_csr: CsrReader, review: Reviewer,
                 clock: Callable[[], float] = time.time) -> None:
        self.read_csr = read_csr
        self._review = review
        self.clock = clock
        self._proofs: dict[tuple[str, str], tuple[float, Caller]] = {}
        self._answers: dict[tuple[Caller, str, Permission], tuple[float, bool, str]] = {}
        self._lock = threading.Lock()

    def authenticate(self, headers: Mapping[str, str]) -> Access:
        name = headers.get(CALLER_HEADER, "").strip()
        secret = headers.get(PROOF_HEADER, "")
        if not name or not secret:
            raise Unauthenticated(
                "no proof of who is calling: the helper acts only for callers Kubernetes "
                "vouches for. Send X-Cedana-Caller (the name of a CertificateSigningRequest you "
                f"created with signerName {SIGNER_PREFIX}<sha256 of a secret>) and "
                "X-Cedana-Proof (that secret); kubectl cedana does this for you "
                "(docs/security.md)")
        if not _CSR_NAME.fullmatch(name):
            raise Unauthenticated(f"X-Cedana-Caller {name[:80]!r} is not an object name")
        digest = proof_digest(secret)
        now = self.clock()
        with self._lock:
            cached = self._proofs.get((name, digest))
        if cached is not None and now < cached[0]:
            return Access(cached[1], self.review)
        try:
            csr = self.read_csr(name)
        except ApiUnavailable as exc:
            raise AuthorizationUnavailable(
                f"cannot read the caller's CertificateSigningRequest {name} from the "
                f"Kubernetes API: {exc}") from exc
        if csr is None:
            raise Unauthenticated(f"CertificateSigningRequest {name} does not exist")
        problem, valid_until = proof_problem(csr, digest, now)
        if problem:
            raise Unauthenticated(f"CertificateSigningRequest {name} {problem}")
        caller = caller_of(csr)
        with self._lock:
            if len(self._proofs) > 4096:
                self._proofs.clear()
            self._proofs[(name, digest)] = (min(valid_until, now + CACHE_S), caller)
        return Access(caller, self.review)

    def review(self, caller: Caller, namespace: str, permission: Permission) -> tuple[bool, str]:
        key = (caller, namespace, permission)
        now = self.clock()
        with self._lock:
            cached = self._answers.get(key)
        if cached is not None and now < cached[0]:
            return cached[1], cached[2]
        try:
            allowed, reason = self._review(caller, namespace, permission)
        except ApiUnavailable as exc:
            raise AuthorizationUnavailable(
                f"cannot ask the Kubernetes API whether {caller.username} may "
                f"{permission.describe(namespace)}: {exc}") from exc
        with self._lock:
            if len(self._answers) > 16384:
                self._answers.clear()
            self._answers[key] = (now + CACHE_S, allowed, reason)
        return allowed, reason


def kubernetes_api(api_client: Any, timeout_s: float = 5.0) -> tuple[CsrReader, Reviewer]:
    """Read proofs and review callers with the helper's own credentials."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    certificates = client.CertificatesV1Api(api_client)
    authorization = client.AuthorizationV1Api(api_client)

    def read_csr(name: str) -> Mapping[str, Any] | None:
        try:
            raw = certificates.read_certificate_signing_request(
                name, _preload_content=False, _request_timeout=timeout_s)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise ApiUnavailable(f"HTTP {exc.status} {exc.reason}") from exc
        except Exception as exc:  # noqa: BLE001 - transport errors of urllib3 and friends
            raise ApiUnavailable(f"{type(exc).__name__}: {exc}") from exc
        data: Mapping[str, Any] = json.loads(raw.data)
        return data

    def review(caller: Caller, namespace: str, permission: Permission) -> tuple[bool, str]:
        attributes = {"namespace": namespace, "verb": permission.verb,
                      "group": permission.group, "resource": permission.resource}
        if permission.subresource:
            attributes["subresource"] = permission.subresource
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": {**caller.review_user(), "resourceAttributes": attributes}}
        try:
            raw = authorization.create_subject_access_review(
                body, _preload_content=False, _request_timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001 - ApiException and transport errors alike
            raise ApiUnavailable(f"{type(exc).__name__}: {exc}") from exc
        status = json.loads(raw.data).get("status") or {}
        return bool(status.get("allowed")), str(status.get("reason") or "")

    return read_csr, review


# -- the HTTP side ----------------------------------------------------------------------------
def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1")
            for k, v in scope.get("headers") or []}


def access_of(scope: Scope) -> Access:
    """The Access the middleware settled for this request (unrestricted without one)."""
    access = request_state(scope).get("access")
    return access if isinstance(access, Access) else UNRESTRICTED


class AuthorizationMiddleware:
    """401 before anything else runs unless the request carries a valid caller proof; the
    request's Access is left for the routes (access_of)."""

    def __init__(self, app: ASGIApp, verifier: CallerVerifier | None) -> None:
        self.app = app
        self.verifier = verifier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.verifier is None or scope["path"] in contract.OPEN_ROUTES:
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
        await self.app(scope, receive, send)


# -- which namespaces a route acts on ------------------------------------------------------------
def _body_field(body: Any, *path: str) -> str | None:
    for key in path:
        if not isinstance(body, dict):
            return None
        body = body.get(key)
    return body if isinstance(body, str) else None


Need = tuple[str, Permission, str]  # (namespace, permission, what it is about)


class RoutePolicy:
    """What each route needs, checked with the request's Access (403 when refused).

    A route missing here is refused to every restricted caller (fail closed); a unit test
    lists the routes of the app that have no policy."""

    def __init__(self, config: HelperConfig) -> None:
        self.config = config
        self.checkpoint_dir = config.checkpoint_dir
        self.catalogue = Catalogue(config.checkpoint_dir)

    def _checkpoint_namespace(self, checkpoint_id: str | None, path: str | None) -> str | None:
        """The source namespace of a checkpoint named by id or path; None if unknown."""
        if checkpoint_id:
            try:
                return str(self.catalogue.get(checkpoint_id).get("namespace") or "")
            except CheckpointNotFound:
                pass
            # not on this node: a restore by id would pull it from the checkpoint registry,
            # so its source is read there (errors propagate: fail closed)
            from sidecar.ops import lifecycle
            from sidecar.registry.remote import remote_entry

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

    def needs(self, method: str, route: str, params: Mapping[str, str],
              body: Any) -> list[Need] | None:
        """What the request needs; None when the route has no policy."""
        if route in contract.OPEN_ROUTES or (method, route) == ("GET", "/checkpoints"):
            return []  # open, or filtered by the middleware
        if (method, route) == ("GET", "/list/{namespace}"):
            return [(params.get("namespace", ""), LIST_PODS, "the containers")]
        if (method, route) == ("POST", "/checkpoint"):
            ns = _body_field(body, "checkpoint_data", "namespace")
            return [(ns, CHECKPOINT, "the pod to checkpoint")] if ns else []
        if (method, route) == ("POST", "/restore"):
            out: list[Need] = []
            ns = _body_field(body, "checkpoint_data", "namespace")
            if ns:
                out.append((ns, RESTORE, "the restore target"))
            source = self._checkpoint_namespace(
                _body_field(body, "checkpoint_data", "checkpoint_id"),
                _body_field(body, "checkpoint_data", "checkpoint_path"))
            if source is not None:
                out.append((source, READ_CHECKPOINT, "the checkpoint's source pod"))
            return out
        if method == "POST" and route in ("/checkpoint/rootfs", "/checkpoint/rootfs/crio"):
            ns = _body_field(body, "namespace")
            return [(ns, CHECKPOINT, "the pod")] if ns else []
        if (method, route) == ("POST", "/restore/rootfs"):
            ns = _body_field(body, "namespace")
            return [(ns, RESTORE, "the pod")] if ns else []
        if (method, route) == ("POST", "/checkpoints/prune"):
            # retention may delete any checkpoint of the node: the caller must be allowed to
            # delete in every namespace that has one
            spaces = sorted({str(e.get("namespace") or "") for e in self.catalogue.list()})
            return [(ns, DELETE_CHECKPOINT, "a checkpoint prune may delete") for ns in spaces]
        if route == "/checkpoints/{checkpoint_id}" and method in ("GET", "DELETE"):
            source = self._checkpoint_namespace(params.get("checkpoint_id"), None)
            permission = READ_CHECKPOINT if method == "GET" else DELETE_CHECKPOINT
            return [(source, permission, "the checkpoint")] if source is not None else []
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
        needs = await anyio.to_thread.run_sync(
            self.needs, request.method, route, dict(request.path_params), body)
        if needs is None:
            raise Forbidden(f"{request.method} {route} has no authorization policy in "
                            "sidecar/http/caller.py; only a helper run with --authorization none "
                            "answers it")

        def check() -> None:
            for namespace, permission, what in needs or []:
                access.require(namespace, permission, what)

        await anyio.to_thread.run_sync(check)


def routes_without_policy(policy: RoutePolicy, routes: Iterable[tuple[str, str]]
                          ) -> list[str]:
    """Routes (method, path) the policy does not know: a unit test keeps this empty."""
    missing = []
    for method, path in routes:
        params = {name: "x" for name in re.findall(r"{(\w+)}", path)}
        if policy.needs(method, path, params, None) is None:
            missing.append(f"{method} {path}")
    return missing


def build_verifier(mode: str, api: KubeAPI | None) -> CallerVerifier | None:
    """`--authorization`: kubernetes (proofs and reviews through the helper's own API access:
    service account or --kubeconfig, connected as `api`) or none."""
    if mode == "none":
        log.warning("--authorization none: every caller that reaches this port is trusted")
        return None
    if mode != "kubernetes":
        raise ValueError(f"unknown authorization mode {mode!r} (one of {', '.join(MODES)})")
    if api is None:
        raise RuntimeError(
            "--authorization kubernetes needs the Kubernetes API to check callers: run the "
            "helper in a pod with its service account, or pass --kubeconfig; "
            "--authorization none trusts every caller (tests on a loopback address only)")
    read_csr, review = kubernetes_api(api.api_client)
    return CallerVerifier(read_csr, review)
