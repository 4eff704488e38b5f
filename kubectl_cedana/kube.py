"""A small Kubernetes API client: urllib3 and plain dicts.

kubeconfig.py reads the kubeconfig (certificates, tokens, exec plugins, in-cluster service
accounts) without the official `kubernetes` package, whose import alone costs ~0.26 s of every
command. What it leaves (legacy auth-provider plugins, proxies) is read by the official client,
imported then and only then. Requests are plain HTTP with JSON bodies, and every object is a
plain dict as the API server sends it (camelCase keys). This is the only module that imports
`kubernetes`.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Union
from urllib.parse import quote, urlencode

from kubectl_cedana.errors import (
    ApiConflict,
    ApiError,
    ApiInvalid,
    ApiNotFound,
    ConfigError,
    PermissionDenied,
)
from kubectl_cedana.settings import Settings

if TYPE_CHECKING:
    from kubectl_cedana.transport import HttpClientTransport, HttpResponse, Urllib3Transport

# a runtime alias: typing forms, since `X | Y` cannot be evaluated on Python 3.9. Every request
# has a limit: seconds in all, or (connect, read)
Timeout = Union[float, tuple[float, float]]

#: connect / read limits when the user gave no --request-timeout
DEFAULT_TIMEOUT: tuple[float, float] = (10.0, 60.0)
#: a watch's read limit is its timeoutSeconds plus this (the server closes it first)
WATCH_SLACK_S = 15.0
WATCH_CHUNK = 16 * 1024
IN_CLUSTER_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

SELF_SUBJECT_REVIEWS = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
_CLUSTER_SCOPED = {"nodes", "namespaces", "clusterroles", "clusterrolebindings",
                   "persistentvolumes", "storageclasses", "customresourcedefinitions",
                   "validatingadmissionpolicies", "validatingadmissionpolicybindings"}
_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete",
          "HEAD": "get", "OPTIONS": "get"}


def required_permission(method: str, path: str) -> str:
    """The RBAC permission a request needs, in words: `create pods/proxy in namespace x`.

    Derived from the request the same way the API server derives its authorization attributes
    (verb from the HTTP method, resource/subresource/namespace from the path).
    """
    path, _, query = path.partition("?")
    parts = [p for p in path.split("/") if p]
    group = ""
    if parts[:1] == ["api"] and len(parts) >= 2:
        rest = parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group = parts[1]
        rest = parts[3:]
    else:
        return f"{_VERBS.get(method.upper(), method.lower())} {path}"
    namespace = ""
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace = rest[1]
        rest = rest[2:]
    resource = rest[0] if rest else ""
    name = rest[1] if len(rest) >= 2 else ""
    subresource = rest[2] if len(rest) >= 3 else ""
    verb = _VERBS.get(method.upper(), method.lower())
    if not name and verb == "get":
        verb = "watch" if "watch=true" in query else "list"
    if not name and verb == "delete":
        verb = "deletecollection"
    if resource == "namespaces" and name and not subresource:
        namespace = ""
    what = resource + (f".{group}" if group else "") + (f"/{subresource}" if subresource else "")
    where = f" in namespace {namespace}" if namespace else ""
    return f"{verb} {what}{where}"


def can_i_command(permission: str) -> str:
    """The `kubectl auth can-i` line that checks `permission` (as built above)."""
    words = permission.split()
    verb, what = words[0], words[1] if len(words) > 1 else ""
    resource, _, sub = what.partition("/")
    cmd = f"kubectl auth can-i {verb} {resource}"
    if sub:
        cmd += f" --subresource={sub}"
    if " in namespace " in permission:
        cmd += f" -n {permission.rsplit(' ', 1)[1]}"
    elif resource.split(".")[0] not in _CLUSTER_SCOPED:
        cmd += " --all-namespaces"
    return cmd


def api_error(method: str, path: str, response: HttpResponse) -> ApiError:
    """Turn a non-2xx answer of the API server into a typed error keeping its Status."""
    body = response.json_or_none()
    status_obj: dict[str, Any] = body if isinstance(body, dict) else {}
    message = str(status_obj.get("message") or response.data.decode("utf-8", "replace").strip()
                  or f"HTTP {response.status}")
    reason = str(status_obj.get("reason") or "")
    common: dict[str, Any] = {"status": response.status, "reason": reason,
                              "api_status": status_obj}
    if response.status == 403 and "being terminated" in message:
        # NamespaceLifecycle admission answers 403 too, but no permission is missing
        return ApiConflict(message, hint="wait until the namespace is gone, then retry",
                           **common)
    if response.status == 403 and "ValidatingAdmissionPolicy" in message:
        # admitted by RBAC, refused by the admission policy (admission.yaml): its own words
        return PermissionDenied(f"refused by admission: {message}", permission="", **common)
    if response.status == 403:
        permission = required_permission(method, path)
        return PermissionDenied(
            f"permission denied: you need \"{permission}\" (API server: {message})",
            permission=permission, hint=f"check with: {can_i_command(permission)}", **common)
    if response.status == 401:
        return ApiError(f"unauthorized: the API server rejected the kubeconfig's credentials "
                        f"({message})", **common)
    if response.status == 404:
        return ApiNotFound(message, **common)
    if response.status == 409:
        return ApiConflict(message, **common)
    if response.status == 422:  # the schema's field errors, as the API server words them
        return ApiInvalid(f"invalid: {message}", **common)
    return ApiError(f"API server: {message} (HTTP {response.status}"
                    f"{', ' + reason if reason else ''})", **common)


def is_api_status(body: Any) -> bool:
    return isinstance(body, dict) and body.get("kind") == "Status" and "apiVersion" in body


def _debug(settings: Settings, text: str) -> None:
    if settings.debug:
        sys.stderr.write(f"debug: {text}\n")
        sys.stderr.flush()


class KubeClient:
    """The user's cluster, reached with the user's kubeconfig credentials."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._user_name: str | None = None
        self._configuration: Any = None  # the official client's, when it is used
        # lazy, as the connection they make: `--help` never pays for ssl and http
        from kubectl_cedana import kubeconfig, transport

        self._transport: HttpClientTransport | Urllib3Transport
        try:
            connection = kubeconfig.load(settings.kubeconfig, settings.context)
        except kubeconfig.Unsupported as exc:
            _debug(settings, f"kubeconfig uses {exc}: read by the kubernetes package")
            self._configuration, self._context_namespace = self._load_configuration(settings)
            from kubernetes.client import rest

            self.host = str(self._configuration.host).rstrip("/")
            self._headers: dict[str, str] = {}
            self._transport = transport.Urllib3Transport(
                rest.RESTClientObject(self._configuration).pool_manager, self.host,
                settings.request_timeout)
            return
        self.host = connection.host.rstrip("/")
        self._context_namespace = connection.namespace
        self._headers = connection.headers
        self._transport = transport.HttpClientTransport(connection, settings.request_timeout)

    # -- configuration --------------------------------------------------------------------
    @staticmethod
    def _load_configuration(settings: Settings) -> tuple[Any, str | None]:
        """The official client's reading of the kubeconfig: for what kubeconfig.py leaves
        to it (auth-provider plugins, proxies)."""
        from kubernetes.client import Configuration
        from kubernetes.config import ConfigException, kube_config

        configuration = Configuration()
        config_file = settings.kubeconfig
        env_paths = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
        default_path = os.path.expanduser("~/.kube/config")
        have_file = bool(config_file) or any(os.path.exists(p) for p in env_paths) \
            or os.path.exists(default_path)
        if not have_file and os.environ.get("KUBERNETES_SERVICE_HOST"):
            from kubernetes.config import incluster_config

            incluster_config.load_incluster_config(client_configuration=configuration)
            namespace = None
            if os.path.exists(IN_CLUSTER_NAMESPACE_FILE):
                with open(IN_CLUSTER_NAMESPACE_FILE, encoding="utf-8") as fh:
                    namespace = fh.read().strip() or None
            return configuration, namespace
        if config_file and not os.path.exists(config_file):
            raise ConfigError(f"kubeconfig {config_file} does not exist")
        if not have_file:
            raise ConfigError("no kubeconfig found", hint="set KUBECONFIG or pass --kubeconfig")
        try:
            kube_config.load_kube_config(config_file=config_file, context=settings.context,
                                         client_configuration=configuration,
                                         persist_config=False)
            contexts, active = kube_config.list_kube_config_contexts(config_file)
        except ConfigException as exc:
            raise ConfigError(f"kubeconfig: {exc}") from exc
        except (OSError, ValueError) as exc:
            raise ConfigError(f"kubeconfig: {exc}") from exc
        chosen = active
        if settings.context:
            chosen = next((c for c in contexts or [] if c.get("name") == settings.context), None)
        namespace = None
        if chosen:
            namespace = (chosen.get("context") or {}).get("namespace") or None
        return configuration, namespace

    @property
    def namespace(self) -> str:
        """-n if given, else the kubeconfig context's namespace, else `default`."""
        return self.settings.namespace or self._context_namespace or "default"

    def _auth_headers(self) -> dict[str, str]:
        if self._configuration is None:
            return self._headers
        headers: dict[str, str] = {}
        for entry in self._configuration.auth_settings().values():
            if entry.get("in") == "header" and entry.get("value"):
                headers[str(entry["key"])] = str(entry["value"])
        return headers

    # -- HTTP -----------------------------------------------------------------------------
    def send(self, method: str, path: str, *, query: Mapping[str, Any] | None = None,
             body: Any = None, content_type: str = "application/json",
             timeout: Timeout = DEFAULT_TIMEOUT,
             headers: Mapping[str, str] | None = None) -> HttpResponse:
        """One HTTP request to the API server; raises only for transport failures (typed).
        `headers` are added to the request (they reach a proxied pod)."""
        if query:
            path += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        sent = {"Accept": "application/json", "User-Agent": "kubectl-cedana", **(headers or {})}
        sent.update(self._auth_headers())
        data: bytes | None = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
            sent["Content-Type"] = content_type
        started = time.monotonic()
        response = self._transport.request(method, path, body=data, headers=sent,
                                           timeout=timeout)
        _debug(self.settings, f"{method} {self.host}{path} -> {response.status} "
                              f"({(time.monotonic() - started) * 1000:.0f} ms)")
        return response

    def watch(self, path: str, *, query: Mapping[str, Any] | None = None,
              seconds: int = 60) -> Iterator[dict[str, Any]]:
        """The events of one watch of the collection at `path` ({"type", "object"} each, as
        the API server streams them), for at most `seconds` (the server's timeoutSeconds):
        the iteration ends when the server closes the watch. A refused watch raises the
        typed error of its Status; a broken connection, a CedanaError."""
        from kubectl_cedana.transport import HttpResponse

        if self.settings.request_timeout:  # every request within --request-timeout
            seconds = max(1, min(seconds, int(self.settings.request_timeout * 0.8)))
        full = path + "?" + urlencode(
            {**{k: v for k, v in (query or {}).items() if v is not None},
             "watch": "true", "timeoutSeconds": str(seconds)})
        headers = {"Accept": "application/json", "User-Agent": "kubectl-cedana",
                   **self._auth_headers()}
        limit: Timeout = (DEFAULT_TIMEOUT[0], seconds + WATCH_SLACK_S)
        stream = self._transport.stream(full, headers=headers, timeout=limit)
        _debug(self.settings, f"GET {self.host}{full} -> {stream.status} (watch)")
        try:
            if stream.status >= 400:
                response = HttpResponse(stream.status, stream.read_all() or b"")
                raise api_error("GET", path + "?watch=true", response)
            pending = b""
            for chunk in stream.chunks(WATCH_CHUNK):
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    if line.strip():
                        yield dict(json.loads(line.decode("utf-8")))
            if pending.strip():
                yield dict(json.loads(pending.decode("utf-8")))
        finally:
            stream.close()  # left early: the rest is never read as another answer

    def request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None,
                body: Any = None, content_type: str = "application/json",
                timeout: Timeout = DEFAULT_TIMEOUT) -> Any:
        """A request whose non-2xx answers raise typed errors; returns the decoded JSON."""
        response = self.send(method, path, query=query, body=body, content_type=content_type,
                             timeout=timeout)
        if response.status >= 400:
            raise api_error(method, path, response)
        return response.json_or_none()

    # -- objects --------------------------------------------------------------------------
    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            return dict(self.request("GET", pod_path(namespace, name)))
        except ApiNotFound as exc:
            raise ApiNotFound(f'pod "{name}" not found in namespace "{namespace}"',
                              status=404) from exc

    def list_pods(self, namespace: str | None, *, label_selector: str = "",
                  field_selector: str = "") -> list[dict[str, Any]]:
        path = f"/api/v1/namespaces/{quote(namespace, safe='')}/pods" if namespace \
            else "/api/v1/pods"
        query = {"labelSelector": label_selector or None,
                 "fieldSelector": field_selector or None}
        return list((self.request("GET", path, query=query) or {}).get("items") or [])

    def create_pod(self, namespace: str, pod: dict[str, Any]) -> dict[str, Any]:
        path = f"/api/v1/namespaces/{quote(namespace, safe='')}/pods"
        return dict(self.request("POST", path, body=pod))

    def delete_pod(self, namespace: str, name: str, *,
                   grace_period_seconds: int | None = None) -> None:
        query = {}
        if grace_period_seconds is not None:
            query["gracePeriodSeconds"] = grace_period_seconds
        try:
            self.request("DELETE", pod_path(namespace, name), query=query)
        except ApiNotFound:
            pass

    def patch_merge(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        return dict(self.request("PATCH", path, body=patch,
                                 content_type="application/merge-patch+json"))

    def list_nodes(self) -> list[dict[str, Any]]:
        return list((self.request("GET", "/api/v1/nodes") or {}).get("items") or [])

    def access_review(self, verb: str, resource: str, *, namespace: str = "", group: str = "",
                      subresource: str = "") -> tuple[bool, str]:
        """SelfSubjectAccessReview: may the kubeconfig's user do this? (allowed, reason)"""
        attributes: dict[str, Any] = {"verb": verb, "resource": resource, "group": group}
        if namespace:
            attributes["namespace"] = namespace
        if subresource:
            attributes["subresource"] = subresource
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                  "spec": {"resourceAttributes": attributes}}
        result = self.request("POST",
                              "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                              body=review) or {}
        status = result.get("status") or {}
        return bool(status.get("allowed")), str(status.get("reason") or "")

    def user_name(self) -> str:
        """Who the API server says the kubeconfig's user is (SelfSubjectReview, GA in 1.28),
        once per client; '' when this API server cannot tell (no such API)."""
        if self._user_name is None:
            review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
            try:
                answer = self.request("POST", SELF_SUBJECT_REVIEWS, body=review) or {}
            except (ApiNotFound, PermissionDenied) as exc:
                _debug(self.settings, f"no SelfSubjectReview ({exc.one_line()}): objects go "
                                      "without cedana.io/requested-by")
                answer = {}
            user = ((answer.get("status") or {}).get("userInfo") or {})
            self._user_name = str(user.get("username") or "")
        return self._user_name

    def server_version(self) -> dict[str, Any]:
        return dict(self.request("GET", "/version") or {})


def pod_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(name, safe='')}"
