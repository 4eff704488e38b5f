"""The helper's own access to the Kubernetes API, with its service account (in a pod) or a
kubeconfig (a helper run as a host process): Events on pods, pod annotations, and the API
clients other modules need (reviews of callers).

Everything here is best effort for Events and annotations: a checkpoint never fails because an
Event could not be written; the failure is logged.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

COMPONENT = "cedana-helper"
SA_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
#: every call to the API server: a write of an Event waits at most this long
REQUEST_TIMEOUT_S = 10.0
#: Events not yet written: beyond this many, new ones are dropped (and logged)
EVENT_BACKLOG = 256


class KubeAPI:
    def __init__(self, api_client: Any, node_name: str) -> None:
        self.api_client = api_client
        self.node_name = node_name
        # Events are written by one thread of their own, in order, after the operation has
        # answered: two API calls (~20-30 ms) that no checkpoint or restore waits for
        self._events: queue.Queue[Callable[[], None]] = queue.Queue(EVENT_BACKLOG)
        threading.Thread(target=self._write_events, name="events", daemon=True).start()

    @classmethod
    def connect(cls, kubeconfig: Path | None, node_name: str) -> KubeAPI | None:
        """The API as this helper may use it, or None when it has no credentials at all."""
        from kubernetes import client, config  # imported here: start-up stays light

        try:
            if kubeconfig is not None:
                api_client = config.new_client_from_config(config_file=str(kubeconfig))
            elif SA_TOKEN.exists() and os.environ.get("KUBERNETES_SERVICE_HOST"):
                configuration = client.Configuration()
                config.load_incluster_config(client_configuration=configuration)
                api_client = client.ApiClient(configuration)
            else:
                return None
        except Exception as exc:  # noqa: BLE001 - any config problem means "no API"
            log.warning("no Kubernetes API for events and caller checks: %s", exc)
            return None
        return cls(api_client, node_name)

    @property
    def core(self) -> Any:
        from kubernetes import client
        return client.CoreV1Api(self.api_client)

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException
        try:
            pod = self.core.read_namespaced_pod(name, namespace, _preload_content=False,
                                               _request_timeout=REQUEST_TIMEOUT_S)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        import json
        return dict(json.loads(pod.data))

    def event(self, namespace: str, pod: str, reason: str, message: str, *,
              warning: bool = False) -> None:
        """Record an Event on a pod (`kubectl describe pod` shows it), soon: queued for the
        Event thread, so that the operation's answer does not wait for it."""
        def write() -> None:
            self.write_event(namespace, pod, reason, message, warning=warning)

        try:
            self._events.put_nowait(write)
        except queue.Full:
            log.warning("too many Events waiting: %s on pod %s/%s not recorded", reason,
                        namespace, pod)

    def _write_events(self) -> None:
        while True:
            self._events.get()()  # write_event never raises

    def write_event(self, namespace: str, pod: str, reason: str, message: str, *,
                    warning: bool = False) -> bool:
        """Write an Event on a pod now; False if it failed (logged)."""
        try:
            found = self.get_pod(namespace, pod)
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            body = {
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"generateName": f"{pod}.", "namespace": namespace},
                "involvedObject": {"kind": "Pod", "namespace": namespace, "name": pod,
                                   "apiVersion": "v1",
                                   "uid": ((found or {}).get("metadata") or {}).get("uid", "")},
                "reason": reason, "message": message[:1024],
                "type": "Warning" if warning else "Normal",
                "source": {"component": COMPONENT, "host": self.node_name},
                "reportingComponent": COMPONENT, "reportingInstance": self.node_name,
                "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            }
            self.core.create_namespaced_event(namespace, body,
                                              _request_timeout=REQUEST_TIMEOUT_S)
            return True
        except Exception as exc:  # noqa: BLE001 - events are best effort
            log.warning("could not record event %s on pod %s/%s: %s", reason, namespace, pod,
                        exc)
            return False
