"""The cedana.io objects at scale and under faults, with plain kubectl: fifty Checkpoints at
once across both nodes all complete (and their data goes with them), and a node helper killed
while it reconciles leaves its object final with a reason, never Running."""
from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.e2e.lab import (
    LAB_DIR,
    REPO,
    Lab,
    counter_pod,
    helper_daemonset_lock,
    install_helpers,
    pod_manifest,
)

VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"
FINAL = ("Succeeded", "Failed")
#: where each node's helper keeps its checkpoints, as the host sees it (hack/lab-node2.sh)
CHECKPOINT_DIRS = {"cedana-lab-node1": Path("/var/lib/cedana/checkpoints"),
                   "cedana-lab-node2": LAB_DIR / "node2" / "checkpoints"}


@pytest.fixture(scope="module", autouse=True)
def installed_helpers(lab: Lab) -> Iterator[None]:
    with helper_daemonset_lock():
        install_helpers(lab, "--registry-prefix", f"{lab.registry}/rootfs/{{namespace}}")
        yield


def _checkpoint(name: str, pod: str) -> dict[str, Any]:
    return {"apiVersion": "cedana.io/v1alpha1", "kind": "Checkpoint",
            "metadata": {"name": name}, "spec": {"podName": pod, "leaveRunning": True}}


def _objects(lab: Lab, namespace: str, plural: str = "checkpoints") -> list[dict[str, Any]]:
    out = lab.kubectl("-n", namespace, "get", f"{plural}.cedana.io", "-o", "json").stdout
    return list(json.loads(out)["items"])


def _wait_final(lab: Lab, namespace: str, count: int, timeout: float) -> list[dict[str, Any]]:
    end = time.monotonic() + timeout
    items: list[dict[str, Any]] = []
    while time.monotonic() < end:
        items = _objects(lab, namespace)
        if len(items) == count and all((o.get("status") or {}).get("phase") in FINAL
                                       for o in items):
            return items
        time.sleep(1)
    phases = sorted((o["metadata"]["name"], (o.get("status") or {}).get("phase"))
                    for o in items)
    raise AssertionError(f"not all {count} Checkpoints final after {timeout}s: {phases}")


def test_fifty_checkpoints_across_both_nodes_all_complete(lab: Lab, namespace: str) -> None:
    pods = []
    for i in range(5):
        pods.append(counter_pod(f"one-{i}", interval_ms=500))
        on_two = counter_pod(f"two-{i}", interval_ms=500)
        on_two["spec"]["nodeName"] = lab.node2_name
        pods.append(on_two)
    lab.apply(pods, namespace)
    for pod in pods:
        lab.wait_pod_running(namespace, pod["metadata"]["name"])
    # fifty at once, five per pod, with no node label: each helper claims its own
    objects = [_checkpoint(f"{pod['metadata']['name']}-{n}", pod["metadata"]["name"])
               for pod in pods for n in range(5)]
    lab.kubectl("-n", namespace, "create", "-f", "-",
                input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    items = _wait_final(lab, namespace, 50, timeout=600)
    failed = [(o["metadata"]["name"], o["status"].get("message")) for o in items
              if o["status"]["phase"] != "Succeeded"]
    assert not failed, failed
    nodes = {o["metadata"]["name"]: o["status"]["node"] for o in items}
    assert {n for name, n in nodes.items() if name.startswith("one-")} == {lab.node_name}
    assert {n for name, n in nodes.items() if name.startswith("two-")} == {lab.node2_name}
    ids = {o["status"]["checkpointID"]: o["status"]["node"] for o in items}
    assert len(ids) == 50
    for checkpoint_id, node in ids.items():  # each on its own node, complete
        assert (CHECKPOINT_DIRS[node] / checkpoint_id / "manifest.json").is_file()
    # the pods never stopped (leaveRunning)
    for pod in pods:
        status = lab.pod(namespace, pod["metadata"]["name"])["status"]["containerStatuses"][0]
        assert status["restartCount"] == 0 and "running" in status["state"]

    # deleting the objects deletes their data on each node (the finalizer)
    lab.kubectl("-n", namespace, "delete", "checkpoints.cedana.io", "--all", "--wait=true",
                "--timeout=300s", timeout=330)
    assert _objects(lab, namespace) == []
    for checkpoint_id, node in ids.items():
        assert not (CHECKPOINT_DIRS[node] / checkpoint_id).exists(), checkpoint_id


def _helper_process(node: str) -> psutil.Process:
    """The DaemonSet helper of `node` (its serve process), as the host sees it."""
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if not any(part.endswith("/cedana-helper") for part in cmdline) or "serve" not in cmdline:
            continue
        try:
            if proc.environ().get("NODE_NAME") == node:
                return proc
        except psutil.Error:
            continue
    raise AssertionError(f"no helper process of node {node}")


def test_a_helper_killed_mid_checkpoint_leaves_the_object_final(lab: Lab,
                                                               namespace: str) -> None:
    """SIGKILL the helper of node 1 while it dumps a big container: once the kubelet has
    restarted it, the Checkpoint is Failed with the reason helper_restarted (or Succeeded, had
    the dump finished), never Running; the workload runs on, thawed."""
    lab.apply(pod_manifest("big", ["/usr/local/bin/memhog", "512", "100"]), namespace)
    lab.wait_pod_running(namespace, "big")
    lab.wait_log(namespace, "big", r"beat=5\b", timeout=120)  # its memory is written
    victim = _helper_process(lab.node_name)
    lab.kubectl("-n", namespace, "create", "-f", "-",
                input=json.dumps(_checkpoint("mid", "big")))
    end = time.monotonic() + 60
    while True:
        status = (_objects(lab, namespace)[0].get("status") or {})
        if status.get("phase") == "Running":
            break
        assert status.get("phase") not in FINAL, status  # too fast: the test proves nothing
        assert time.monotonic() < end, status
        time.sleep(0.05)
    time.sleep(0.3)  # CRIU is writing pages
    os.kill(victim.pid, signal.SIGKILL)
    (final,) = _wait_final(lab, namespace, 1, timeout=240)
    st = final["status"]
    assert st["phase"] in FINAL
    if st["phase"] == "Failed":
        assert st["errorCode"] == "helper_restarted", st
        assert "restarted" in st["message"]
    # the workload was not left frozen: it still beats after the new helper started, its
    # memory intact (ok=1)
    beat = int(lab.wait_log(namespace, "big", r"beat=(\d+)").group(1))
    later = lab.wait_log(namespace, "big", rf"beat={beat + 10} sum=\d+ ok=(\d)", timeout=60)
    assert later.group(1) == "1"
    assert lab.pod(namespace, "big")["status"]["containerStatuses"][0]["restartCount"] == 0
