"""Who may ask the helper to act, and on what (docs/security.md).

The REST port listens on the node's loopback only: callers reach it with `kubectl port-forward`
(which the API server authorizes: pods/portforward on the helper pod), or from the node. Like
the kubelet's own API, the helper then authenticates the caller's bearer token with a
TokenReview and asks, with a SubjectAccessReview in the caller's name, whether the caller may
do what the request does. These are the rights the cedana.io resources need, so the REST API
and the resources follow one policy:

    checkpoint a pod of NS          create checkpoints.cedana.io     in NS
    restore into a pod of NS        create restores.cedana.io        in NS
    ... from a checkpoint of NS2    get    checkpoints.cedana.io     in NS2
    see checkpoints of NS           list   checkpoints.cedana.io     in NS (catalogue filter)
    inspect / delete one of NS      get / delete checkpoints.cedana.io in NS
    list the containers of NS       list   pods                      in NS

No token (or one Kubernetes does not vouch for) is 401; a token without the permission is 403.
Requests without a token are refused before any API call; a token the API server refused is
refused again without asking for NEGATIVE_CACHE_S, and new unknown tokens are rate-limited
(tokens it vouched for within KNOWN_TOKEN_S are not: a flood does not lock out known callers).
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sidecar.errors import AuthorizationUnavailable, Forbidden, TooManyRequests, Unauthenticated
from sidecar.kube.api import KubeAPI
from sidecar.kube.reviews import (
    ApiUnavailable,
    Caller,
    Permission,
    Reviewer,
    TokenReader,
    kubernetes_api,
)

log = logging.getLogger(__name__)

#: verified tokens and review answers are trusted again without asking for this long
CACHE_S = 10.0
#: a token the API server refused is refused again without asking for this long
NEGATIVE_CACHE_S = 30.0
#: tokens the helper has not seen before: at most this many TokenReviews per minute (a flood
#: of made-up tokens costs the API server nothing beyond that)
NEW_TOKENS_PER_MINUTE = 120
#: a token the API server vouched for is asked about again when its CACHE_S ends, but outside
#: that rate limit for this long: a flood of made-up tokens does not lock out known callers
KNOWN_TOKEN_S = 3600.0
MODES = ("kubernetes", "none")

CHECKPOINT = Permission("create", "checkpoints")
RESTORE = Permission("create", "restores")
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
                f"\"{needed}\" (ClusterRole cedana-checkpointer, or the built-in edit)"
                + (f"; authorizer: {reason}" if reason else ""),
                namespace=namespace, permission=needed, user=who)


UNRESTRICTED = Access(None)


def bearer_token(headers: Mapping[str, str]) -> str:
    """The token of an `Authorization: Bearer TOKEN` header; 401 without one."""
    value = headers.get("authorization", "").strip()
    scheme, _, token = value.partition(" ")
    if not value:
        raise Unauthenticated(
            "no credentials: send Authorization: Bearer TOKEN, with a token Kubernetes "
            "vouches for (a ServiceAccount's: kubectl create token NAME; or your own), as for "
            "the kubelet's API (docs/api.md#who-may-call)")
    if scheme.lower() != "bearer" or not token.strip() or len(token) > 16384:
        raise Unauthenticated("the Authorization header is not \"Bearer TOKEN\"")
    return token.strip()


class TokenBucket:
    """At most `per_minute` events a minute, with bursts of that size."""

    def __init__(self, per_minute: int, clock: Callable[[], float]) -> None:
        self.capacity = float(per_minute)
        self.tokens = float(per_minute)
        self.rate = per_minute / 60.0
        self.clock = clock
        self.last = clock()

    def take(self) -> float:
        """0 when allowed, else the seconds until it would be."""
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class CallerVerifier:
    """Turns the request headers into an Access: who the caller is, and a cached reviewer."""

    def __init__(self, read_token: TokenReader, review: Reviewer,
                 clock: Callable[[], float] = time.time,
                 new_tokens_per_minute: int = NEW_TOKENS_PER_MINUTE) -> None:
        self.read_token = read_token
        self._review = review
        self.clock = clock
        self._tokens: dict[str, tuple[float, Caller | None]] = {}
        self._answers: dict[tuple[Caller, str, Permission], tuple[float, bool, str]] = {}
        self._new_tokens = TokenBucket(new_tokens_per_minute, clock)
        #: digests of tokens the API server vouched for, until when they skip the rate limit
        self._known: dict[str, float] = {}
        self._lock = threading.Lock()

    def authenticate(self, headers: Mapping[str, str]) -> Access:
        token = bearer_token(headers)
        digest = hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()
        now = self.clock()
        with self._lock:
            cached = self._tokens.get(digest)
            fresh = cached is not None and now < cached[0]
            known = now < self._known.get(digest, 0.0)
            wait = 0.0 if fresh or known else self._new_tokens.take()
        if cached is not None and now < cached[0]:
            if cached[1] is None:
                raise Unauthenticated("the Kubernetes API does not vouch for this token")
            return Access(cached[1], self.review)
        if wait:
            error = TooManyRequests(
                f"too many unknown tokens: try again in {wait:.0f} s", retry_after_s=round(wait))
            error.headers = {"Retry-After": str(max(1, round(wait)))}
            raise error
        try:
            caller = self.read_token(token)
        except ApiUnavailable as exc:
            raise AuthorizationUnavailable(
                f"cannot ask the Kubernetes API who the token belongs to (TokenReview): "
                f"{exc}") from exc
        with self._lock:
            if len(self._tokens) > 4096:
                self._tokens.clear()
            self._tokens[digest] = (now + (CACHE_S if caller else NEGATIVE_CACHE_S), caller)
            if caller is not None and caller.username:
                if len(self._known) > 4096:
                    self._known = {d: t for d, t in self._known.items() if t > now}
                self._known[digest] = now + KNOWN_TOKEN_S
            else:  # revoked, expired: a new token again
                self._known.pop(digest, None)
        if caller is None or not caller.username:
            raise Unauthenticated("the Kubernetes API does not vouch for this token "
                                  "(TokenReview: not authenticated)")
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
    """`--authorization`: kubernetes (TokenReviews and SubjectAccessReviews through the
    helper's own API access: service account or --kubeconfig, connected as `api`) or none."""
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
    read_token, review = kubernetes_api(api.api_client)
    return CallerVerifier(read_token, review)
