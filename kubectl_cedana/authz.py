"""The proof the node helper asks for: CheckpointAccess grants (docs/security.md).

The API server's pod proxy drops our Authorization header, so the helper cannot see who we are.
Instead, this process creates a CheckpointAccess object in each namespace it acts on - RBAC lets
only users allowed to checkpoint there do so - holding the sha256 of a secret that never leaves
this process except towards the helper. Every helper call then carries

    X-Cedana-Grants: NAMESPACE/NAME,...    X-Cedana-Proof: SECRET

and the helper reads the objects back with its own service account. Grants are made lazily,
once per namespace and process, and deleted when the process exits; the helper refuses them
after ttlSeconds anyway.
"""
from __future__ import annotations

import atexit
import concurrent.futures
import hashlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from kubectl_cedana.errors import ApiError, ApiNotFound, CedanaError, PermissionDenied
from kubectl_cedana.kube import HttpResponse, KubeClient, Timeout, can_i_command

GROUP = "cedana.io"
VERSION = "v1alpha1"
PLURAL = "checkpointaccesses"
KIND = "CheckpointAccess"
GRANTS_HEADER = "X-Cedana-Grants"
PROOF_HEADER = "X-Cedana-Proof"
TTL_SECONDS = 900
#: renew a grant this long before the helper would refuse it
RENEW_MARGIN_S = 120.0
#: a header of at most this many grants stays far below the helper's header limit
MAX_GRANTS_PER_REQUEST = 150
#: routes anyone may call, without grants
OPEN_ROUTES = ("healthz", "version")
#: routes that read or touch checkpoints of any namespace: every held grant goes along
WIDE_ROUTES = ("checkpoints/prune",)
RELEASE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Grant:
    namespace: str
    name: str
    created: float  # time.monotonic() when made

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


def collection_path(namespace: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace, safe='')}/{PLURAL}"


def grant_object(namespace: str, digest: str, ttl_seconds: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
        "metadata": {"generateName": "kubectl-cedana-", "namespace": namespace,
                     "labels": {"app.kubernetes.io/managed-by": "kubectl-cedana"}},
        "spec": {"proofSHA256": digest, "ttlSeconds": ttl_seconds,
                 "client": f"kubectl-cedana pid {os.getpid()} on {socket.gethostname()}"[:200]},
    }


def namespaces_of(route: str, body: Any) -> list[str]:
    """The namespaces a helper request names (route or body)."""
    found: list[str] = []
    parts = route.strip("/").split("/")
    if len(parts) == 2 and parts[0] == "list" and parts[1]:
        from urllib.parse import unquote
        found.append(unquote(parts[1]))
    if isinstance(body, Mapping):
        data = body.get("checkpoint_data")
        for holder in (data, body):
            if isinstance(holder, Mapping) and isinstance(holder.get("namespace"), str):
                found.append(str(holder["namespace"]))
    return [ns for ns in dict.fromkeys(found) if ns]


class GrantBook:
    """The grants this process holds, one per namespace, made on first need."""

    def __init__(self, kube: KubeClient, ttl_seconds: int = TTL_SECONDS) -> None:
        self.kube = kube
        self.ttl_seconds = ttl_seconds
        self.secret = secrets.token_urlsafe(32)
        self.digest = hashlib.sha256(self.secret.encode()).hexdigest()
        self._grants: dict[str, Grant] = {}
        self._refused: set[str] = set()
        self._lock = threading.Lock()
        self._unsupported = False  # the cluster has no CheckpointAccess kind
        self._widened = False

    # -- making grants --------------------------------------------------------------------
    def _fresh(self, grant: Grant | None) -> bool:
        return grant is not None and \
            time.monotonic() - grant.created < self.ttl_seconds - RENEW_MARGIN_S

    def grant(self, namespace: str) -> Grant | None:
        """This process's grant for `namespace`; None when the cluster has no such kind.

        Raises PermissionDenied (naming every permission that is missing) when RBAC refuses.
        """
        with self._lock:
            held = self._grants.get(namespace)
            if self._fresh(held) or self._unsupported:
                return held if self._fresh(held) else None
        try:
            created = self.kube.request("POST", collection_path(namespace),
                                        body=grant_object(namespace, self.digest,
                                                          self.ttl_seconds))
        except ApiNotFound:
            # no CheckpointAccess kind: an older helper install (which needs no proof), or a
            # namespace that does not exist; the helper's answer will say which
            if not self._namespace_exists(namespace):
                return None
            with self._lock:
                self._unsupported = True
            return None
        except PermissionDenied as exc:
            with self._lock:
                self._refused.add(namespace)
            raise self._denied(namespace, exc) from exc
        name = str(((created or {}).get("metadata") or {}).get("name") or "")
        if not name:
            raise CedanaError(f"the API server created a {KIND} in {namespace} without a name")
        grant = Grant(namespace, name, time.monotonic())
        with self._lock:
            old = self._grants.get(namespace)
            self._grants[namespace] = grant
        if old is not None:
            self._delete(old)
        return grant

    def _namespace_exists(self, namespace: str) -> bool:
        try:
            self.kube.request("GET", f"/api/v1/namespaces/{quote(namespace, safe='')}")
        except ApiNotFound:
            return False
        except ApiError:
            return True  # may not read namespaces: assume it exists
        return True

    def _denied(self, namespace: str, exc: PermissionDenied) -> PermissionDenied:
        """The refusal, naming the grant permission and whether pods/proxy is missing too."""
        needed = [f"create {PLURAL}.{GROUP} in namespace {namespace}"]
        checks = [can_i_command(needed[0])]
        try:
            proxy_ok, _ = self.kube.access_review("create", "pods", namespace="cedana-system",
                                                  subresource="proxy")
        except CedanaError:
            proxy_ok = True  # cannot tell: name only what we know is missing
        if not proxy_ok:
            needed.append("create pods/proxy in namespace cedana-system")
            checks.append(can_i_command(needed[1]))
        quoted = " and ".join(f'"{p}"' for p in needed)
        return PermissionDenied(
            f"permission denied: to act on pods of namespace {namespace} you need {quoted} "
            f"(ClusterRole cedana-checkpointer, Role cedana-helper-client; API server: "
            f"{exc.api_status.get('message') or exc.message})",
            permission="; ".join(needed), hint="check with: " + "; ".join(checks),
            status=exc.status, reason=exc.reason, api_status=exc.api_status)

    @property
    def widened(self) -> bool:
        return self._widened

    def widen(self) -> None:
        """Grants in every namespace the user may act on (as far as it may list them)."""
        with self._lock:
            if self._widened or self._unsupported:
                return
            self._widened = True
        try:
            listing = self.kube.request("GET", "/api/v1/namespaces") or {}
            names = [str(n["metadata"]["name"]) for n in listing.get("items") or []
                     if not (n.get("metadata") or {}).get("deletionTimestamp")]
        except ApiError:
            names = [self.kube.namespace]
        with self._lock:
            wanted = [n for n in names if n not in self._refused
                      and not self._fresh(self._grants.get(n))]

        def attempt(namespace: str) -> None:
            try:
                self.grant(namespace)
            except ApiError:
                pass  # not the user's namespace: its checkpoints stay hidden

        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(attempt, wanted[:MAX_GRANTS_PER_REQUEST]))

    # -- using them -----------------------------------------------------------------------
    def headers(self, route: str, body: Any, *, wide: bool = False) -> dict[str, str]:
        """The proof headers for one helper request ({} for the open routes)."""
        route = route.strip("/").split("?", 1)[0]
        if route in OPEN_ROUTES:
            return {}
        wide = wide or route in WIDE_ROUTES
        if wide:
            self.widen()
        named = namespaces_of(route, body) or [self.kube.namespace]
        for namespace in named:
            self.grant(namespace)
        with self._lock:
            ordered = [self._grants[n] for n in named if n in self._grants]
            ordered += [g for n, g in sorted(self._grants.items()) if n not in named]
        ordered = [g for g in ordered if self._fresh(g)][:MAX_GRANTS_PER_REQUEST]
        if not ordered:
            return {}
        return {GRANTS_HEADER: ",".join(g.ref for g in ordered), PROOF_HEADER: self.secret}

    # -- cleaning up ----------------------------------------------------------------------
    def _delete(self, grant: Grant) -> bool:
        """Delete one grant; False when the API server could not be reached."""
        path = f"{collection_path(grant.namespace)}/{quote(grant.name, safe='')}"
        try:
            self.kube.send("DELETE", path, timeout=(RELEASE_TIMEOUT_S, RELEASE_TIMEOUT_S))
        except CedanaError:
            return False
        return True

    def release(self) -> None:
        """Delete every grant this process made (at exit: best effort, one after the other -
        no new threads at interpreter shutdown - and no more tries once the API server is
        unreachable; the helper refuses expired grants anyway)."""
        with self._lock:
            grants = list(self._grants.values())
            self._grants.clear()
        deadline = time.monotonic() + RELEASE_TIMEOUT_S * 3
        for grant in grants:
            if time.monotonic() > deadline or not self._delete(grant):
                break

    def held(self) -> list[Grant]:
        with self._lock:
            return list(self._grants.values())


def _release_at_end(book: GrantBook) -> None:
    """Delete the grants when the command ends (its click context closes), or at exit."""
    atexit.register(book.release)
    try:
        import click

        ctx = click.get_current_context(silent=True)
    except ImportError:
        ctx = None
    if ctx is not None:
        ctx.find_root().call_on_close(book.release)


def grant_book(kube: KubeClient) -> GrantBook:
    """The one GrantBook of this KubeClient (so of this command)."""
    with _books_lock:
        book = getattr(kube, "_cedana_grant_book", None)
        if not isinstance(book, GrantBook):
            book = GrantBook(kube)
            kube._cedana_grant_book = book  # type: ignore[attr-defined]
            _release_at_end(book)
        return book


_books_lock = threading.Lock()


def send_with_grants(kube: KubeClient, method: str, path: str, route: str, *,
                     query: Mapping[str, Any] | None, body: Any, timeout: Timeout
                     ) -> HttpResponse:
    """One helper request through the pod proxy, with the proof it needs.

    A catalogue answer that says entries of other namespaces were left out (`hidden`) is asked
    again once with grants for every namespace the user may act on.
    """
    book = grant_book(kube)
    response = kube.send(method, path, query=query, body=body, timeout=timeout,
                         headers=book.headers(route, body))
    if method == "GET" and route.strip("/").startswith("checkpoints") and \
            response.status == 200 and not book.widened:
        answer = response.json_or_none()
        if isinstance(answer, dict) and int(answer.get("hidden") or 0) > 0:
            book.widen()
            response = kube.send(method, path, query=query, body=body, timeout=timeout,
                                 headers=book.headers(route, body))
    return response
