"""The product documentation's usage section (../shared/seed/), played in order with the lab's
names filled in: `kubectl port-forward` to a helper pod, then `curl` with a bearer token for
/list (the containerd root), /checkpoint with a /tmp/ckpt-... path and leave_running, a
restore pod put to sleep with the document's own command, /restore from the same path, and the
rootfs checkpoint and restore routes. Nothing of the plugin is used past installing the helper."""
from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.lab import (
    CONTAINERD_SOCK,
    REPO,
    RUNC_ROOT,
    Lab,
    counter_pod,
    helper_daemonset_lock,
    install_helpers,
    pod_manifest,
    port_forward,
    run,
    service_account_token,
)

VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"
HELPER_NS = "cedana-system"
#: the document's command for a pod that waits to be restored into
SEED_SLEEP = ["/bin/sh", "-c", "while true; do sleep infinity; done;"]


@pytest.fixture(scope="module", autouse=True)
def helper_daemonset_is_this_files(lab: Lab) -> Iterator[None]:
    with helper_daemonset_lock():
        install_helpers(lab, "--registry-prefix", f"{lab.registry}/rootfs/{{namespace}}")
        yield


def curl(method: str, url: str, token: str | None, body: Any = None) -> tuple[int, Any]:
    """curl as the document writes it: -X METHOD -H 'Content-Type: application/json' -d BODY."""
    args = ["curl", "-s", "-X", method, "-H", "Content-Type: application/json",
            "-w", "\n%{http_code}", "--max-time", "300"]
    if token is not None:
        args += ["-H", f"Authorization: Bearer {token}"]
    if body is not None:
        args += ["-d", json.dumps(body)]
    out = run([*args, url], timeout=330).stdout
    text, _, status = out.rpartition("\n")
    return int(status), json.loads(text) if text.strip() else None


def _helper_pod(lab: Lab, node: str) -> str:
    pods = json.loads(lab.kubectl("-n", HELPER_NS, "get", "pods", "-l",
                                  "app.kubernetes.io/name=cedana-helper", "-o", "json").stdout)
    names = [p["metadata"]["name"] for p in pods["items"] if p["spec"]["nodeName"] == node
             and not p["metadata"].get("deletionTimestamp")]
    assert names, f"no helper pod on {node}"
    return str(names[0])


def _counts(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"count=(\d+)", text)]


def _registry_tag(lab: Lab, repo: str, tag: str) -> int:
    return requests.head(f"https://{lab.registry}/v2/{repo}/manifests/{tag}",
                         auth=(lab.registry_user, lab.registry_password), verify=lab.ca_cert,
                         headers={"Accept": "application/vnd.oci.image.manifest.v1+json, "
                                            "application/vnd.docker.distribution.manifest.v2+json"},
                         timeout=30).status_code


def test_the_seed_documents_usage_with_curl_and_a_bearer_token(lab: Lab, namespace: str) -> None:
    # the pods: one to checkpoint, one put to sleep with the document's command
    lab.apply([counter_pod("counter", interval_ms=200),
               pod_manifest("restore-pod", SEED_SLEEP)], namespace)
    lab.wait_pod_running(namespace, "counter")
    lab.wait_pod_running(namespace, "restore-pod")
    lab.wait_log(namespace, "counter", r"count=\d\d")
    token = service_account_token(lab, namespace, "operator", "cedana-checkpointer")
    controller = _helper_pod(lab, lab.node_name)  # export CEDANA_CONTROLLER=...
    with port_forward(lab, HELPER_NS, controller, 1324) as url:  # kubectl port-forward ...
        root = RUNC_ROOT  # export ROOT=/run/containerd/runc/k8s.io

        # List Containers in Namespace: GET with the root in a JSON body
        status, listed = curl("GET", f"{url}/list/{namespace}", token, {"root": root})
        assert status == 200, listed
        assert {(c["sandbox_name"], c["container_name"]) for c in listed} == {
            ("counter", "main"), ("restore-pod", "main")}

        # Checkpoint, to the document's CHECKPOINT_PATH=/tmp/ckpt-$(date +%s%N)
        checkpoint_path = f"/tmp/ckpt-{time.time_ns()}"
        before = max(_counts(lab.logs(namespace, "counter")))
        status, made = curl("POST", f"{url}/checkpoint", token, {
            "checkpoint_data": {"container_name": "main", "sandbox_name": "counter",
                                "namespace": namespace, "checkpoint_path": checkpoint_path,
                                "root": root},
            "leave_running": True})
        assert status == 200, made
        assert re.fullmatch(r"[0-9a-f-]{36}", made["checkpoint_id"])
        # a name, not a place: nothing was written where the path points on the node
        assert not Path(checkpoint_path).exists()
        assert "/.by-path/" in made["checkpoint_path"]

        # Restore from the same path into the sleeping pod
        status, restored = curl("POST", f"{url}/restore", token, {
            "checkpoint_data": {"container_name": "main", "sandbox_name": "restore-pod",
                                "namespace": namespace, "checkpoint_path": checkpoint_path,
                                "root": root}})
        assert status == 200, restored
        first = int(lab.wait_log(namespace, "restore-pod", r"count=(\d+)").group(1))
        assert first >= before, (first, before)
        lab.wait_log(namespace, "restore-pod", rf"count={first + 5}\b")
        # the source went on too (leave_running)
        last = max(_counts(lab.logs(namespace, "counter")))
        lab.wait_log(namespace, "counter", rf"count={last + 3}\b")

        # Rootfs Checkpoint: the container's changed files as a layer, pushed to the registry
        lab.apply(pod_manifest("writer", ["/bin/sh", "-c",
                                          "printf 'seed-bytes-42' > /data/seed.txt; "
                                          "while true; do sleep 1; done"]), namespace)
        lab.wait_pod_running(namespace, "writer")
        for _ in range(60):
            if lab.kubectl("-n", namespace, "exec", "writer", "--", "test", "-f",
                           "/data/seed.txt", check=False).returncode == 0:
                break
            time.sleep(0.5)
        tag = uuid.uuid4().hex[:8]
        image_ref = f"{lab.registry}/rootfs/{namespace}:{tag}"
        status, committed = curl("POST", f"{url}/checkpoint/rootfs", token, {
            "container_name": "main", "sandbox_name": "writer", "namespace": namespace,
            "address": CONTAINERD_SOCK, "image_ref": image_ref})
        assert status == 200, committed
        assert _registry_tag(lab, f"rootfs/{namespace}", tag) == 200

        # Rootfs Restore: those files applied onto another pod of the same image
        lab.apply(pod_manifest("fresh", SEED_SLEEP), namespace)
        lab.wait_pod_running(namespace, "fresh")
        status, applied = curl("POST", f"{url}/restore/rootfs", token, {
            "sandbox_name": "fresh", "container_name": "main", "namespace": namespace,
            "address": CONTAINERD_SOCK, "image_ref": image_ref})
        assert status == 200, applied
        content = lab.kubectl("-n", namespace, "exec", "fresh", "--", "cat", "/data/seed.txt")
        assert content.stdout == "seed-bytes-42"


def test_the_port_wants_a_token_with_the_permission(lab: Lab, namespace: str) -> None:
    """No token: 401. A token without the permission: 403 naming it. Same rules as the
    resources (one policy): the checkpointer role's rights, asked by SubjectAccessReview."""
    lab.apply(counter_pod("counter"), namespace)
    lab.wait_pod_running(namespace, "counter")
    nobody = service_account_token(lab, namespace, "nobody")
    viewer = service_account_token(lab, namespace, "viewer", "view")
    body = {"checkpoint_data": {"container_name": "main", "sandbox_name": "counter",
                                "namespace": namespace, "checkpoint_path": "/tmp/ckpt-x",
                                "root": RUNC_ROOT}, "leave_running": True}
    with port_forward(lab, HELPER_NS, _helper_pod(lab, lab.node_name), 1324) as url:
        status, answer = curl("GET", f"{url}/list/{namespace}", None, {"root": RUNC_ROOT})
        assert (status, answer["code"]) == (401, "unauthenticated"), answer
        status, answer = curl("GET", f"{url}/list/{namespace}", "not-a-token", None)
        assert (status, answer["code"]) == (401, "unauthenticated"), answer
        status, answer = curl("GET", f"{url}/list/{namespace}", nobody, None)
        assert (status, answer["code"]) == (403, "forbidden"), answer
        assert answer["permission"] == f"list pods in namespace {namespace}"
        assert answer["user"] == f"system:serviceaccount:{namespace}:nobody"
        # view may list the pods, not checkpoint them
        assert curl("GET", f"{url}/list/{namespace}", viewer, None)[0] == 200
        status, answer = curl("POST", f"{url}/checkpoint", viewer, body)
        assert (status, answer["code"]) == (403, "forbidden"), answer
        assert answer["permission"] == f"create checkpoints.cedana.io in namespace {namespace}"
    # nothing happened: no checkpoint of the pod on the node, the container never stopped
    status = lab.pod(namespace, "counter")["status"]["containerStatuses"][0]
    assert status["restartCount"] == 0 and "running" in status["state"]
