"""`kubectl cedana doctor`: is everything in place for checkpoint and restore to work?"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubectl_cedana.contract import HELPER_NAME, HELPER_NAMESPACE
from kubectl_cedana.errors import ApiNotFound, CedanaError, PermissionDenied
from kubectl_cedana.helper import (
    HelperClient,
    HelperPod,
    gather,
    list_helper_pods,
)
from kubectl_cedana.install import daemonset_progress
from kubectl_cedana.kube import KubeClient

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass(frozen=True)
class Need:
    """One permission the plugin's user needs, and what for."""

    verb: str
    resource: str
    namespace: str
    subresource: str = ""
    why: str = ""
    required: bool = True

    def words(self) -> str:
        what = self.resource + (f"/{self.subresource}" if self.subresource else "")
        where = f" in namespace {self.namespace}" if self.namespace else \
            " (cluster)" if self.resource == "nodes" else " (all namespaces)"
        return f"{self.verb} {what}{where}"


def user_needs(namespace: str) -> list[Need]:
    """What `checkpoint`, `restore` and `migrate` do with the user's credentials."""
    return [
        Need("get", "pods", namespace, why="resolve pods and containers"),
        Need("create", "pods", namespace, why="create placeholder pods (restore --new-pod, "
                                              "migrate)"),
        Need("delete", "pods", namespace, why="remove placeholders on failure, "
                                              "migrate --delete-source"),
        Need("patch", "pods", namespace, why="migrate: record the checkpoint on the new pod",
             required=False),
        Need("list", "pods", HELPER_NAMESPACE, why="find the helper pod of a node"),
        Need("get", "pods", HELPER_NAMESPACE, "proxy", why="list, version, checkpoints"),
        Need("create", "pods", HELPER_NAMESPACE, "proxy", why="checkpoint, restore"),
        Need("delete", "pods", HELPER_NAMESPACE, "proxy", why="checkpoints rm"),
        Need("list", "pods", "", why="list -A", required=False),
        Need("list", "nodes", "", why="doctor: every node has a helper", required=False),
    ]


def check(name: str, scope: str, result: str, detail: str) -> dict[str, str]:
    return {"check": name, "scope": scope, "result": result, "detail": detail}


def _check_api(kube: KubeClient) -> dict[str, str]:
    try:
        version = kube.server_version()
    except CedanaError as exc:
        return check("api-server", kube.host, FAIL, exc.one_line())
    return check("api-server", kube.host, OK, f"Kubernetes {version.get('gitVersion', '?')}")


def _check_rbac(kube: KubeClient, namespace: str) -> list[dict[str, str]]:
    rows = []
    for need in user_needs(namespace):
        try:
            allowed, _reason = kube.access_review(need.verb, need.resource,
                                                  namespace=need.namespace,
                                                  subresource=need.subresource)
        except CedanaError as exc:
            rows.append(check("rbac", need.words(), WARN, f"cannot ask: {exc.one_line()}"))
            continue
        result = OK if allowed else (FAIL if need.required else WARN)
        rows.append(check("rbac", need.words(), result,
                          f"{'allowed' if allowed else 'denied'}: {need.why}"))
    return rows


def _check_daemonset(kube: KubeClient) -> dict[str, str]:
    path = f"/apis/apps/v1/namespaces/{HELPER_NAMESPACE}/daemonsets/{HELPER_NAME}"
    scope = f"{HELPER_NAMESPACE}/{HELPER_NAME}"
    try:
        daemonset = kube.request("GET", path)
    except ApiNotFound:
        return check("daemonset", scope, FAIL, "not installed: run `kubectl cedana install`")
    except CedanaError as exc:
        return check("daemonset", scope, FAIL, exc.one_line())
    done, ready, desired = daemonset_progress(daemonset)
    image = daemonset["spec"]["template"]["spec"]["containers"][0].get("image", "")
    return check("daemonset", scope, OK if done else FAIL,
                 f"{ready}/{desired} ready, image {image}")


def _node_names(kube: KubeClient, helpers: list[HelperPod]
                ) -> tuple[list[dict[str, Any]], str | None]:
    try:
        return kube.list_nodes(), None
    except PermissionDenied as exc:
        nodes = [{"metadata": {"name": n}, "status": {}} for n in sorted({h.node
                                                                           for h in helpers})]
        return nodes, exc.one_line()


def _check_node(kube: KubeClient, node: dict[str, Any],
                helpers: list[HelperPod]) -> list[dict[str, str]]:
    name = node["metadata"]["name"]
    rows = []
    runtime = ((node.get("status") or {}).get("nodeInfo") or {}).get(
        "containerRuntimeVersion", "")
    if runtime:
        rows.append(check("runtime", name, OK if runtime.startswith("containerd://") else WARN,
                          runtime if runtime.startswith("containerd://") else
                          f"{runtime}: the helper is set up for containerd's runc root"))
    mine = [h for h in helpers if h.node == name]
    if not mine:
        rows.append(check("helper", name, FAIL, "no helper pod on this node"))
        return rows
    helper = next((h for h in mine if h.ready), mine[0])
    if not helper.ready:
        rows.append(check("helper", name, FAIL, f"pod {helper.name} not ready "
                                                f"(phase {helper.phase})"))
        return rows
    client = HelperClient(kube, helper)
    try:
        client.health()
        version = client.version()
    except CedanaError as exc:
        rows.append(check("helper", name, FAIL, f"pod {helper.name}: {exc.one_line()}"))
        return rows
    rows.append(check("helper", name, OK, f"pod {helper.name}, helper "
                                          f"{version.get('helper', '?')}, runc "
                                          f"{version.get('runc', '?')}"))
    criu = str(version.get("criu") or "")
    if criu:
        rows.append(check("criu", name, OK,
                          f"CRIU {criu} (the helper does not run `criu check` yet)"))
    else:
        rows.append(check("criu", name, FAIL, "the helper reports no CRIU"))
    return rows


def run_doctor(kube: KubeClient) -> list[dict[str, str]]:
    rows = [_check_api(kube)]
    if rows[0]["result"] == FAIL:
        return rows
    rows.extend(_check_rbac(kube, kube.namespace))
    rows.append(_check_daemonset(kube))
    try:
        helpers = list_helper_pods(kube)
    except CedanaError as exc:
        rows.append(check("helper", HELPER_NAMESPACE, FAIL, exc.one_line()))
        return rows
    nodes, problem = _node_names(kube, helpers)
    if problem:
        rows.append(check("nodes", "cluster", WARN,
                          f"only nodes with a helper were checked: {problem}"))
    found, _errors = gather(
        lambda n: _check_node(kube, n, helpers), nodes,
        failed=lambda n, error: [check("helper", n["metadata"]["name"], FAIL, error.one_line())])
    return rows + found
