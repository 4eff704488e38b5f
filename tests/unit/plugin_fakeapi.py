"""A small real HTTP server standing in for a Kubernetes API server.

It keeps pods, the objects `install` applies and the cedana.io objects (Checkpoint, Restore,
Migration) in memory and serves them as the API server does: JSON, Status objects on errors
(with the API server's own 403 wording), create with generateName and the CRDs' defaults,
get, list with label and field selectors, watch from a resourceVersion (chunked, one event
a line; 410 for a version it no longer keeps), delete with finalizers, server-side dry runs,
the admission policy's checks of admission.yaml, SelfSubjectReview and access reviews.
FakeHelpers (plugin_fakehelpers.py) plays the node helpers that reconcile the objects.
Tests drive the real plugin against it and assert on what arrived (`cluster.requests`).
"""
from __future__ import annotations

import base64
import copy
import json
import re
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml
from click.testing import CliRunner, Result

from kubectl_cedana.contract import (
    API_GROUP,
    CHECKPOINT_ID_PATTERN,
    GROUP_VERSION,
    HELPER_USER,
    REQUESTED_BY_ANNOTATION,
    RESOURCES,
)
from tests.unit.loopback import LoopbackServer

TOKEN = "test-token-123"
HELPER_NS = "cedana-system"
KINDS = {r.plural: r.kind for r in RESOURCES}
CUSTOM = re.compile(rf"/apis/{re.escape(GROUP_VERSION)}(?:/namespaces/([^/]+))?/"
                    r"(checkpoints|restores|migrations)(?:/([^/]+))?(/status)?")
#: CRD defaults (deploy/base/crds.yaml), applied on create as the API server does
DEFAULTS = {"checkpoints": {"leaveRunning": True, "withRootfs": True},
            "migrations": {"deleteSource": False}}
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"


def status(code: int, reason: str, message: str,
           details: dict[str, Any] | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                             "status": "Failure", "message": message, "reason": reason,
                             "code": code}
    if details:
        found["details"] = details
    return found


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


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
                 "imageID": f"docker.io/library/{image}@sha256:{'ab' * 32}",
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


def helper_pod(node: str, *, ready: bool = True,
               image: str = "docker.io/cedana/helper:0.1.0") -> dict[str, Any]:
    pod = make_pod(f"cedana-helper-{node}", HELPER_NS, node=node, containers=("helper",),
                   image=image, labels={"app.kubernetes.io/name": "cedana-helper",
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
class Event:
    version: int
    plural: str
    namespace: str
    type: str
    obj: dict[str, Any]


class WatchStream:
    """What a watch answers: events, one JSON document a line, until the watch ends."""

    def __init__(self, events: Iterator[dict[str, Any]]) -> None:
        self.events = events


def parse_selector(text: str) -> list[tuple[str, str, str]]:
    """`a=b,c!=d,e` -> [(a, =, b), (c, !=, d), (e, exists, "")]."""
    terms = []
    for term in filter(None, text.split(",")):
        if "!=" in term:
            key, value = term.split("!=", 1)
            terms.append((key, "!=", value))
        elif "=" in term:
            key, value = term.split("==", 1) if "==" in term else term.split("=", 1)
            terms.append((key, "=", value))
        else:
            terms.append((term, "exists", ""))
    return terms


def selected(values: dict[str, str], terms: list[tuple[str, str, str]]) -> bool:
    for key, op, value in terms:
        if op == "=" and values.get(key) != value:
            return False
        if op == "!=" and values.get(key) == value:
            return False
        if op == "exists" and key not in values:
            return False
    return True


def forbidden_message(user: str, method: str, path: str, query: dict[str, list[str]]) -> str:
    """The API server's wording of an RBAC refusal for this request."""
    parts = [p for p in path.split("/") if p]
    group, rest = ("", parts[2:]) if parts[:1] == ["api"] else (parts[1], parts[3:])
    namespace = ""
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    resource = rest[0] if rest else ""
    name = rest[1] if len(rest) > 1 else ""
    verb = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch",
            "DELETE": "delete"}[method]
    if verb == "get" and not name:
        verb = "watch" if query.get("watch") == ["true"] else "list"
    what = resource + (f".{group}" if group else "")
    return (f'{what}{f" {json.dumps(name)}" if name else ""} is forbidden: User "{user}" '
            f'cannot {verb} resource "{resource}" in API group "{group}"'
            + (f' in the namespace "{namespace}"' if namespace else " at the cluster scope"))


class FakeCluster:
    """In-memory API server state plus the behaviour switches tests flip."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.objects: dict[str, dict[str, Any]] = {}  # path -> object (install/uninstall)
        self.custom: dict[tuple[str, str, str], dict[str, Any]] = {}  # cedana.io objects
        self.events: list[Event] = []
        self.oldest_watchable = 0  # watches from an older resourceVersion get 410
        self.requests: list[Request] = []
        self.forbidden: list[tuple[str, str]] = []  # (method, path regex)
        self.delays: list[tuple[str, str, float]] = []  # (method, path regex, seconds)
        self.denied_reviews: set[tuple[str, str, str, str]] = set()  # of SelfSubjectAccessReviews
        # SubjectAccessReviews (the helper asking about a caller) answered no: (user, verb,
        # resource, subresource, namespace), "*" matching anything
        #: bearer tokens a TokenReview vouches for: token -> user info (username, uid, groups)
        self.review_tokens: dict[str, dict[str, Any]] = {}
        self.denied_subject_reviews: set[tuple[str, ...]] = set()
        self.cedana_api = True  # the CRDs are served
        self.self_subject_review = True  # the SelfSubjectReview API exists
        self.crd_unestablished_gets = 0  # how many reads of a CRD still find it unestablished
        self.max_watch_s = 30.0
        self.resource_version = 100
        self.nodes = ["node1"]
        self.node_runtimes: dict[str, str] = {}  # node -> containerRuntimeVersion
        self.token: str | None = TOKEN
        self.user = "token-user"  # whom a token authenticates (a client certificate: alice)
        self.closed = False
        self.on_created: list[Callable[[str, tuple[str, str, str]], None]] = []
        #: spec fields the installed CRDs do not know (the API server prunes them)
        self.pruned_spec_fields: set[str] = set()
        self.on_deleted: list[Callable[[str, tuple[str, str, str]], None]] = []

    # -- setup helpers ----------------------------------------------------------------------
    def add_pod(self, pod: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.pods[(pod["metadata"]["namespace"], pod["metadata"]["name"])] = pod
        return pod

    def add_helper(self, node: str, *, ready: bool = True) -> dict[str, Any]:
        """The helper pod of a node (the DaemonSet's); objects are reconciled by FakeHelpers."""
        pod = self.add_pod(helper_pod(node, ready=ready))
        if node not in self.nodes:
            self.nodes.append(node)
        return pod

    def requests_matching(self, method: str, pattern: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and re.search(pattern, r.path)]

    def created(self, plural: str) -> list[dict[str, Any]]:
        """The bodies POSTed to create cedana.io objects of `plural` (dry runs included)."""
        return [r.body for r in self.requests_matching("POST", rf"/{plural}$")]

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self.custom[(plural, namespace, name)])

    def objects_of(self, plural: str) -> list[dict[str, Any]]:
        with self.lock:
            return [copy.deepcopy(o) for (p, _ns, _n), o in sorted(self.custom.items())
                    if p == plural]

    # -- cedana.io objects: every change bumps the resourceVersion and is an event ----------
    def _record(self, plural: str, obj: dict[str, Any], kind: str) -> None:
        self.resource_version += 1
        obj["metadata"]["resourceVersion"] = str(self.resource_version)
        self.events.append(Event(self.resource_version, plural, obj["metadata"]["namespace"],
                                 kind, copy.deepcopy(obj)))
        self.changed.notify_all()

    def put(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Store an object as if created (no helper is told): for tests that need a state."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", now())
        obj.setdefault("apiVersion", GROUP_VERSION)
        obj.setdefault("kind", KINDS[plural])
        with self.lock:
            self.custom[(plural, meta["namespace"], meta["name"])] = obj
            self._record(plural, obj, "ADDED")
        return copy.deepcopy(obj)

    def update(self, plural: str, namespace: str, name: str,
               change: Callable[[dict[str, Any]], None]) -> dict[str, Any] | None:
        """Change an object in place (as the helper's writes would); None if it is gone. An
        object being deleted goes once its last finalizer is removed."""
        with self.lock:
            key = (plural, namespace, name)
            obj = self.custom.get(key)
            if obj is None:
                return None
            change(obj)
            meta = obj["metadata"]
            if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                del self.custom[key]
                self._record(plural, obj, "DELETED")
                return None
            self._record(plural, obj, "MODIFIED")
            return copy.deepcopy(obj)

    def forget_history(self) -> None:
        """Watches from any version seen so far get 410 Gone (as after etcd compaction)."""
        with self.lock:
            self.oldest_watchable = self.resource_version + 1

    # -- request handling -------------------------------------------------------------------
    def handle(self, req: Request) -> tuple[int, Any]:
        self.requests.append(req)
        if self.token is not None and req.peer_cert is None and \
                req.headers.get("authorization") != f"Bearer {self.token}":
            return 401, status(401, "Unauthorized", "Unauthorized")
        user = "alice" if req.peer_cert else self.user
        for method, pattern, seconds in self.delays:
            if method == req.method and re.search(pattern, req.path):
                time.sleep(seconds)
        for method, pattern in self.forbidden:
            if method == req.method and re.search(pattern, req.path):
                return 403, status(403, "Forbidden", forbidden_message(
                    user, req.method, req.path, req.query))
        path = req.path
        if path == "/version":
            return 200, {"major": "1", "minor": "34", "gitVersion": "v1.34.12"}
        if path == "/api/v1/pods":
            return 200, self._pod_list(None, req.query)
        if path == "/api/v1/nodes":
            return 200, {"kind": "NodeList", "items": [
                {"metadata": {"name": n}, "status": {"nodeInfo": {
                    "containerRuntimeVersion": self.node_runtimes.get(n, "containerd://2.4.2")}}}
                for n in self.nodes]}
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
            vouched = self.review_tokens.get(review["spec"]["token"])
            answer = {"authenticated": True, "user": vouched} if vouched \
                else {"authenticated": False}
            return 201, dict(review, status=answer)
        if path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews":
            attrs = req.body["spec"]["resourceAttributes"]
            key = (attrs.get("verb"), attrs.get("resource"), attrs.get("subresource", ""),
                   attrs.get("namespace", ""))
            return 201, dict(req.body, status={"allowed": key not in self.denied_reviews})
        if path == "/apis/authentication.k8s.io/v1/selfsubjectreviews":
            if not self.self_subject_review:
                return 404, status(404, "NotFound", "the server could not find the requested "
                                                    "resource")
            return 201, dict(req.body, status={"userInfo": {
                "username": user, "uid": f"uid-{user}", "groups": ["system:authenticated"]}})
        if path == f"/apis/{GROUP_VERSION}":
            if not self.cedana_api:
                return 404, status(404, "NotFound", "the server could not find the requested "
                                                    "resource")
            return 200, {"kind": "APIResourceList", "groupVersion": GROUP_VERSION,
                         "resources": [{"name": r.plural, "namespaced": True, "kind": r.kind}
                                       for r in RESOURCES]}
        custom = CUSTOM.fullmatch(path)
        if custom:
            return self._custom(req, user, *custom.groups())
        pods = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods(?:/([^/]+))?", path)
        if pods:
            return self._pods(req, pods.group(1), pods.group(2))
        return self._object(req)

    def _pod_list(self, namespace: str | None, query: dict[str, list[str]]) -> dict[str, Any]:
        labels = parse_selector(query.get("labelSelector", [""])[0])
        fields = parse_selector(query.get("fieldSelector", [""])[0])
        items = []
        with self.lock:
            for (ns, _name), pod in sorted(self.pods.items()):
                if namespace and ns != namespace:
                    continue
                if not selected(pod["metadata"].get("labels") or {}, labels):
                    continue
                if not selected({"spec.nodeName": str(pod["spec"].get("nodeName") or ""),
                                 "metadata.name": pod["metadata"]["name"]}, fields):
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
                self.pods[key] = pod
                return 201, pod
            key = (namespace, name or "")
            if key not in self.pods:
                return 404, status(404, "NotFound", f'pods "{name}" not found',
                                   {"name": name, "kind": "pods"})
            if req.method == "GET":
                return 200, copy.deepcopy(self.pods[key])
            if req.method == "DELETE":
                return 200, self.pods.pop(key)
        return 405, status(405, "MethodNotAllowed", "no")

    # -- cedana.io -------------------------------------------------------------------------
    def _custom(self, req: Request, user: str, namespace: str | None, plural: str,
                name: str | None, subresource: str | None) -> tuple[int, Any]:
        if not self.cedana_api:
            return 404, status(404, "NotFound", "the server could not find the requested "
                                                "resource")
        if req.method == "GET" and name is None and req.query.get("watch") == ["true"]:
            return 200, self._watch(plural, namespace, req.query)
        with self.lock:
            if req.method == "GET" and name is None:
                return 200, self._custom_list(plural, namespace, req.query)
            if req.method == "POST" and name is None and namespace:
                return self._custom_create(req, user, plural, namespace)
            key = (plural, namespace or "", name or "")
            missing = status(404, "NotFound", f'{plural}.{API_GROUP} "{name}" not found',
                             {"name": name, "group": API_GROUP, "kind": plural})
            if key not in self.custom:
                return 404, missing
            if req.method == "GET":
                return 200, copy.deepcopy(self.custom[key])
            if req.method == "DELETE" and not subresource:
                return self._custom_delete(plural, key, dry_run="dryRun" in req.query)
        return 405, status(405, "MethodNotAllowed", f"{req.method} {req.path}")

    def _custom_list(self, plural: str, namespace: str | None,
                     query: dict[str, list[str]]) -> dict[str, Any]:
        labels = parse_selector(query.get("labelSelector", [""])[0])
        fields = parse_selector(query.get("fieldSelector", [""])[0])
        items = []
        for (p, ns, name), obj in sorted(self.custom.items()):
            if p != plural or (namespace and ns != namespace):
                continue
            if selected(obj["metadata"].get("labels") or {}, labels) and \
                    selected({"metadata.name": name, "metadata.namespace": ns}, fields):
                item = copy.deepcopy(obj)
                item.pop("apiVersion", None)  # as real lists of custom resources keep them,
                item.pop("kind", None)        # the plugin must not rely on either
                items.append(item)
        return {"apiVersion": GROUP_VERSION, "kind": f"{KINDS[plural]}List",
                "metadata": {"resourceVersion": str(self.resource_version)}, "items": items}

    def _invalid(self, plural: str, body: dict[str, Any]) -> str:
        """What the CRD's schema refuses (a subset of deploy/base/crds.yaml), or ''."""
        name = str(body["metadata"].get("name") or body["metadata"].get("generateName") or "")
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?-?", name) or len(name) > 253:
            return (f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 subdomain '
                    "must consist of lower case alphanumeric characters, '-' or '.'")
        spec = body.get("spec")
        if not isinstance(spec, dict):
            return "spec: Required value"
        if plural in ("checkpoints", "migrations") and not spec.get("podName"):
            return "spec.podName: Required value"
        if plural == "restores":
            if ("checkpointName" in spec) == ("checkpointID" in spec):
                return ('spec: Invalid value: "object": give exactly one of checkpointName '
                        "and checkpointID")
            if ("target" in spec) == ("newPod" in spec):
                return ('spec: Invalid value: "object": give exactly one of target (an '
                        "existing sleeping pod) and newPod")
            if "checkpointName" in spec and "checkpointNamespace" in spec:
                return ('spec: Invalid value: "object": checkpointName names a Checkpoint of '
                        "this namespace; use checkpointID with checkpointNamespace")
            if "checkpointID" in spec and not re.match(CHECKPOINT_ID_PATTERN,
                                                       str(spec["checkpointID"])):
                return f'spec.checkpointID: Invalid value: "{spec["checkpointID"]}"'
        return ""

    def _admission(self, user: str, plural: str, namespace: str, body: dict[str, Any]) -> str:
        """What the ValidatingAdmissionPolicy of deploy/base/admission.yaml refuses, or ''."""
        if user == HELPER_USER:
            return ""
        spec = body.get("spec") or {}
        claimed = (body["metadata"].get("annotations") or {}).get(REQUESTED_BY_ANNOTATION)
        if claimed is not None and claimed not in ("", user):
            return (f"annotation cedana.io/requested-by must be your own user name ({user}) "
                    "or absent")
        other = spec.get("checkpointNamespace")
        if plural == "restores" and other and other != namespace and \
                ("get", "checkpoints", "", other) in self.denied_reviews:
            return (f"restoring a checkpoint of namespace {other} needs get on "
                    f"checkpoints.cedana.io there, which {user} does not have")
        if (plural == "migrations" or (plural == "restores" and "newPod" in spec)) and \
                ("create", "pods", "", namespace) in self.denied_reviews:
            return f"a new pod is made in {namespace}: {user} needs create on pods there"
        return ""

    def _custom_create(self, req: Request, user: str, plural: str,
                       namespace: str) -> tuple[int, Any]:
        body = copy.deepcopy(req.body)
        meta = body.setdefault("metadata", {})
        meta["namespace"] = namespace
        name = meta.get("name") or f"{meta.get('generateName', '')}{uuid.uuid4().hex[:5]}"
        invalid = self._invalid(plural, body)
        if invalid:
            return 422, status(422, "Invalid", f'{KINDS[plural]}.{API_GROUP} "{name}" is '
                                               f"invalid: {invalid}",
                               {"name": name, "group": API_GROUP, "kind": KINDS[plural]})
        refused = self._admission(user, plural, namespace, body)
        if refused:
            return 403, status(403, "Forbidden", f'{plural}.{API_GROUP} "{name}" is forbidden: '
                                                 "ValidatingAdmissionPolicy 'cedana.io' with "
                                                 "binding 'cedana.io' denied request: "
                                                 f"{refused}")
        if (plural, namespace, name) in self.custom:
            return 409, status(409, "AlreadyExists", f'{plural}.{API_GROUP} "{name}" already '
                                                     "exists", {"name": name, "kind": plural})
        for key, value in DEFAULTS.get(plural, {}).items():
            body["spec"].setdefault(key, value)
        for field_name in self.pruned_spec_fields:  # an older CRD: what it does not know goes
            body["spec"].pop(field_name, None)
        meta.update(name=name, uid=str(uuid.uuid4()), generation=1, creationTimestamp=now())
        if "dryRun" in req.query:
            meta["resourceVersion"] = ""
            return 201, body
        self.custom[(plural, namespace, name)] = body
        self._record(plural, body, "ADDED")
        created = copy.deepcopy(body)
        for hook in self.on_created:
            hook(plural, (plural, namespace, name))
        return 201, created

    def _custom_delete(self, plural: str, key: tuple[str, str, str],
                       dry_run: bool) -> tuple[int, Any]:
        obj = self.custom[key]
        if dry_run:
            return 200, copy.deepcopy(obj)
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                obj["metadata"]["deletionTimestamp"] = now()
                self._record(plural, obj, "MODIFIED")
                for hook in self.on_deleted:
                    hook(plural, key)
            return 200, copy.deepcopy(obj)
        del self.custom[key]
        self._record(plural, obj, "DELETED")
        return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                     "details": {"name": key[2], "group": API_GROUP, "kind": plural,
                                 "uid": obj["metadata"]["uid"]}}

    def _watch(self, plural: str, namespace: str | None,
               query: dict[str, list[str]]) -> WatchStream:
        labels = parse_selector(query.get("labelSelector", [""])[0])
        fields = parse_selector(query.get("fieldSelector", [""])[0])
        since_text = query.get("resourceVersion", [""])[0]
        seconds = min(float(query.get("timeoutSeconds", ["1800"])[0]), self.max_watch_s)

        def matches(event: Event) -> bool:
            meta = event.obj["metadata"]
            return event.plural == plural and (not namespace or event.namespace == namespace) \
                and selected(meta.get("labels") or {}, labels) \
                and selected({"metadata.name": meta["name"],
                              "metadata.namespace": event.namespace}, fields)

        def events() -> Iterator[dict[str, Any]]:
            deadline = time.monotonic() + seconds
            with self.lock:
                cursor = self.resource_version
                if since_text in ("", "0"):  # the current state first, as ADDED
                    first = [{"type": "ADDED", "object": copy.deepcopy(o)}
                             for (p, ns, n), o in sorted(self.custom.items())
                             if matches(Event(0, p, ns, "ADDED", o))]
                elif int(since_text) < self.oldest_watchable:
                    first = [{"type": "ERROR", "object": status(
                        410, "Expired", f"too old resource version: {since_text} "
                                        f"({self.oldest_watchable})")}]
                    deadline = 0
                else:
                    cursor = int(since_text)
                    first = []
            yield from first
            while time.monotonic() < deadline and not self.closed:
                with self.changed:
                    batch = [e for e in self.events if e.version > cursor]
                    if not batch:
                        self.changed.wait(timeout=min(0.1, max(0.0, deadline -
                                                               time.monotonic())))
                        continue
                    cursor = batch[-1].version
                    chosen = [{"type": e.type, "object": copy.deepcopy(e.obj)}
                              for e in batch if matches(e)]
                yield from chosen

        return WatchStream(events())

    # -- install/uninstall objects: a generic store keyed by path --------------------------
    def _object(self, req: Request) -> tuple[int, Any]:
        path = req.path
        with self.lock:
            if req.method == "GET" and path in self.objects:
                found = copy.deepcopy(self.objects[path])
                if path.startswith(CRD_PATH) and self.crd_unestablished_gets > 0:
                    self.crd_unestablished_gets -= 1
                    found["status"] = {"conditions": [
                        {"type": "NamesAccepted", "status": "True"},
                        {"type": "Established", "status": "False", "reason": "Installing"}]}
                return 200, found
            if req.method == "GET" and self._is_collection(path):
                terms = parse_selector(req.query.get("labelSelector", [""])[0])
                items = [copy.deepcopy(o) for p, o in sorted(self.objects.items())
                         if self._in_collection(p, path)
                         and selected(o["metadata"].get("labels") or {}, terms)]
                for item in items:  # lists carry kind/apiVersion only at the top
                    item.pop("kind", None)
                    item.pop("apiVersion", None)
                return 200, {"kind": "List", "items": items}
            if req.method == "GET":
                return 404, status(404, "NotFound", f"{path} not found",
                                   {"name": path.rsplit("/", 1)[-1]})
            if req.method == "PATCH" and req.headers.get("content-type") == \
                    "application/apply-patch+yaml":
                body = yaml.safe_load(req.body) if isinstance(req.body, str) else req.body
                return self._apply(path, body, dry_run="dryRun" in req.query)
            if req.method == "POST" and isinstance(req.body, dict) and \
                    re.fullmatch(r"/api/v1/namespaces/[^/]+/secrets", path):
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
            helpers = len([k for k in self.pods if k[0] == HELPER_NS]) or 1
            generation = int(((before or {}).get("metadata") or {}).get("generation", 0)) + 1
            merged["metadata"]["generation"] = generation
            merged["status"] = {"desiredNumberScheduled": helpers, "numberReady": helpers,
                                "updatedNumberScheduled": helpers,
                                "observedGeneration": generation}
        if merged.get("kind") == "CustomResourceDefinition":
            merged["status"] = {"conditions": [{"type": "NamesAccepted", "status": "True"},
                                               {"type": "Established", "status": "True"}]}
        if not dry_run:
            self.objects[path] = merged
        return (201 if created else 200), merged


class _Handler(BaseHTTPRequestHandler):
    cluster: FakeCluster
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # headers and body go in two writes: without this, Nagle's algorithm and the client's
        # delayed ACK add 40 ms to every answer
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

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
        if isinstance(payload, WatchStream):
            self._stream(payload)
            return
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, stream: WatchStream) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for event in stream.events:
                line = json.dumps(event).encode() + b"\n"
                self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:  # the client went away
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


class FakeApiServer(LoopbackServer):
    def __init__(self, cluster: FakeCluster, tls: Pki | None = None) -> None:
        context = None
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls.server_crt, tls.server_key)
            context.load_verify_locations(tls.ca_crt)
            context.verify_mode = ssl.CERT_REQUIRED
        self.cluster = cluster
        super().__init__(type("Handler", (_Handler,), {"cluster": cluster}), context)

    def __exit__(self, *exc: object) -> None:
        with self.cluster.changed:  # open watches end
            self.cluster.closed = True
            self.cluster.changed.notify_all()
        super().__exit__(*exc)


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
