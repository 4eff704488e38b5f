"""The cedana.io objects (Checkpoint, Restore, Migration) and the pods the helper makes or
removes for them, through the Kubernetes API with the helper's service account.

Every call has a time limit; a watch ends after `WATCH_TIMEOUT_S` (the caller lists and watches
again). Objects are plain dicts, as the API server sends them."""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

from kubectl_cedana import contract
from sidecar.kube.api import REQUEST_TIMEOUT_S

log = logging.getLogger(__name__)

#: the API server ends a watch after this long; the reconciler lists and watches again
WATCH_TIMEOUT_S = 240


class Conflict(Exception):
    """The object changed since it was read (409): read it again."""


class Gone(Exception):
    """The object (or the watch's resource version) no longer exists (404/410)."""


def _as_dict(value: Any) -> dict[str, Any]:
    return dict(value)


def _raise_for(exc: Any) -> None:
    status = getattr(exc, "status", None)
    if status == 409:
        raise Conflict(str(getattr(exc, "reason", exc))) from exc
    if status in (404, 410):
        raise Gone(str(getattr(exc, "reason", exc))) from exc
    raise exc


class CedanaObjects:
    """Calls on the cedana.io resources and on pods, for the reconcilers."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client  # imported here: the REST-only helper starts light

        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)

    # -- cedana.io objects ------------------------------------------------------------------
    def list_all(self, plural: str, label_selector: str) -> tuple[list[dict[str, Any]], str]:
        """Every object of that kind in every namespace matching the selector, and the list's
        resource version (to watch from)."""
        answer: Any = self.custom.list_cluster_custom_object(
            contract.API_GROUP, contract.API_VERSION, plural, label_selector=label_selector,
            _request_timeout=REQUEST_TIMEOUT_S * 3)
        return list(answer.get("items") or []), str(answer["metadata"]["resourceVersion"])

    def watch(self, plural: str, label_selector: str, resource_version: str,
              timeout_s: int = WATCH_TIMEOUT_S) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event type, object) from `resource_version` on; ends after `timeout_s` (bookmarks
        left out). Gone when the resource version is too old (list again)."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        stream = watch.Watch()
        try:
            for event in stream.stream(
                    self.custom.list_cluster_custom_object, contract.API_GROUP,
                    contract.API_VERSION, plural, label_selector=label_selector,
                    resource_version=resource_version,
                    timeout_seconds=timeout_s, allow_watch_bookmarks=True,
                    _request_timeout=timeout_s + 30):
                kind, obj = str(event["type"]), event["raw_object"]
                if kind == "ERROR":
                    if (obj or {}).get("code") == 410:
                        raise Gone("watch resource version expired")
                    raise RuntimeError(f"watch error: {obj}")
                if kind != "BOOKMARK":
                    yield kind, obj
        except ApiException as exc:
            _raise_for(exc)
        finally:
            stream.stop()

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException
        try:
            return _as_dict(self.custom.get_namespaced_custom_object(
                contract.API_GROUP, contract.API_VERSION, namespace, plural, name,
                _request_timeout=REQUEST_TIMEOUT_S))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def find(self, plural: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        answer: Any = self.custom.list_namespaced_custom_object(
            contract.API_GROUP, contract.API_VERSION, namespace, plural,
            label_selector=label_selector, _request_timeout=REQUEST_TIMEOUT_S)
        return list(answer.get("items") or [])

    def patch_meta(self, plural: str, obj: dict[str, Any],
                   meta: dict[str, Any]) -> dict[str, Any]:
        """Merge `meta` into the object's metadata, only if it is unchanged since it was read
        (resourceVersion precondition): Conflict otherwise."""
        from kubernetes.client.exceptions import ApiException
        md = obj["metadata"]
        body = {"metadata": {**meta, "resourceVersion": md["resourceVersion"]}}
        try:
            return _as_dict(self.custom.patch_namespaced_custom_object(
                contract.API_GROUP, contract.API_VERSION, md["namespace"], plural, md["name"], body,
                _request_timeout=REQUEST_TIMEOUT_S))
        except ApiException as exc:
            _raise_for(exc)
            raise

    def set_finalizers(self, plural: str, obj: dict[str, Any],
                       finalizers: list[str]) -> dict[str, Any]:
        return self.patch_meta(plural, obj, {"finalizers": finalizers})

    def patch_status(self, plural: str, obj: dict[str, Any], status: dict[str, Any],
                     *, precondition: bool = False) -> dict[str, Any]:
        """Merge `status` into the object's status (the status subresource)."""
        from kubernetes.client.exceptions import ApiException
        md = obj["metadata"]
        body: dict[str, Any] = {"status": status}
        if precondition:
            body["metadata"] = {"resourceVersion": md["resourceVersion"]}
        try:
            return _as_dict(self.custom.patch_namespaced_custom_object_status(
                contract.API_GROUP, contract.API_VERSION, md["namespace"], plural, md["name"], body,
                _request_timeout=REQUEST_TIMEOUT_S))
        except ApiException as exc:
            _raise_for(exc)
            raise

    def create(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return _as_dict(self.custom.create_namespaced_custom_object(
            contract.API_GROUP, contract.API_VERSION, namespace, plural, body,
            _request_timeout=REQUEST_TIMEOUT_S))

    # -- pods ---------------------------------------------------------------------------------
    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException
        try:
            pod: Any = self.core.read_namespaced_pod(name, namespace, _preload_content=False,
                                                    _request_timeout=REQUEST_TIMEOUT_S)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(json.loads(pod.data))

    def create_pod(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException
        try:
            pod: Any = self.core.create_namespaced_pod(namespace, body,  # type: ignore[arg-type]
                                                      _preload_content=False,
                                                      _request_timeout=REQUEST_TIMEOUT_S)
        except ApiException as exc:
            _raise_for(exc)
            raise
        return dict(json.loads(pod.data))

    def patch_pod(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        """A JSON merge patch of the pod; None when there is no such pod."""
        from kubernetes.client.exceptions import ApiException
        try:
            pod: Any = self.core.patch_namespaced_pod(
                name, namespace, patch, _content_type="application/merge-patch+json",
                _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S)
        except ApiException as exc:
            if exc.status == 404:
                return None
            _raise_for(exc)
            raise
        return dict(json.loads(pod.data))

    def delete_pod(self, namespace: str, name: str, grace_period_s: int | None = None) -> None:
        from kubernetes.client.exceptions import ApiException
        try:
            if grace_period_s is None:
                self.core.delete_namespaced_pod(name, namespace,
                                                _request_timeout=REQUEST_TIMEOUT_S)
            else:
                self.core.delete_namespaced_pod(name, namespace,
                                                grace_period_seconds=grace_period_s,
                                                _request_timeout=REQUEST_TIMEOUT_S)
        except ApiException as exc:
            if exc.status != 404:
                raise
