"""Finding the node helper pods and talking to them through the API server's pod proxy.

Every call goes to `/api/v1/namespaces/cedana-system/pods/{pod}:1324/proxy/{route}` with the
user's own credentials, so the API server authorizes it (`pods/proxy` in `cedana-system`).
"""
from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

from kubectl_cedana import contract
from kubectl_cedana.authz import caller_proof
from kubectl_cedana.contract import HELPER_NAMESPACE, HELPER_PORT, HELPER_SELECTOR
from kubectl_cedana.errors import (
    CedanaError,
    HelperFailure,
    HelperNotInstalled,
    HelperReplyError,
)
from kubectl_cedana.kube import KubeClient, Timeout, api_error, is_api_status

INSTALL_HINT = "run `kubectl cedana install`"

#: checkpoint, restore and transfers can take minutes: an hour is longer than the helper's own
#: limits on a dump or a restore (10 min each) plus moving a large checkpoint
LONG_TIMEOUT: Timeout = (10.0, 3600.0)
SHORT_TIMEOUT: Timeout = (10.0, 60.0)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class HelperPod:
    name: str
    node: str
    phase: str
    ready: bool

    @classmethod
    def from_pod(cls, pod: Mapping[str, Any]) -> HelperPod:
        status = pod.get("status") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in status.get("conditions") or [])
        return cls(name=str(pod["metadata"]["name"]),
                   node=str((pod.get("spec") or {}).get("nodeName") or ""),
                   phase=str(status.get("phase") or "Unknown"),
                   ready=ready and not (pod.get("metadata") or {}).get("deletionTimestamp"))


def list_helper_pods(kube: KubeClient, node: str | None = None) -> list[HelperPod]:
    """Helper pods (all nodes, or the one node), the ready ones first per node."""
    field_selector = f"spec.nodeName={node}" if node else ""
    pods = kube.list_pods(HELPER_NAMESPACE, label_selector=HELPER_SELECTOR,
                          field_selector=field_selector)
    helpers = [HelperPod.from_pod(p) for p in pods]
    helpers.sort(key=lambda h: (h.node, not h.ready, h.name))
    return helpers


def one_per_node(helpers: Iterable[HelperPod]) -> list[HelperPod]:
    chosen: dict[str, HelperPod] = {}
    for helper in helpers:  # sorted ready-first per node
        chosen.setdefault(helper.node, helper)
    return [chosen[node] for node in sorted(chosen)]


def find_helper_pod(kube: KubeClient, node: str) -> HelperPod:
    """The ready helper pod on `node` (matched on spec.nodeName, never the hostname label)."""
    helpers = list_helper_pods(kube, node)
    if not helpers:
        raise HelperNotInstalled(f"no cedana helper pod on node {node}", hint=INSTALL_HINT)
    best = helpers[0]
    if not best.ready:
        raise HelperFailure(f"the cedana helper pod {best.name} on node {node} is not ready "
                          f"(phase {best.phase})",
                          hint=f"see: kubectl -n {HELPER_NAMESPACE} describe pod {best.name}")
    return best


def require_helpers(kube: KubeClient) -> list[HelperPod]:
    helpers = one_per_node(list_helper_pods(kube))
    if not helpers:
        raise HelperNotInstalled("no cedana helper pods in the cluster", hint=INSTALL_HINT)
    return helpers


def parallel_map(fn: Callable[[T], R], items: list[T],
                 max_workers: int = 8) -> list[tuple[T, R | None, CedanaError | None]]:
    """fn over items concurrently; each result paired with the CedanaError it raised, if any."""
    results: list[tuple[T, R | None, CedanaError | None]] = []
    if not items:
        return results
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(max_workers, len(items)))
    try:
        futures = [pool.submit(fn, item) for item in items]
        for item, future in zip(items, futures):
            try:
                results.append((item, future.result(), None))
            except CedanaError as exc:
                results.append((item, None, exc))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return results


def gather(ask: Callable[[T], list[R]], items: list[T], *,
           failed: Callable[[T, CedanaError], list[R]] | None = None
           ) -> tuple[list[R], list[CedanaError]]:
    """ask(item) for every item (a helper, a node's namespace) concurrently: every answer's rows
    in the items' order, and the errors of those that failed (`failed` may add rows for them)."""
    rows: list[R] = []
    errors: list[CedanaError] = []
    for item, found, error in parallel_map(ask, items):
        if error is not None:
            errors.append(error)
            rows.extend(failed(item, error) if failed is not None else [])
        else:
            rows.extend(found or [])
    return rows, errors


class HelperClient:
    """The REST contract of one node's helper, reached through the pod proxy."""

    def __init__(self, kube: KubeClient, pod: HelperPod) -> None:
        self.kube = kube
        self.pod = pod

    @property
    def node(self) -> str:
        return self.pod.node

    def proxy_path(self, route: str) -> str:
        return (f"/api/v1/namespaces/{HELPER_NAMESPACE}/pods/{quote(self.pod.name, safe='')}"
                f":{HELPER_PORT}/proxy/{route.lstrip('/')}")

    def call(self, method: str, route: str, *, query: Mapping[str, Any] | None = None,
             body: Any = None, timeout: Timeout = SHORT_TIMEOUT) -> Any:
        path = self.proxy_path(route)
        response = self.kube.send(method, path, query=query, body=body, timeout=timeout,
                                  headers=caller_proof(self.kube).headers(route))
        if response.status < 400:
            return response.json_or_none()
        payload = response.json_or_none()
        if isinstance(payload, dict) and isinstance(payload.get("code"), str):
            raise HelperReplyError(f"helper on node {self.node}: {payload.get('message') or ''}",
                              code=str(payload["code"]), node=self.node,
                              http_status=response.status, body=payload)
        if response.status in (502, 503, 504) or (
                is_api_status(payload) and response.status >= 500):
            detail = payload.get("message") if isinstance(payload, dict) else \
                response.data.decode("utf-8", "replace").strip()
            raise HelperFailure(
                f"cannot reach the cedana helper pod {self.pod.name} on node {self.node} "
                f"through the API server: {detail}",
                hint=f"see: kubectl -n {HELPER_NAMESPACE} logs {self.pod.name}")
        if is_api_status(payload) or response.status in (401, 403):
            raise api_error(method, path, response)
        text = response.data.decode("utf-8", "replace").strip()[:200]
        raise HelperFailure(f"helper on node {self.node} answered HTTP {response.status}: {text}")

    # -- the contract ---------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return dict(self.call("GET", contract.HEALTHZ) or {})

    def version(self) -> dict[str, Any]:
        return dict(self.call("GET", contract.VERSION) or {})

    def list_containers(self, namespace: str, root: str | None = None) -> list[dict[str, Any]]:
        query = {"root": root} if root else None
        return list(self.call("GET", contract.route(contract.LIST, namespace=namespace),
                              query=query) or [])

    def checkpoint(self, *, namespace: str, pod: str, container: str, path: str = "",
                   leave_running: bool = False, root: str | None = None,
                   with_rootfs: bool = True, storage: str | None = None,
                   compression: str | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {"container_name": container, "sandbox_name": pod,
                                "namespace": namespace, "checkpoint_path": path}
        if root:
            data["root"] = root
        body: dict[str, Any] = {"checkpoint_data": data, "leave_running": leave_running,
                                "with_rootfs": with_rootfs}
        if storage:
            body["storage"] = storage
        if compression:
            body["compression"] = compression
        return dict(self.call("POST", contract.CHECKPOINT, body=body, timeout=LONG_TIMEOUT) or {})

    def prune(self, *, max_per_container: int | None, max_total_bytes: int | None,
              dry_run: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"dry_run": dry_run}
        if max_per_container is not None:
            body["max_per_container"] = max_per_container
        if max_total_bytes is not None:
            body["max_total_bytes"] = max_total_bytes
        return dict(self.call("POST", contract.CHECKPOINTS_PRUNE, body=body,
                              timeout=LONG_TIMEOUT) or {})

    def rootfs_checkpoint(self, *, namespace: str, pod: str, container: str, image_ref: str,
                          address: str = "", base_image_ref: str = "") -> dict[str, Any]:
        """containerd nodes: /checkpoint/rootfs; CRI-O nodes (base_image_ref given): .../crio."""
        body: dict[str, Any] = {"container_name": container, "sandbox_name": pod,
                                "namespace": namespace}
        if base_image_ref:
            body.update(image_ref=base_image_ref, new_image_ref=image_ref)
            return dict(self.call("POST", contract.CHECKPOINT_ROOTFS_CRIO, body=body,
                                  timeout=LONG_TIMEOUT) or {})
        body.update(image_ref=image_ref, address=address)
        return dict(self.call("POST", contract.CHECKPOINT_ROOTFS, body=body,
                              timeout=LONG_TIMEOUT) or {})

    def rootfs_restore(self, *, namespace: str, pod: str, container: str, image_ref: str,
                       address: str = "") -> dict[str, Any]:
        body = {"container_name": container, "sandbox_name": pod, "namespace": namespace,
                "image_ref": image_ref, "address": address}
        return dict(self.call("POST", contract.RESTORE_ROOTFS, body=body,
                              timeout=LONG_TIMEOUT) or {})

    def restore(self, *, namespace: str, pod: str, container: str, checkpoint_id: str = "",
                checkpoint_path: str = "", root: str | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {"container_name": container, "sandbox_name": pod,
                                "namespace": namespace}
        if checkpoint_path:
            data["checkpoint_path"] = checkpoint_path
        else:
            data["checkpoint_id"] = checkpoint_id
        if root:
            data["root"] = root
        return dict(self.call("POST", contract.RESTORE, body={"checkpoint_data": data},
                              timeout=LONG_TIMEOUT) or {})

    def checkpoints(self, remote: bool = False) -> list[dict[str, Any]]:
        answer = self.call("GET", contract.CHECKPOINTS,
                           query={"remote": "true"} if remote else None,
                           timeout=LONG_TIMEOUT if remote else SHORT_TIMEOUT) or []
        if isinstance(answer, dict):  # {"checkpoints": [...]}, as the helper answers
            answer = answer.get("checkpoints") or []
        return list(answer)

    def get_checkpoint(self, checkpoint_id: str) -> dict[str, Any]:
        return dict(self.call("GET", contract.route(contract.CHECKPOINT_ENTRY,
                                                     checkpoint_id=checkpoint_id)) or {})

    def delete_checkpoint(self, checkpoint_id: str) -> Any:
        return self.call("DELETE", contract.route(contract.CHECKPOINT_ENTRY,
                                                checkpoint_id=checkpoint_id))
