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
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubectl_cedana import contract
from kubectl_cedana.contract import PROOF_TTL_S, SIGNER_PREFIX, proof_digest
from sidecar.errors import AuthorizationUnavailable, Forbidden, Unauthenticated
from sidecar.kube.api import KubeAPI
from sidecar.kube.reviews import (
    ApiUnavailable,
    Caller,
    CsrReader,
    Permission,
    Reviewer,
    kubernetes_api,
)

log = logging.getLogger(__name__)

# the request headers, as the ASGI scope spells them
CALLER_HEADER = contract.CALLER_HEADER.lower()
PROOF_HEADER = contract.PROOF_HEADER.lower()
#: the API server's clock and ours may disagree a little
CLOCK_SKEW_S = 60
#: verified proofs and review answers are trusted again without asking for this long
CACHE_S = 10.0
MODES = ("kubernetes", "none")

_CSR_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")

CHECKPOINT = Permission("create", "checkpoints")
RESTORE = Permission("create", "checkpoints", subresource="restore")
READ_CHECKPOINT = Permission("get", "checkpoints")
LIST_CHECKPOINTS = Permission("list", "checkpoints")
DELETE_CHECKPOINT = Permission("delete", "checkpoints")
LIST_PODS = Permission("list", "pods", group="")


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


def _timestamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=UTC).timestamp()


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
