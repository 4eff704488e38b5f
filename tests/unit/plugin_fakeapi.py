"""A small real HTTP server standing in for a Kubernetes API server and its pod proxy.

It keeps pods and the helper's objects in memory, speaks the API's JSON (Status objects on
errors), checks the bearer token, and routes `/pods/{helper}:1324/proxy/...` to a fake node
helper that follows the helper's REST contract. Tests drive the real plugin against it and
assert on what arrived (`cluster.requests`).
"""
from __future__ import annotations

import base64
import copy
import json
import re
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import yaml
from click.testing import CliRunner, Result

from tests.unit.loopback import LoopbackServer

if TYPE_CHECKING:  # Self is Python 3.11+; annotations are never evaluated
    pass

TOKEN = "test-token-123"
HELPER_NS = "cedana-system"
CSR_PATH = "/apis/certificates.k8s.io/v1/certificatesigningrequests"


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def make_pod(name: str, namespace: str = "default", *, node: str = "node1",
             containers: tuple[str, ...] = ("main",), image: str = "busybox:1.36",
             phase: str = "Running", labels: dict[str, str] | None = None,
             running: bool = True) -> dict[str, Any]:
    specs = [{"name": c, "image": image, "command": ["/bin/counter"], "args": ["--fast"],
              "env": [{"name": "MODE", "value": "demo"}],
              "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
              "volumeMounts": [{"name": "data", "mountPath": "/data"}],
              "livenessProbe": {"exec": {"command": ["true"]}},
              "readinessProbe": {"exec": {"command": ["true"]}},
              "ports": [{"containerPort": 8080, "hostPort": 18080, "protocol": "TCP"}]}
             for c in containers]
    statuses = [{"name": c, "ready": running, "restartCount": 0, "image": image,
                 "containerID": f"containerd://{uuid.uuid4().hex}{uuid.uuid4().hex}",
                 "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}} if running
                 else {"waiting": {"reason": "ContainerCreating"}}}
                for c in containers]
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()),
                     "labels": labels or {"app": name}, "resourceVersion": "1",
                     "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
        "spec": {"nodeName": node, "containers": specs, "restartPolicy": "Always",
                 "volumes": [{"name": "data", "emptyDir": {}}],
                 "initContainers": [{"name": "init", "image": image}],
                 "nodeSelector": {"disk": "ssd"}, "priority": 0},
        "status": {"phase": phase, "containerStatuses": statuses},
    }


def helper_pod(node: str, *, ready: bool = True) -> dict[str, Any]:
    pod = make_pod(f"cedana-helper-{node}", HELPER_NS, node=node, containers=("helper",),
                   labels={"app.kubernetes.io/name": "cedana-helper",
                           "app.kubernetes.io/part-of": "kubectl-cedana"})
    pod["status"]["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
    return pod


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    peer_cert: dict[str, Any] | None = None


@dataclass
class FakeHelper:
    """One node's helper: the REST contract with in-memory checkpoints."""

    node: str
    cluster: FakeCluster
    checkpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, tuple[int, Any]] = field(default_factory=dict)  # route -> answer
    delays: dict[str, float] = field(default_factory=dict)  # route -> seconds
    restored: list[dict[str, Any]] = field(default_factory=list)

    def handle(self, method: str, route: str, query: dict[str, list[str]],
               body: Any) -> tuple[int, Any]:
        key = route.split("/")[0] or route
        for name in (route, key):
            if name in self.delays:
                time.sleep(self.delays[name])
            if name in self.errors:
                return self.errors[name]
        if route == "healthz":
            return 200, {"status": "ok"}
        if route == "version":
            return 200, {"helper": "0.1.0", "runc": "1.1.5", "criu": "4.1.1", "node": self.node}
        if route.startswith("list/"):
            namespace = unquote(route[len("list/"):])
            return 200, [self._container_entry(p, c)
                         for p in self.cluster.pods_on(self.node, namespace)
                         for c in p["status"].get("containerStatuses") or []]
        if route == "checkpoint" and method == "POST":
            return self._checkpoint(body)
        if route == "restore" and method == "POST":
            return self._restore(body)
        if route in ("checkpoint/rootfs", "checkpoint/rootfs/crio", "restore/rootfs"):
            return 501, {"code": "not_implemented", "message": "rootfs is not implemented"}
        if route == "checkpoints":
            return 200, {"checkpoints": list(self.checkpoints.values())}
        if route.startswith("checkpoints/"):
            ident = unquote(route[len("checkpoints/"):])
            if ident not in self.checkpoints:
                return 404, {"code": "checkpoint_not_found", "message": f"no checkpoint {ident}"}
            if method == "DELETE":
                del self.checkpoints[ident]
                return 200, {"deleted": ident}
            return 200, dict(self.checkpoints[ident], manifest={"files": 3})
        return 404, {"detail": "Not Found"}

    def _container_entry(self, pod: dict[str, Any], cstatus: dict[str, Any]) -> dict[str, Any]:
        return {"namespace": pod["metadata"]["namespace"], "sandbox_name": pod["metadata"]["name"],
                "container_name": cstatus["name"],
                "container_id": cstatus["containerID"].split("://")[1],
                "pid": 4000 + len(pod["metadata"]["name"]),
                "status": "running" if "running" in cstatus["state"] else "created",
                "image": cstatus.get("image", ""), "sandbox_id": "sb" + pod["metadata"]["uid"][:8]}

    def _find(self, data: dict[str, Any]) -> dict[str, Any] | None:
        pod = self.cluster.pods.get((str(data.get("namespace")), str(data.get("sandbox_name"))))
        if not pod or pod["spec"].get("nodeName") != self.node:
            return None
        if data.get("container_name") not in [c["name"] for c in pod["spec"]["containers"]]:
            return None
        return pod

    def _checkpoint(self, body: Any) -> tuple[int, Any]:
        data = (body or {}).get("checkpoint_data") or {}
        if not all(data.get(k) for k in ("container_name", "sandbox_name", "namespace")):
            return 400, {"code": "invalid_request", "message": "missing fields"}
        if not self._find(data):
            return 404, {"code": "container_not_found",
                         "message": f"no container {data['container_name']} in "
                                    f"{data['namespace']}/{data['sandbox_name']}"}
        ident = str(uuid.uuid4())
        path = data.get("checkpoint_path") or f"/var/lib/cedana/checkpoints/{ident}"
        self.checkpoints[ident] = {
            "id": ident, "path": path, "namespace": data["namespace"],
            "pod": data["sandbox_name"], "container": data["container_name"], "node": self.node,
            "size_bytes": 123456, "created": "2024-05-01T10:00:00Z", "where": "local",
            "compression": "none", "leave_running": bool(body.get("leave_running"))}
        return 200, {"checkpoint_id": ident, "checkpoint_path": path, "size_bytes": 123456,
                     "duration_ms": 210, "options": {"leave_running": body.get("leave_running")}}

    def _restore(self, body: Any) -> tuple[int, Any]:
        data = (body or {}).get("checkpoint_data") or {}
        ident = data.get("checkpoint_id") or ""
        if data.get("checkpoint_path"):
            ident = next((k for k, v in self.checkpoints.items()
                          if v["path"] == data["checkpoint_path"]), "")
        if ident not in self.checkpoints:
            return 404, {"code": "checkpoint_not_found", "message": f"no checkpoint {ident!r}"}
        if not self._find(data):
            return 404, {"code": "container_not_found", "message": "no such container"}
        self.restored.append(data)
        return 200, {"restored": True, "checkpoint_id": ident, "pid": 4242, "duration_ms": 350}


class ForwardingHelper:
    """A node whose helper is a real `cedana-helper serve` process on loopback."""

    def __init__(self, node: str, base_url: str) -> None:
        self.node = node
        self.base_url = base_url

    def handle(self, method: str, route: str, query: dict[str, list[str]],
               body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        url = f"{self.base_url}/{route}"
        if query:
            url += "?" + urlencode({k: v[0] for k, v in query.items()})
        data = json.dumps(body).encode() if body is not None else None
        # custom headers pass the pod proxy (the caller's Authorization does not)
        sent = {k: v for k, v in (headers or {}).items() if k.startswith("x-cedana-")}
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"Content-Type": "application/json", **sent})
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.status, json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")


class FakeCluster:
    """In-memory API server state plus the behaviour switches tests flip."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.objects: dict[str, dict[str, Any]] = {}  # path -> object (install/uninstall)
        self.helpers: dict[str, FakeHelper] = {}
        self.forwarded: dict[str, ForwardingHelper] = {}  # nodes served by a real helper
        self.requests: list[Request] = []
        self.proof_requests: list[Request] = []
        self.forbidden: list[tuple[str, str]] = []  # (method, path regex)
        self.unreachable: set = set()  # helper nodes whose proxy gives 503
        self.denied_reviews: set = set()  # (verb, resource, subresource, namespace)
        # SubjectAccessReviews (the helper asking about a caller) answered no: (user, verb,
        # resource, subresource, namespace), "*" matching anything
        self.denied_subject_reviews: set = set()
        #: bearer tokens a TokenReview vouches for: token -> user info (username, uid, groups)
        self.review_tokens: dict[str, dict[str, Any]] = {}
        self.placeholder_mode = "running"  # running | pending | no-shell
        self.resource_version = 100
        self.nodes = ["node1"]
        self.token: str | None = TOKEN

    # -- setup helpers ----------------------------------------------------------------------
    def add_pod(self, pod: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.pods[(pod["metadata"]["namespace"], pod["metadata"]["name"])] = pod
        return pod

    def add_helper(self, node: str, *, ready: bool = True) -> FakeHelper:
        self.add_pod(helper_pod(node, ready=ready))
        helper = FakeHelper(node=node, cluster=self)
        self.helpers[node] = helper
        if node not in self.nodes:
            self.nodes.append(node)
        return helper

    def add_forwarding_helper(self, node: str, base_url: str) -> ForwardingHelper:
        self.add_pod(helper_pod(node))
        helper = ForwardingHelper(node, base_url)
        self.forwarded[node] = helper
        if node not in self.nodes:
            self.nodes.append(node)
        return helper

    def pods_on(self, node: str, namespace: str) -> list[dict[str, Any]]:
        with self.lock:
            return [p for (ns, _), p in sorted(self.pods.items())
                    if ns == namespace and p["spec"].get("nodeName") == node]

    def requests_matching(self, method: str, pattern: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and re.search(pattern, r.path)]

    # -- request handling -------------------------------------------------------------------
    def handle(self, req: Request) -> tuple[int, Any]:
        # the caller proof (a CertificateSigningRequest) goes beside the helper calls; tests of
        # the call order look at the rest
        (self.proof_requests if req.path.startswith("/apis/certificates.k8s.io/")
         else self.requests).append(req)
        if self.token is not None and req.peer_cert is None and \
                req.headers.get("authorization") != f"Bearer {self.token}":
            return 401, status(401, "Unauthorized", "Unauthorized")
        for method, pattern in self.forbidden:
            if method == req.method and re.search(pattern, req.path):
                return 403, status(403, "Forbidden",
                                   f'pods is forbidden: User "bob" cannot {method.lower()} '
                                   f'resource at {req.path}')
        path = req.path
        if path == "/version":
            return 200, {"major": "1", "minor": "20", "gitVersion": "v1.20.2"}
        proxy = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods/([^/:]+):(\d+)/proxy/(.*)", path)
        if proxy:
            return self._proxy(req, *proxy.groups())
        if path == "/api/v1/pods":
            return 200, self._pod_list(None, req.query)
        if path == "/api/v1/nodes":
            return 200, {"kind": "NodeList", "items": [
                {"metadata": {"name": n}, "status": {"nodeInfo": {
                    "containerRuntimeVersion": "containerd://1.6.20"}}} for n in self.nodes]}
        if path == "/apis/authorization.k8s.io/v1/subjectaccessreviews":
            review = json.loads(req.body) if isinstance(req.body, str) else req.body
            spec = review["spec"]
            attrs = spec["resourceAttributes"]
            asked = (spec.get("user"), attrs.get("verb"), attrs.get("resource"),
                     attrs.get("subresource", ""), attrs.get("namespace", ""))
            denied = any(all(d in ("*", a) for d, a in zip(rule, asked))
                         for rule in self.denied_subject_reviews)
            return 201, dict(review, status={"allowed": not denied})
        if path == "/apis/authentication.k8s.io/v1/tokenreviews":
            review = json.loads(req.body) if isinstance(req.body, str) else req.body
            user = self.review_tokens.get(review["spec"]["token"])
            status_ = {"authenticated": True, "user": user} if user else {"authenticated": False}
            return 201, dict(review, status=status_)
        if path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews":
            attrs = req.body["spec"]["resourceAttributes"]
            key = (attrs.get("verb"), attrs.get("resource"), attrs.get("subresource", ""),
                   attrs.get("namespace", ""))
            return 201, dict(req.body, status={"allowed": key not in self.denied_reviews})
        pods = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods(?:/([^/]+))?", path)
        if pods:
            return self._pods(req, pods.group(1), pods.group(2))
        return self._object(req)

    def _proxy(self, req: Request, namespace: str, pod: str, port: str,
               route: str) -> tuple[int, Any]:
        helper_obj = self.pods.get((namespace, pod))
        if helper_obj is None:
            return 404, status(404, "NotFound", f'pods "{pod}" not found')
        node = helper_obj["spec"]["nodeName"]
        if node in self.forwarded:
            return self.forwarded[node].handle(req.method, route, req.query, req.body,
                                               req.headers)
        if node in self.unreachable or node not in self.helpers:
            # v1.20 answers 500 (later versions 503) with this Status
            return 500, status(500, "InternalError",
                               f"error trying to reach service: dial tcp 10.88.0.1:{port}: "
                               "connect: connection refused")
        return self.helpers[node].handle(req.method, route, req.query, req.body)

    def _pod_list(self, namespace: str | None, query: dict[str, list[str]]) -> dict[str, Any]:
        labels = dict(kv.split("=", 1) for kv in (query.get("labelSelector", [""])[0]
                                                  .split(",")) if kv)
        fields = dict(kv.split("=", 1) for kv in (query.get("fieldSelector", [""])[0]
                                                  .split(",")) if kv)
        items = []
        with self.lock:
            for (ns, _name), pod in sorted(self.pods.items()):
                if namespace and ns != namespace:
                    continue
                pod_labels = pod["metadata"].get("labels") or {}
                if any(pod_labels.get(k) != v for k, v in labels.items()):
                    continue
                if "spec.nodeName" in fields and pod["spec"].get("nodeName") != \
                        fields["spec.nodeName"]:
                    continue
                items.append(copy.deepcopy(pod))
        return {"kind": "PodList", "apiVersion": "v1", "items": items}

    def _pods(self, req: Request, namespace: str, name: str | None) -> tuple[int, Any]:
        with self.lock:
            if name is None and req.method == "GET":
                return 200, self._pod_list(namespace, req.query)
            if name is None and req.method == "POST":
                pod = copy.deepcopy(req.body)
                key = (namespace, pod["metadata"]["name"])
                if key in self.pods:
                    return 409, status(409, "AlreadyExists",
                                       f'pods "{key[1]}" already exists')
                pod["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()),
                                       resourceVersion="1")
                pod["status"] = self._placeholder_status(pod)
                self.pods[key] = pod
                return 201, pod
            key = (namespace, name or "")
            if key not in self.pods:
                return 404, status(404, "NotFound", f'pods "{name}" not found')
            if req.method == "GET":
                return 200, copy.deepcopy(self.pods[key])
            if req.method == "DELETE":
                return 200, self.pods.pop(key)
            if req.method == "PATCH":
                meta = self.pods[key]["metadata"]
                for part in ("labels", "annotations"):
                    meta.setdefault(part, {}).update(
                        (req.body.get("metadata") or {}).get(part) or {})
                return 200, self.pods[key]
        return 405, status(405, "MethodNotAllowed", "no")

    def _placeholder_status(self, pod: dict[str, Any]) -> dict[str, Any]:
        name = pod["spec"]["containers"][0]["name"]
        if self.placeholder_mode == "pending":
            return {"phase": "Pending", "containerStatuses": [
                {"name": name, "state": {"waiting": {"reason": "ContainerCreating"}}}]}
        if self.placeholder_mode == "no-shell":
            return {"phase": "Running", "containerStatuses": [
                {"name": name, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                 "lastState": {"terminated": {"reason": "StartError", "exitCode": 128,
                                              "message": 'exec: "/bin/sh": stat /bin/sh: '
                                                         "no such file or directory"}}}]}
        return {"phase": "Running", "containerStatuses": [
            {"name": name, "ready": True, "containerID": f"containerd://{uuid.uuid4().hex}",
             "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}}}]}

    # install/uninstall objects: a generic store keyed by path
    def _object(self, req: Request) -> tuple[int, Any]:
        path = req.path
        with self.lock:
            if req.method == "GET" and path in self.objects:
                return 200, copy.deepcopy(self.objects[path])
            if req.method == "GET" and self._is_collection(path):
                selector = req.query.get("labelSelector", [""])[0]
                key, _, value = selector.partition("=")
                items = [copy.deepcopy(o) for p, o in sorted(self.objects.items())
                         if self._in_collection(p, path)
                         and (o["metadata"].get("labels") or {}).get(key) == value]
                for item in items:  # lists carry kind/apiVersion only at the top
                    item.pop("kind", None)
                    item.pop("apiVersion", None)
                return 200, {"kind": "List", "items": items}
            if req.method == "GET":
                return 404, status(404, "NotFound", f"{path} not found")
            if req.method == "PATCH" and req.headers.get("content-type") == \
                    "application/apply-patch+yaml":
                body = yaml.safe_load(req.body) if isinstance(req.body, str) else req.body
                return self._apply(path, body, dry_run="dryRun" in req.query)
            if req.method == "POST" and path == CSR_PATH and isinstance(req.body, dict):
                user = "alice" if req.peer_cert else "token-user"
                return self._create(path, req.body, {"username": user, "uid": f"uid-{user}",
                                                     "groups": ["system:authenticated"]})
            if req.method == "POST" and isinstance(req.body, dict) and \
                    re.fullmatch(r"/api/v1/namespaces/[^/]+/[a-z]+", path):
                return self._post(path, req.body, dry_run="dryRun" in req.query)
            if req.method == "DELETE":
                if path not in self.objects:
                    return 404, status(404, "NotFound", f"{path} not found")
                removed = self.objects.pop(path)
                if removed.get("kind") == "DaemonSet":  # its pods go with it
                    for pod_key in [k for k in self.pods if k[0] == HELPER_NS]:
                        del self.pods[pod_key]
                return 200, removed
        return 405, status(405, "MethodNotAllowed", f"{req.method} {path}")

    def _create(self, collection: str, body: dict[str, Any],
                requester: dict[str, Any]) -> tuple[int, Any]:
        """POST of a CertificateSigningRequest, as the API server does it: generateName, uid,
        creationTimestamp, and the requester's identity in the spec."""
        obj = copy.deepcopy(body)
        obj.setdefault("spec", {}).update(requester)
        meta = obj.setdefault("metadata", {})
        name = meta.get("name") or f"{meta.get('generateName', 'obj-')}{uuid.uuid4().hex[:5]}"
        if f"{collection}/{name}" in self.objects:
            return 409, status(409, "AlreadyExists", f"{name} already exists")
        self.resource_version += 1
        meta.update(name=name, uid=str(uuid.uuid4()), resourceVersion=str(self.resource_version),
                    creationTimestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self.objects[f"{collection}/{name}"] = obj
        return 201, copy.deepcopy(obj)

    def _post(self, collection: str, body: dict[str, Any], dry_run: bool) -> tuple[int, Any]:
        """Create a namespaced object (a Secret): 409 when it exists, kept unless dry run."""
        obj = copy.deepcopy(body)
        name = obj["metadata"]["name"]
        if f"{collection}/{name}" in self.objects:
            return 409, status(409, "AlreadyExists", f'"{name}" already exists')
        self.resource_version += 1
        obj["metadata"].update(uid=str(uuid.uuid4()), resourceVersion=str(self.resource_version))
        if not dry_run:
            self.objects[f"{collection}/{name}"] = obj
        return 201, copy.deepcopy(obj)

    @staticmethod
    def _is_collection(path: str) -> bool:
        return bool(re.fullmatch(r"/api/v1/[a-z]+|/apis/[^/]+/[^/]+/[a-z]+", path))

    @staticmethod
    def _in_collection(obj_path: str, collection: str) -> bool:
        prefix, plural = collection.rsplit("/", 1)
        return bool(re.fullmatch(re.escape(collection) + r"/[^/]+", obj_path)
                    or re.fullmatch(re.escape(prefix) + rf"/namespaces/[^/]+/{plural}/[^/]+",
                                    obj_path))

    def _apply(self, path: str, body: dict[str, Any], dry_run: bool) -> tuple[int, Any]:
        before = self.objects.get(path)
        merged = copy.deepcopy(body)
        created = before is None
        if before is not None:
            same = {k: v for k, v in before.items() if k not in ("status",)}
            same["metadata"] = {k: v for k, v in before["metadata"].items()
                                if k not in ("resourceVersion", "generation")}
            if same == body:
                return 200, before
        self.resource_version += 1
        merged["metadata"]["resourceVersion"] = str(self.resource_version)
        if merged.get("kind") == "DaemonSet":
            generation = int(((before or {}).get("metadata") or {}).get("generation", 0)) + 1
            merged["metadata"]["generation"] = generation
            merged["status"] = {"desiredNumberScheduled": len(self.helpers) or 1,
                                "numberReady": len(self.helpers) or 1,
                                "updatedNumberScheduled": len(self.helpers) or 1,
                                "observedGeneration": generation}
        if not dry_run:
            self.objects[path] = merged
        return (201 if created else 200), merged


class _Handler(BaseHTTPRequestHandler):
    cluster: FakeCluster
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        return None

    def _serve(self) -> None:
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        ctype = self.headers.get("Content-Type") or ""
        body: Any = None
        if raw:
            body = json.loads(raw) if "json" in ctype or "yaml" in ctype else raw.decode()
        peer = None
        if isinstance(self.connection, ssl.SSLSocket):
            peer = self.connection.getpeercert()
        req = Request(self.command, split.path, parse_qs(split.query),
                      {k.lower(): v for k, v in self.headers.items()}, body, peer)
        code, payload = self.cluster.handle(req)
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


class FakeApiServer(LoopbackServer):
    def __init__(self, cluster: FakeCluster, tls: Pki | None = None) -> None:
        context = None
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls.server_crt, tls.server_key)
            context.load_verify_locations(tls.ca_crt)
            context.verify_mode = ssl.CERT_REQUIRED
        super().__init__(type("Handler", (_Handler,), {"cluster": cluster}), context)


@dataclass
class Pki:
    ca_crt: str
    server_crt: str
    server_key: str
    client_crt: str
    client_key: str


def make_pki(directory: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (CN=alice)."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=fake-ca")
    (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    (directory / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for who, cn in (("server", "127.0.0.1"), ("client", "alice")):
        openssl("req", *ec, "-keyout", f"{who}.key", "-out", f"{who}.csr", "-subj", f"/CN={cn}")
        openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{who}.crt", "-days", "2", "-extfile",
                f"{who}.ext")
    d = str(directory)
    return Pki(f"{d}/ca.crt", f"{d}/server.crt", f"{d}/server.key", f"{d}/client.crt",
               f"{d}/client.key")


def write_kubeconfig(path: Path, server: str, *, namespace: str | None = None,
                     token: str | None = TOKEN, pki: Pki | None = None) -> Path:
    def b64(file: str) -> str:
        return base64.b64encode(Path(file).read_bytes()).decode()

    cluster: dict[str, Any] = {"server": server}
    user: dict[str, Any] = {}
    if pki is not None:
        cluster["certificate-authority-data"] = b64(pki.ca_crt)
        user = {"client-certificate-data": b64(pki.client_crt),
                "client-key-data": b64(pki.client_key)}
    elif token:
        user = {"token": token}
    context: dict[str, Any] = {"cluster": "fake", "user": "me"}
    if namespace:
        context["namespace"] = namespace
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "fake",
              "clusters": [{"name": "fake", "cluster": cluster}],
              "users": [{"name": "me", "user": user}],
              "contexts": [{"name": "fake", "context": context},
                           {"name": "other", "context": dict(context, namespace="elsewhere")}]}
    path.write_text(yaml.safe_dump(config))
    return path


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False



def runner() -> CliRunner:
    """stdout and stderr apart (the default from click 8.2; asked for before)."""
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        return CliRunner()


def run_cli(kubeconfig: Path | None, *args: str) -> Result:
    """The real CLI in-process; stdout and stderr kept apart."""
    from kubectl_cedana.cli import main

    argv = (["--kubeconfig", str(kubeconfig)] if kubeconfig else []) + list(args)
    return runner().invoke(main, argv, catch_exceptions=False)
