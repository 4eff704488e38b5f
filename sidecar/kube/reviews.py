"""Who a caller is and what it may do, asked of the Kubernetes API with the helper's own
credentials, as the kubelet does for its own API: a TokenReview of the caller's bearer token,
and SubjectAccessReviews in its name (docs/security.md)."""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

GROUP = "cedana.io"


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


@dataclass(frozen=True)
class Caller:
    """Who the API server says the caller's token belongs to."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def review_user(self) -> dict[str, Any]:
        return {"user": self.username, "uid": self.uid, "groups": list(self.groups),
                "extra": {k: list(v) for k, v in self.extra}}


TokenReader = Callable[[str], "Caller | None"]
Reviewer = Callable[[Caller, str, Permission], tuple[bool, str]]


class ApiUnavailable(Exception):
    """The API server could not be asked (as opposed to: it said no)."""


def kubernetes_api(api_client: Any, timeout_s: float = 5.0) -> tuple[TokenReader, Reviewer]:
    """Authenticate tokens and review callers with the helper's own credentials."""
    from kubernetes import client

    authentication = client.AuthenticationV1Api(api_client)
    authorization = client.AuthorizationV1Api(api_client)

    def read_token(token: str) -> Caller | None:
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token}}
        try:
            raw: Any = authentication.create_token_review(
                cast(Any, body), _preload_content=False, _request_timeout=timeout_s)
        except Exception as exc:
            raise ApiUnavailable(f"{type(exc).__name__}: {exc}") from exc
        status: Mapping[str, Any] = json.loads(raw.data).get("status") or {}
        if not status.get("authenticated"):
            return None
        user = status.get("user") or {}
        extra = user.get("extra") or {}
        return Caller(str(user.get("username") or ""), str(user.get("uid") or ""),
                      tuple(str(g) for g in user.get("groups") or ()),
                      tuple(sorted((str(k), tuple(str(x) for x in v or ()))
                                   for k, v in extra.items())))

    def review(caller: Caller, namespace: str, permission: Permission) -> tuple[bool, str]:
        attributes = {"namespace": namespace, "verb": permission.verb,
                      "group": permission.group, "resource": permission.resource}
        if permission.subresource:
            attributes["subresource"] = permission.subresource
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": {**caller.review_user(), "resourceAttributes": attributes}}
        try:
            raw: Any = authorization.create_subject_access_review(
                cast(Any, body), _preload_content=False, _request_timeout=timeout_s)
        except Exception as exc:
            raise ApiUnavailable(f"{type(exc).__name__}: {exc}") from exc
        status = json.loads(raw.data).get("status") or {}
        return bool(status.get("allowed")), str(status.get("reason") or "")

    return read_token, review
