"""Installing and removing the node helper: the objects of deploy/, for the node's runtime.

The YAML lives once, in deploy/: base/ is the helper for containerd (what `kubectl apply -k
deploy/` uses) and overlays/{containerd,k3s,crio} patch it for each runtime's paths. The package
reaches them as `kubectl_cedana/manifests` (a symlink to ../deploy/base in a source checkout)
and `kubectl_cedana/overlays` (to ../deploy/overlays); a wheel or the zipapp of `make dist`
carries real copies. kubectl_cedana.kustomize renders an overlay the way `kubectl kustomize`
does; the order of objects is the `resources` order.

One object is not in deploy/: the Secret cedana-signing-key, the key the helpers sign and
verify checkpoints with (docs/security.md). Install creates it with random bytes, right before
the DaemonSet that mounts it, when it does not exist; an existing one is never replaced (that
would make every checkpoint signed with it unrestorable), and its bytes are never printed.
Uninstall deletes it with the namespace.
"""
from __future__ import annotations

import base64
import binascii
import copy
import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from kubectl_cedana.contract import (
    CHECKPOINT_DATA_FINALIZER,
    CHECKPOINT_RESOURCE,
    HELPER_NAME,
    HELPER_NAMESPACE,
    HELPER_SELECTOR,
    MIGRATION_RESOURCE,
    RESTORE_RESOURCE,
    Resource,
)
from kubectl_cedana.errors import (
    ApiConflict,
    ApiError,
    ApiNotFound,
    CedanaError,
    HelperNotInstalled,
    OperationTimeout,
    UsageError,
)
from kubectl_cedana.kube import KubeClient

PART_OF_SELECTOR = "app.kubernetes.io/part-of=kubectl-cedana"
FIELD_MANAGER = "kubectl-cedana"
POLL_SECONDS = 1.0
CRD_POLL_SECONDS = 0.2
ProgressFn = Callable[[str], None]

#: (apiVersion, kind) -> (API prefix, plural, namespaced). Every kind in deploy/base must be
#: here (a unit test checks), since uninstall looks for leftovers kind by kind.
KINDS: dict[tuple[str, str], tuple[str, str, bool]] = {
    ("v1", "Namespace"): ("/api/v1", "namespaces", False),
    ("v1", "ServiceAccount"): ("/api/v1", "serviceaccounts", True),
    ("v1", "ConfigMap"): ("/api/v1", "configmaps", True),
    ("v1", "Service"): ("/api/v1", "services", True),
    ("v1", "Secret"): ("/api/v1", "secrets", True),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"):
        ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"):
        ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    ("rbac.authorization.k8s.io/v1", "Role"):
        ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"):
        ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    ("apps/v1", "DaemonSet"): ("/apis/apps/v1", "daemonsets", True),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"):
        ("/apis/apiextensions.k8s.io/v1", "customresourcedefinitions", False),
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy"):
        ("/apis/admissionregistration.k8s.io/v1", "validatingadmissionpolicies", False),
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding"):
        ("/apis/admissionregistration.k8s.io/v1", "validatingadmissionpolicybindings", False),
}
CRD = "CustomResourceDefinition"
#: what `uninstall` keeps unless --purge: the cedana.io API itself, so the objects stay
#: readable, deletable and guarded by admission (a kept object holds data on a node, which only
#: its helper can delete: see uninstall)
API_KINDS = (CRD, "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
#: the label of the ClusterRoles that give users the cedana.io resources (kept with the API)
COMPONENT_LABEL = "app.kubernetes.io/component"
API_COMPONENT = "api"
_HOPELESS = {"ErrImageNeverPull", "InvalidImageName", "ImagePullBackOff", "CrashLoopBackOff",
             "CreateContainerConfigError"}


#: the helpers' checkpoint signing key: a Secret the DaemonSet mounts (deploy/base/daemonset.yaml)
SIGNING_SECRET = "cedana-signing-key"
SIGNING_SECRET_ITEM = "key"
SIGNING_KEY_BYTES = 32

#: --runtime: the overlays of deploy/overlays (containerd is deploy/base unchanged)
RUNTIMES = ("containerd", "k3s", "crio")
DEFAULT_RUNTIME = "containerd"
#: the package's names for the directories of deploy/
_PACKAGE_DIRS = {"base": "manifests", "overlays": "overlays"}


def _read_packaged(path: str) -> str | None:
    """A file of deploy/ (POSIX path relative to it) from this installation, or None."""
    from importlib import resources

    first, _, rest = path.partition("/")
    if first not in _PACKAGE_DIRS or not rest:
        return None
    node = resources.files("kubectl_cedana").joinpath(_PACKAGE_DIRS[first])
    for part in rest.split("/"):
        node = node.joinpath(part)
    try:  # Python 3.9's zipfile.Path raises KeyError for a path below a file
        if not node.is_file():
            return None
        return str(node.read_text(encoding="utf-8"))
    except (KeyError, OSError):
        return None


def load_manifests(runtime: str = DEFAULT_RUNTIME) -> list[dict[str, Any]]:
    """The helper's objects for `runtime`, in kustomization order, as plain dicts."""
    from kubectl_cedana import kustomize

    if runtime not in RUNTIMES:
        raise UsageError(f"unknown runtime {runtime!r} (one of {', '.join(RUNTIMES)})")
    if _read_packaged("base/kustomization.yaml") is None:
        raise CedanaError("the helper manifests are missing from this installation of "
                          "kubectl-cedana (kubectl_cedana/manifests/kustomization.yaml)")
    return kustomize.build(_read_packaged, f"overlays/{runtime}")


def helper_daemonsets(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == "DaemonSet"
            and o["metadata"].get("name") == HELPER_NAME]


def default_image(objects: list[dict[str, Any]] | None = None) -> str:
    for daemonset in helper_daemonsets(objects or load_manifests()):
        return str(daemonset["spec"]["template"]["spec"]["containers"][0]["image"])
    raise CedanaError("no cedana-helper DaemonSet in the manifests")


def render_manifests(image: str | None = None, runtime: str = DEFAULT_RUNTIME,
                     helper_args: list[str] | None = None) -> list[dict[str, Any]]:
    """The objects install applies: deploy/overlays/RUNTIME, with the helper image replaced
    if asked and `helper_args` appended to the helper's command line."""
    objects = copy.deepcopy(load_manifests(runtime))
    for daemonset in helper_daemonsets(objects) if helper_args else []:
        for container in daemonset["spec"]["template"]["spec"]["containers"]:
            container["command"] = [*container.get("command", []), *(helper_args or [])]
    if image is not None:
        if not image.strip():
            raise UsageError("--image must not be empty")
        for daemonset in helper_daemonsets(objects):
            for container in daemonset["spec"]["template"]["spec"]["containers"]:
                container["image"] = image
    return objects


def kind_info(obj: dict[str, Any]) -> tuple[str, str, bool]:
    key = (str(obj.get("apiVersion")), str(obj.get("kind")))
    if key not in KINDS:
        raise CedanaError(f"kubectl-cedana does not know how to apply {key[1]} ({key[0]})")
    return KINDS[key]


def collection_path(obj: dict[str, Any]) -> str:
    prefix, plural, namespaced = kind_info(obj)
    if namespaced:
        namespace = obj["metadata"].get("namespace") or "default"
        return f"{prefix}/namespaces/{quote(namespace, safe='')}/{plural}"
    return f"{prefix}/{plural}"


def object_path(obj: dict[str, Any]) -> str:
    return f"{collection_path(obj)}/{quote(str(obj['metadata']['name']), safe='')}"


def display_name(obj: dict[str, Any]) -> str:
    """kubectl's way of naming an object: `daemonset.apps/cedana-helper`."""
    api_version = str(obj.get("apiVersion"))
    group = api_version.split("/")[0] if "/" in api_version else ""
    kind = str(obj.get("kind")).lower()
    return f"{kind}{'.' + group if group else ''}/{obj['metadata']['name']}"


def _get_or_none(kube: KubeClient, path: str) -> dict[str, Any] | None:
    try:
        return dict(kube.request("GET", path))
    except ApiNotFound:
        return None


def _wait_namespace_gone(kube: KubeClient, path: str, timeout: float,
                         progress: ProgressFn) -> None:
    deadline = time.monotonic() + timeout
    while True:
        current = _get_or_none(kube, path)
        if current is None or not current["metadata"].get("deletionTimestamp"):
            return
        progress(f"waiting for the old namespace {current['metadata']['name']} to be deleted")
        if time.monotonic() >= deadline:
            raise OperationTimeout(f"namespace {current['metadata']['name']} is still being "
                                   "deleted", hint="retry when it is gone")
        time.sleep(POLL_SECONDS)


def apply_object(kube: KubeClient, obj: dict[str, Any], *, server_dry_run: bool = False
                 ) -> str:
    """Create or update one object idempotently; returns created|configured|unchanged.

    Server-side apply (one PATCH that creates or updates, owned by field manager
    `kubectl-cedana`); API servers without it (415) get create-or-merge-patch instead.
    """
    path = object_path(obj)
    before = _get_or_none(kube, path)
    query: dict[str, Any] = {"fieldManager": FIELD_MANAGER, "force": "true"}
    if server_dry_run:
        query["dryRun"] = "All"
    try:
        after = kube.request("PATCH", path, query=query, body=obj,
                             content_type="application/apply-patch+yaml")
    except ApiError as exc:
        if exc.status != 415:
            raise
        fallback_query = {k: v for k, v in query.items() if k != "force"}
        if before is None:
            after = kube.request("POST", collection_path(obj), query=fallback_query, body=obj)
        else:
            after = kube.request("PATCH", path, query=fallback_query, body=obj,
                                 content_type="application/merge-patch+json")
    if before is None:
        return "created"
    old = before["metadata"].get("resourceVersion")
    new = ((after or {}).get("metadata") or {}).get("resourceVersion")
    return "unchanged" if old == new else "configured"


def signing_secret() -> dict[str, Any]:
    """The Secret holding the helpers' signing key, without its key."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": SIGNING_SECRET, "namespace": HELPER_NAMESPACE,
                         "labels": {"app.kubernetes.io/name": HELPER_NAME,
                                    "app.kubernetes.io/part-of": "kubectl-cedana"}}}


def ensure_signing_key(kube: KubeClient, *, server_dry_run: bool = False,
                       namespace_imagined: bool = False) -> dict[str, Any]:
    """Create the signing key Secret with SIGNING_KEY_BYTES random bytes unless it exists; an
    existing one is kept as it is (checked to hold a usable key). Its bytes go to the API
    server only, never to the output."""
    obj = signing_secret()
    result = {"kind": "Secret", "name": SIGNING_SECRET, "namespace": HELPER_NAMESPACE,
              "object": display_name(obj), "action": "created", "note": ""}
    if namespace_imagined:
        return {**result, "note": "not validated: its namespace does not exist yet"}
    existing = _get_or_none(kube, object_path(obj))
    if existing is not None:
        encoded = str((existing.get("data") or {}).get(SIGNING_SECRET_ITEM) or "")
        try:
            usable = len(base64.b64decode(encoded, validate=True)) >= SIGNING_KEY_BYTES
        except (binascii.Error, ValueError):
            usable = False
        if not usable:
            raise CedanaError(
                f"secret {HELPER_NAMESPACE}/{SIGNING_SECRET} exists but holds no usable "
                f"signing key (data.{SIGNING_SECRET_ITEM}: at least {SIGNING_KEY_BYTES} random "
                "bytes); install never replaces it",
                hint=f"fix it, or delete it (kubectl -n {HELPER_NAMESPACE} delete secret "
                     f"{SIGNING_SECRET}) to have install make a new one: checkpoints signed "
                     "with an old key can then no longer be restored")
        return {**result, "action": "unchanged", "note": "kept: a signing key is never replaced"}
    query: dict[str, Any] = {"fieldManager": FIELD_MANAGER}
    if server_dry_run:
        query["dryRun"] = "All"
    key = base64.b64encode(secrets.token_bytes(SIGNING_KEY_BYTES)).decode("ascii")
    try:
        kube.request("POST", collection_path(obj), query=query,
                     body={**obj, "data": {SIGNING_SECRET_ITEM: key}})
    except ApiConflict:  # made meanwhile by another install: that one is the key
        return {**result, "action": "unchanged", "note": "kept: a signing key is never replaced"}
    return result
def crd_established(crd: dict[str, Any]) -> tuple[bool, str]:
    """(Established, why not): the API server serves the CRD's resource once it is."""
    conditions = {c.get("type"): c for c in (crd.get("status") or {}).get("conditions") or []}
    names = conditions.get("NamesAccepted") or {}
    if names.get("status") == "False":
        raise CedanaError(f"customresourcedefinition {crd['metadata']['name']}: names not "
                          f"accepted: {names.get('message') or names.get('reason')}")
    established = conditions.get("Established") or {}
    return established.get("status") == "True", str(established.get("reason") or
                                                     "not established yet")


def wait_established(kube: KubeClient, crds: list[dict[str, Any]], timeout: float,
                     progress: ProgressFn) -> None:
    """Wait until every CRD is Established, so what follows (the admission policy, the
    helpers' watches) finds its resources served."""
    deadline = time.monotonic() + timeout
    for crd in crds:
        while True:
            current = dict(kube.request("GET", object_path(crd)))
            done, why = crd_established(current)
            if done:
                break
            progress(f"waiting for {display_name(crd)} to be established: {why}")
            if time.monotonic() >= deadline:
                raise OperationTimeout(f"{display_name(crd)} not established after "
                                       f"{timeout:.0f}s ({why})",
                                       hint=f"kubectl get {display_name(crd)} -o yaml")
            time.sleep(CRD_POLL_SECONDS)


def apply_manifests(kube: KubeClient, objects: list[dict[str, Any]], *,
                    server_dry_run: bool = False, timeout: float = 120.0,
                    progress: ProgressFn | None = None) -> list[dict[str, Any]]:
    """Apply the objects in order. The CRDs come first (kustomization order); the first
    object after them waits until they are Established (not in a server dry run, which
    stores nothing). The signing key Secret is made, if missing, right before the helper
    DaemonSet that mounts it."""
    progress = progress or (lambda _text: None)
    results: list[dict[str, Any]] = []
    imagined: set[str] = set()  # namespaces a server dry run "created" but did not persist
    unestablished: list[dict[str, Any]] = []
    for obj in objects:
        if obj.get("kind") != CRD and unestablished:
            wait_established(kube, unestablished, timeout, progress)
            unestablished = []
        if obj.get("kind") == CRD and not server_dry_run:
            unestablished.append(obj)
        if obj.get("kind") == "Namespace":
            if not server_dry_run:
                _wait_namespace_gone(kube, object_path(obj), timeout, progress)
            elif _get_or_none(kube, object_path(obj)) is None:
                imagined.add(str(obj["metadata"]["name"]))
        if helper_daemonsets([obj]) and not any(
                r["kind"] == "Secret" and r["name"] == SIGNING_SECRET for r in results):
            progress(f"making sure secret/{SIGNING_SECRET} exists")
            results.append(ensure_signing_key(kube, server_dry_run=server_dry_run,
                                              namespace_imagined=HELPER_NAMESPACE in imagined))
        progress(f"applying {display_name(obj)}")
        note = ""
        if obj["metadata"].get("namespace") in imagined:
            # the API server cannot validate it without its namespace (kubectl fails here)
            action, note = "created", "not validated: its namespace does not exist yet"
        else:
            action = apply_object(kube, obj, server_dry_run=server_dry_run)
        results.append({"kind": obj["kind"], "name": obj["metadata"]["name"],
                        "namespace": obj["metadata"].get("namespace", ""),
                        "object": display_name(obj), "action": action, "note": note})
    if unestablished:
        wait_established(kube, unestablished, timeout, progress)
    return results


def daemonset_progress(daemonset: dict[str, Any]) -> tuple[bool, int, int]:
    """(rolled out and every desired pod ready, ready count, desired count)."""
    status = daemonset.get("status") or {}
    desired = int(status.get("desiredNumberScheduled") or 0)
    ready = int(status.get("numberReady") or 0)
    updated = int(status.get("updatedNumberScheduled") or 0)
    observed = int(status.get("observedGeneration") or 0) >= \
        int(daemonset["metadata"].get("generation") or 0)
    return observed and ready == desired and updated == desired, ready, desired


def _stuck_helper_pod(kube: KubeClient, namespace: str, image: str) -> str:
    """Why a helper pod running `image` will not become ready without help, or ''."""
    for pod in kube.list_pods(namespace, label_selector=HELPER_SELECTOR):
        images = [c.get("image") for c in (pod.get("spec") or {}).get("containers") or []]
        if image not in images:
            continue  # an old pod the rollout will replace
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (status.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in _HOPELESS:
                return (f"helper pod {pod['metadata']['name']} on node "
                        f"{pod['spec'].get('nodeName')}: {waiting['reason']}"
                        f"{': ' + waiting['message'] if waiting.get('message') else ''}")
    return ""


def wait_daemonset_ready(kube: KubeClient, namespace: str, name: str, timeout: float,
                         progress: ProgressFn | None = None) -> dict[str, int]:
    progress = progress or (lambda _text: None)
    path = f"/apis/apps/v1/namespaces/{quote(namespace, safe='')}/daemonsets/{quote(name)}"
    deadline = time.monotonic() + timeout
    while True:
        daemonset = dict(kube.request("GET", path))
        done, ready, desired = daemonset_progress(daemonset)
        if done:
            return {"ready": ready, "desired": desired}
        progress(f"waiting for daemonset {name}: {ready}/{desired} ready")
        image = daemonset["spec"]["template"]["spec"]["containers"][0].get("image", "")
        stuck = _stuck_helper_pod(kube, namespace, image)
        if stuck:
            raise CedanaError(f"the helper cannot start: {stuck}",
                              hint=f"kubectl -n {namespace} describe pods -l {HELPER_SELECTOR}")
        if time.monotonic() >= deadline:
            raise OperationTimeout(f"daemonset {namespace}/{name} not ready after "
                                   f"{timeout:.0f}s ({ready}/{desired} pods ready)",
                                   hint=f"kubectl -n {namespace} get pods -l "
                                        f"{HELPER_SELECTOR}")
        time.sleep(POLL_SECONDS)


# -- uninstall --------------------------------------------------------------------------------
def installed_objects(kube: KubeClient) -> list[dict[str, Any]]:
    """Every object labelled part-of=kubectl-cedana, of the kinds the manifests use."""
    found: list[dict[str, Any]] = []
    for (api_version, kind), (prefix, plural, _namespaced) in KINDS.items():
        listing = kube.request("GET", f"{prefix}/{plural}",
                               query={"labelSelector": PART_OF_SELECTOR}) or {}
        for item in listing.get("items") or []:
            item["apiVersion"], item["kind"] = api_version, kind  # lists omit them per item
            found.append(item)
    return found


def is_api_object(obj: dict[str, Any]) -> bool:
    """Part of the cedana.io API that `uninstall` keeps without --purge."""
    labels = obj["metadata"].get("labels") or {}
    return obj.get("kind") in API_KINDS or labels.get(COMPONENT_LABEL) == API_COMPONENT


def _deletion_order(obj: dict[str, Any]) -> int:
    order = ["DaemonSet", "Service", "ConfigMap", "Secret", "RoleBinding", "Role",
             "ClusterRoleBinding", "ClusterRole", "ServiceAccount", "Namespace",
             "ValidatingAdmissionPolicyBinding", "ValidatingAdmissionPolicy", CRD]
    kind = str(obj.get("kind"))
    return order.index(kind) if kind in order else 0


def cedana_objects(kube: KubeClient) -> list[tuple[Resource, dict[str, Any]]]:
    """Every Migration, Restore and Checkpoint in the cluster (in that order: a Migration makes
    a Restore, a Restore reads a Checkpoint); none when the API is not installed."""
    from kubectl_cedana import resources

    found = []
    for resource in (MIGRATION_RESOURCE, RESTORE_RESOURCE, CHECKPOINT_RESOURCE):
        try:
            found += [(resource, o) for o in resources.list_objects(kube, resource, None)]
        except HelperNotInstalled:
            continue
    return found


def _count_objects(objects: list[tuple[Resource, dict[str, Any]]]) -> dict[str, int]:
    counted: dict[str, int] = {}
    for resource, _obj in objects:
        counted[resource.qualified] = counted.get(resource.qualified, 0) + 1
    return counted


def purge_objects(kube: KubeClient, objects: list[tuple[Resource, dict[str, Any]]], *,
                  timeout: float, progress: ProgressFn) -> None:
    """Delete every cedana.io object while the helpers still run, and wait until they are
    gone: a Checkpoint goes only once its node's helper has deleted its data and removed
    the finalizer."""
    from kubectl_cedana import resources

    for resource, obj in objects:
        progress(f"deleting {resources.display(resource, obj)}")
        resources.delete(kube, resource, resources.namespace_of(obj), resources.name_of(obj))
    deadline = time.monotonic() + timeout
    while True:
        left = cedana_objects(kube)
        if not left:
            return
        progress(f"waiting for {len(left)} cedana.io object(s) to go (the helpers delete "
                 "the checkpoints' data first)")
        if time.monotonic() >= deadline:
            held = [o for _r, o in left if (o["metadata"].get("finalizers") or [])]
            names = ", ".join(f"{r.singular} {resources.namespace_of(o)}/"
                              f"{resources.name_of(o)}" for r, o in left[:5])
            raise OperationTimeout(
                f"{len(left)} cedana.io object(s) still there after {timeout:.0f}s "
                f"({names}{', ...' if len(left) > 5 else ''}); nothing else was uninstalled",
                hint=(f"{len(held)} held by finalizer {CHECKPOINT_DATA_FINALIZER}: the helper "
                      "of their node deletes their data first; is it running? kubectl -n "
                      f"{HELPER_NAMESPACE} get pods -o wide. To give the data up: kubectl "
                      "patch checkpoint NAME -n NS --type=merge -p "
                      "'{\"metadata\":{\"finalizers\":null}}'"))
        time.sleep(POLL_SECONDS)


def uninstall(kube: KubeClient, *, dry_run: bool = False, wait: bool = True,
              timeout: float = 120.0, purge: bool = False,
              progress: ProgressFn | None = None) -> list[dict[str, Any]]:
    """Delete what `install` created. Without `purge` the cedana.io API stays (the CRDs, the
    admission policy and the users' ClusterRoles) and with it every Checkpoint, Restore and
    Migration: deleting a Checkpoint needs its node's helper to delete its data, and objects
    left without admission could be made that the helpers would act on once reinstalled.
    With `purge` every such object is deleted first (waiting for the helpers), then all."""
    progress = progress or (lambda _text: None)
    objects = sorted(installed_objects(kube), key=_deletion_order)
    kept = [] if purge else [o for o in objects if is_api_object(o)]
    doomed = [o for o in objects if not any(o is k for k in kept)]
    cedana = cedana_objects(kube) if objects else []
    results = []
    if purge and cedana:
        from kubectl_cedana import resources

        for resource, obj in cedana:
            meta = obj["metadata"]
            results.append({"kind": resource.kind, "name": meta["name"],
                            "namespace": meta.get("namespace", ""),
                            "object": resources.display(resource, obj), "action": "deleted",
                            "note": ""})
        if not dry_run:
            purge_objects(kube, cedana, timeout=timeout, progress=progress)
    counts = _count_objects(cedana)
    for obj in kept:
        meta = obj["metadata"]
        held = counts.get(meta["name"], 0) if obj["kind"] == CRD else 0
        results.append({"kind": obj["kind"], "name": meta["name"],
                        "namespace": meta.get("namespace", ""), "object": display_name(obj),
                        "action": "kept",
                        "note": f"{held} object(s); --purge deletes them" if held else ""})
    for obj in doomed:
        meta = obj["metadata"]
        entry = {"kind": obj["kind"], "name": meta["name"],
                 "namespace": meta.get("namespace", ""), "object": display_name(obj),
                 "action": "deleted", "note": ""}
        if not dry_run:
            progress(f"deleting {display_name(obj)}")
            # Foreground for the DaemonSet: it is gone only once its pods are
            query = {"propagationPolicy": "Foreground"} if obj["kind"] == "DaemonSet" else None
            try:
                kube.request("DELETE", object_path(obj), query=query)
            except ApiNotFound:
                pass
        results.append(entry)
    if wait and not dry_run and doomed:
        _wait_gone(kube, doomed, timeout, progress)
    return results


def _wait_gone(kube: KubeClient, objects: list[dict[str, Any]], timeout: float,
               progress: ProgressFn) -> None:
    deadline = time.monotonic() + timeout
    pending = list(objects)
    while True:
        pending = [o for o in pending if _get_or_none(kube, object_path(o)) is not None]
        pods = kube.list_pods(None, label_selector=PART_OF_SELECTOR)
        if not pending and not pods:
            return
        left = [display_name(o) for o in pending] + [f"pod/{p['metadata']['name']}" for p in pods]
        progress(f"waiting for {len(left)} object(s) to go: {', '.join(left[:3])}")
        if time.monotonic() >= deadline:
            raise OperationTimeout(f"still present after {timeout:.0f}s: {', '.join(left)}")
        time.sleep(POLL_SECONDS)


__all__ = ["DEFAULT_RUNTIME", "HELPER_NAMESPACE", "RUNTIMES", "SIGNING_SECRET", "apply_manifests",
           "default_image", "ensure_signing_key", "load_manifests", "render_manifests",
           "uninstall", "wait_daemonset_ready", "wait_established"]
