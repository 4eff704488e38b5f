"""`kubectl cedana doctor`: is everything in place for checkpoint, restore and migrate?

Each check is a row: what, where, ok|warn|fail, and the detail with the fix. What a user may
not read (the CRDs, the admission policy, the DaemonSet are cluster-level objects most users
cannot see) is a warning saying so, never a failure: the checks of the user's own rights are
the ones that decide whether their commands can work.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kubectl_cedana.contract import (
    API_GROUP,
    GROUP_VERSION,
    HELPER_NAME,
    HELPER_NAMESPACE,
    HELPER_SELECTOR,
    RESOURCES,
)
from kubectl_cedana.errors import ApiNotFound, CedanaError, PermissionDenied
from kubectl_cedana.install import crd_established, daemonset_progress
from kubectl_cedana.kube import KubeClient

OK, WARN, FAIL = "ok", "warn", "fail"
INSTALL_FIX = "run `kubectl cedana install` (cluster admin)"
#: ValidatingAdmissionPolicy is GA (admissionregistration.k8s.io/v1) from this version on
MIN_KUBERNETES = (1, 30)
POLICY = "cedana.io"  # the ValidatingAdmissionPolicy and its binding (admission.yaml)
HELPER_PODS_POLICY = "cedana.io-helper-pods"  # what the helpers may patch on pods


@dataclass(frozen=True)
class Need:
    """One permission the plugin's user needs, and what for."""

    verb: str
    resource: str
    namespace: str
    group: str = ""
    why: str = ""
    required: bool = True

    def words(self) -> str:
        what = self.resource + (f".{self.group}" if self.group else "")
        where = f" in namespace {self.namespace}" if self.namespace else " (all namespaces)"
        return f"{self.verb} {what}{where}"


def user_needs(namespace: str) -> list[Need]:
    """What `checkpoint`, `restore`, `migrate` and `checkpoints` do with the user's
    credentials (the ClusterRoles of deploy/base/rbac.yaml grant all of it)."""
    needs = [Need("get", "pods", namespace, why="resolve the pod, its container and node")]
    for resource in RESOURCES:
        needs.append(Need("create", resource.plural, namespace, API_GROUP,
                          why=f"{resource.singular} (the command creates one)"))
        needs.append(Need("watch", resource.plural, namespace, API_GROUP,
                          why="follow its progress"))
    needs += [
        Need("list", "checkpoints", namespace, API_GROUP, why="checkpoints ls, prune"),
        Need("delete", "checkpoints", namespace, API_GROUP, why="checkpoints rm, prune"),
        Need("create", "pods", namespace, why="restore --new-pod and migrate make a pod "
                                              "(admission checks it is yours to make)"),
        Need("delete", "pods", namespace, why="migrate --delete-source", required=False),
        Need("list", "pods", "", why="list -A", required=False),
    ]
    return needs


def check(name: str, scope: str, result: str, detail: str) -> dict[str, str]:
    return {"check": name, "scope": scope, "result": result, "detail": detail}


def _version_tuple(info: dict[str, Any]) -> tuple[int, int] | None:
    major = re.match(r"\d+", str(info.get("major") or ""))
    minor = re.match(r"\d+", str(info.get("minor") or ""))
    if not (major and minor):
        found = re.match(r"v?(\d+)\.(\d+)", str(info.get("gitVersion") or ""))
        return (int(found.group(1)), int(found.group(2))) if found else None
    return int(major.group(0)), int(minor.group(0))


def _check_api(kube: KubeClient) -> dict[str, str]:
    try:
        version = kube.server_version()
    except CedanaError as exc:
        return check("api-server", kube.host, FAIL, exc.one_line())
    shown = f"Kubernetes {version.get('gitVersion', '?')}"
    found = _version_tuple(version)
    if found is not None and found < MIN_KUBERNETES:
        return check("api-server", kube.host, FAIL,
                     f"{shown}: needs {MIN_KUBERNETES[0]}.{MIN_KUBERNETES[1]} or newer "
                     "(ValidatingAdmissionPolicy v1)")
    return check("api-server", kube.host, OK, shown)


def _served(kube: KubeClient) -> set[str]:
    """The cedana.io resources the API server serves (discovery, readable by everyone)."""
    try:
        listing = kube.request("GET", f"/apis/{GROUP_VERSION}") or {}
    except ApiNotFound:
        return set()
    return {str(r.get("name")) for r in listing.get("resources") or []}


def _check_crds(kube: KubeClient) -> list[dict[str, str]]:
    rows = []
    served: set[str] | None = None
    for resource in RESOURCES:
        path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{resource.qualified}"
        scope = f"crd/{resource.qualified}"
        try:
            done, why = crd_established(dict(kube.request("GET", path)))
        except ApiNotFound:
            rows.append(check("crd", scope, FAIL, f"not installed: {INSTALL_FIX}"))
            continue
        except PermissionDenied:  # most users may not read CRDs: ask discovery instead
            served = _served(kube) if served is None else served
            rows.append(check("crd", scope, OK if resource.plural in served else FAIL,
                              "served (established)" if resource.plural in served else
                              f"not served by the API server: {INSTALL_FIX}"))
            continue
        except CedanaError as exc:
            rows.append(check("crd", scope, FAIL, exc.one_line()))
            continue
        rows.append(check("crd", scope, OK if done else FAIL,
                          "established" if done else f"{why}: see kubectl describe crd "
                                                     f"{resource.qualified}"))
    return rows


#: what goes unchecked without each admission policy (admission.yaml)
POLICIES = {POLICY: "cedana.io/requested-by and cross-namespace restores go unchecked",
            HELPER_PODS_POLICY: "nothing limits the helpers' pod patches to taking a place"}


def _check_admission(kube: KubeClient) -> list[dict[str, str]]:
    rows = []
    base = "/apis/admissionregistration.k8s.io/v1"
    for name, unchecked in POLICIES.items():
        for plural, singular, kind in (
                ("validatingadmissionpolicies", "validatingadmissionpolicy", "policy"),
                ("validatingadmissionpolicybindings", "validatingadmissionpolicybinding",
                 "binding")):
            scope = f"{singular}/{name}"
            try:
                kube.request("GET", f"{base}/{plural}/{name}")
            except ApiNotFound:
                rows.append(check("admission", scope, FAIL,
                                  f"no admission {kind}: {unchecked}; {INSTALL_FIX}"))
                continue
            except PermissionDenied:
                rows.append(check("admission", scope, WARN,
                                  "you may not read admission policies: ask an administrator "
                                  "to run `kubectl cedana doctor`"))
                continue
            except CedanaError as exc:
                rows.append(check("admission", scope, FAIL, exc.one_line()))
                continue
            rows.append(check("admission", scope, OK, "present"))
    return rows


def _check_daemonset(kube: KubeClient) -> dict[str, str]:
    path = f"/apis/apps/v1/namespaces/{HELPER_NAMESPACE}/daemonsets/{HELPER_NAME}"
    scope = f"{HELPER_NAMESPACE}/{HELPER_NAME}"
    try:
        daemonset = kube.request("GET", path)
    except ApiNotFound:
        return check("daemonset", scope, FAIL, f"not installed: {INSTALL_FIX}")
    except PermissionDenied:
        return check("daemonset", scope, WARN, "you may not read it: ask an administrator "
                                               "to run `kubectl cedana doctor`")
    except CedanaError as exc:
        return check("daemonset", scope, FAIL, exc.one_line())
    done, ready, desired = daemonset_progress(daemonset)
    image = daemonset["spec"]["template"]["spec"]["containers"][0].get("image", "")
    detail = f"ready on {ready}/{desired} nodes, image {image}"
    if not done:
        detail += (f": see kubectl -n {HELPER_NAMESPACE} get pods -l {HELPER_SELECTOR} "
                   "-o wide")
    return check("daemonset", scope, OK if done else FAIL, detail)


def _check_nodes(kube: KubeClient) -> list[dict[str, str]]:
    """A ready helper pod on every node (warn when the user may not list nodes or pods)."""
    try:
        helpers = kube.list_pods(HELPER_NAMESPACE, label_selector=HELPER_SELECTOR)
        nodes = kube.list_nodes()
    except PermissionDenied as exc:
        return [check("helper", "nodes", WARN, f"cannot check each node: {exc.permission} "
                                               "is not allowed to you")]
    except CedanaError as exc:
        return [check("helper", "nodes", WARN, exc.one_line())]
    rows = []
    for node in nodes:
        name = str(node["metadata"]["name"])
        mine = [p for p in helpers if (p.get("spec") or {}).get("nodeName") == name]
        ready = [p for p in mine if any(c.get("type") == "Ready" and c.get("status") == "True"
                                        for c in (p.get("status") or {}).get("conditions")
                                        or [])]
        if ready:
            rows.append(check("helper", name, OK, f"pod {ready[0]['metadata']['name']} ready"))
        elif mine:
            pod = mine[0]["metadata"]["name"]
            rows.append(check("helper", name, FAIL, f"pod {pod} not ready: see kubectl -n "
                                                    f"{HELPER_NAMESPACE} describe pod {pod}"))
        else:
            rows.append(check("helper", name, FAIL,
                              "no helper pod: objects for this node stay Pending (a taint "
                              "the DaemonSet does not tolerate?)"))
        runtime = ((node.get("status") or {}).get("nodeInfo") or {}).get(
            "containerRuntimeVersion", "")
        if runtime and not runtime.startswith(("containerd://", "cri-o://")):
            rows.append(check("runtime", name, WARN,
                              f"{runtime}: install with --runtime for it (k3s)"))
    return rows


def _rbac_fix(user: str, namespace: str) -> str:
    if user.startswith("system:serviceaccount:"):
        who = "--serviceaccount=" + ":".join(user.split(":")[2:4])
    else:
        who = f"--user={user or 'YOU'}"
    return (f"ask for edit in {namespace}, or: kubectl -n {namespace} create rolebinding "
            f"cedana --clusterrole=cedana-checkpointer {who}")


def _check_rbac(kube: KubeClient, namespace: str) -> list[dict[str, str]]:
    rows = []
    try:
        user = kube.user_name()
    except CedanaError:
        user = ""
    fix = _rbac_fix(user, namespace)
    for need in user_needs(namespace):
        try:
            allowed, _reason = kube.access_review(need.verb, need.resource, group=need.group,
                                                  namespace=need.namespace)
        except CedanaError as exc:
            rows.append(check("rbac", need.words(), WARN, f"cannot ask: {exc.one_line()}"))
            continue
        result = OK if allowed else (FAIL if need.required else WARN)
        detail = f"{'allowed' if allowed else 'denied'}: {need.why}"
        if not allowed:
            detail += f"; {fix}"
        rows.append(check("rbac", need.words(), result, detail))
    return rows


def run_doctor(kube: KubeClient) -> list[dict[str, str]]:
    rows = [_check_api(kube)]
    if rows[0]["result"] == FAIL and "needs" not in rows[0]["detail"]:
        return rows  # unreachable: nothing else can be asked
    rows += _check_crds(kube)
    rows += _check_admission(kube)
    rows.append(_check_daemonset(kube))
    rows += _check_nodes(kube)
    rows += _check_rbac(kube, kube.namespace)
    return rows
