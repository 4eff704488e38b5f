"""The preflight (issue 18, point 6): `kubectl cedana doctor POD` says whether a pod can be
checkpointed, and why not, asked of the helper on its node without freezing or dumping anything
(a Checkpoint with spec.preflight, removed once read). Each finding is checked against the
truth: a real checkpoint of the same container then fails with CRIU's own reason, or, for a
clean pod, succeeds.
"""
from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.lab import (
    Lab,
    cedana,
    counter_pod,
    create_namespace,
    delete_namespace,
    helper_daemonset_lock,
    install_helpers,
    pod_manifest,
)

#: a character device with NVIDIA's major number, made on the node: what a GPU pod is given
FAKE_GPU = Path("/run/cedana-lab-fake-gpu/nvidia0")


@pytest.fixture(scope="module", autouse=True)
def installed(lab: Lab) -> Iterator[None]:
    with helper_daemonset_lock():
        install_helpers(lab)
        yield


def _doctor(lab: Lab, namespace: str, pod: str, *args: str) -> tuple[int, dict[str, Any]]:
    answer = cedana(lab, "-n", namespace, "doctor", pod, *args, "-o", "json")
    return answer.returncode, json.loads(answer.stdout) if answer.stdout else {}


def _by_check(report: dict[str, Any], container: str) -> dict[str, dict[str, Any]]:
    return {f["check"]: f for f in report["findings"] if f["container"] == container}


def _no_objects_left(lab: Lab, namespace: str) -> None:
    out = lab.kubectl("-n", namespace, "get", "checkpoints.cedana.io", "-o", "json").stdout
    assert [o["metadata"]["name"] for o in json.loads(out)["items"]
            if (o.get("spec") or {}).get("preflight")] == []


def _checkpoint_error(lab: Lab, namespace: str, pod: str, *args: str) -> str:
    taken = cedana(lab, "-n", namespace, "checkpoint", pod, "--leave-running", *args)
    assert taken.returncode != 0, taken.stdout
    return taken.stderr


def test_a_clean_pod_passes_and_is_left_untouched(lab: Lab, namespace: str) -> None:
    lab.apply(counter_pod("clean", interval_ms=100), namespace)
    before = lab.wait_pod_running(namespace, "clean")
    lab.wait_log(namespace, "clean", r"count=5\b")
    code, report = _doctor(lab, namespace, "clean")
    assert code == 0, report
    assert report["kind"] == "PreflightReport" and report["checkpointable"] is True
    assert set(_by_check(report, "main")) == {"running", "io_uring", "user_namespace", "gpu",
                                             "unix_socket", "mount"}
    assert all(f["ok"] for f in report["findings"]), report
    _no_objects_left(lab, namespace)
    after = lab.pod(namespace, "clean")
    assert after["status"]["containerStatuses"][0]["restartCount"] == 0
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    # and the preflight told the truth
    taken = cedana(lab, "-n", namespace, "checkpoint", "clean", "--leave-running")
    assert taken.returncode == 0, taken.stderr


def test_a_unix_connection_to_another_container_is_named(lab: Lab, namespace: str) -> None:
    socket_dir = [{"name": "sock", "mountPath": "/sock"}]
    pod = pod_manifest("pair", [], containers=[
        {"name": "server", "image": "docker.io/cedana-lab/workload:1",
         "imagePullPolicy": "IfNotPresent", "volumeMounts": socket_dir,
         "command": ["/usr/local/bin/unixpeer", "listen", "/sock/s"]},
        {"name": "client", "image": "docker.io/cedana-lab/workload:1",
         "imagePullPolicy": "IfNotPresent", "volumeMounts": socket_dir,
         "command": ["/usr/local/bin/unixpeer", "connect", "/sock/s"]}],
        volumes=[{"name": "sock", "emptyDir": {}}])
    lab.apply(pod, namespace)
    lab.wait_pod_running(namespace, "pair")
    lab.wait_log(namespace, "pair", r"peer count=3\b", container="client")
    code, report = _doctor(lab, namespace, "pair", "-c", "client")
    assert code == 1 and report["checkpointable"] is False
    finding = _by_check(report, "client")["unix_socket"]
    assert not finding["ok"] and "/sock/s" in finding["message"]
    assert "connected to a process outside the container" in finding["message"]
    assert all(f["ok"] for f in report["findings"] if f["check"] != "unix_socket")
    _no_objects_left(lab, namespace)
    assert "Can't dump half of stream unix connection" in _checkpoint_error(
        lab, namespace, "pair", "-c", "client")
    # the connection goes on: nothing was frozen for good
    lab.wait_log(namespace, "pair", r"peer count=(\d+)", container="client")


def test_io_uring_gpu_and_user_namespaces_are_named(lab: Lab, namespace: str) -> None:
    FAKE_GPU.parent.mkdir(parents=True, exist_ok=True)
    if not FAKE_GPU.exists():
        subprocess.run(["mknod", str(FAKE_GPU), "c", "195", "0"], check=True)
    pod = pod_manifest("odd", [], containers=[
        {"name": "ring", "image": "docker.io/cedana-lab/workload:1",
         "imagePullPolicy": "IfNotPresent", "command": ["/usr/local/bin/iouring"]},
        {"name": "gpu", "image": "docker.io/cedana-lab/workload:1",
         "imagePullPolicy": "IfNotPresent", "command": ["/usr/local/bin/counter", "/tmp/c", "500"],
         "volumeMounts": [{"name": "gpu", "mountPath": "/dev/nvidia0"}]}],
        volumes=[{"name": "gpu", "hostPath": {"path": str(FAKE_GPU), "type": "CharDevice"}}],
        hostUsers=False)
    lab.apply(pod, namespace)
    lab.wait_pod_running(namespace, "odd")
    code, report = _doctor(lab, namespace, "odd")
    assert code == 1 and report["checkpointable"] is False
    ring, gpu = _by_check(report, "ring"), _by_check(report, "gpu")
    assert not ring["io_uring"]["ok"] and "io_uring" in ring["io_uring"]["message"]
    assert gpu["io_uring"]["ok"]
    assert not gpu["gpu"]["ok"] and "/dev/nvidia0" in gpu["gpu"]["message"]
    assert ring["gpu"]["ok"]
    for container in (ring, gpu):
        assert not container["user_namespace"]["ok"]
        assert "hostUsers: false" in container["user_namespace"]["message"]
    _no_objects_left(lab, namespace)
    assert "io_uring" in _checkpoint_error(lab, namespace, "odd", "-c", "ring")


def test_a_mount_criu_cannot_dump_is_named(lab: Lab, namespace: str) -> None:
    script = ("mkdir -p /mnt/r && mount -t ramfs ramfs /mnt/r && "
              "exec /usr/local/bin/counter /mnt/r/c 500")
    pod = pod_manifest("mounter", ["/bin/sh", "-c", script])
    pod["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    lab.apply(pod, namespace)
    lab.wait_pod_running(namespace, "mounter")
    lab.wait_log(namespace, "mounter", r"count=1\b")
    code, report = _doctor(lab, namespace, "mounter")
    assert code == 1
    finding = _by_check(report, "main")["mount"]
    assert not finding["ok"] and "/mnt/r (ramfs)" in finding["message"]
    assert "unsupported" in _checkpoint_error(lab, namespace, "mounter")


def test_a_tenant_cannot_look_into_another_namespace(lab: Lab, namespace: str) -> None:
    """A preflight reads what a checkpoint would: it needs create on checkpoints in the pod's
    namespace. A tenant with every cedana right in its own namespace gets 403 elsewhere."""
    lab.apply(counter_pod("private", interval_ms=500), namespace)
    lab.wait_pod_running(namespace, "private")
    tenant = create_namespace(lab, "preflight-tenant")
    try:
        lab.kubectl("-n", tenant, "create", "rolebinding", "cedana", "--clusterrole=cedana-edit",
                    f"--serviceaccount={tenant}:default")
        user = f"system:serviceaccount:{tenant}:default"
        body = {"apiVersion": "cedana.io/v1alpha1", "kind": "Checkpoint",
                "metadata": {"name": "peek"},
                "spec": {"podName": "private", "preflight": True}}
        refused = lab.kubectl("--as", user, "-n", namespace, "create", "-f", "-",
                              input=json.dumps(body), check=False)
        assert refused.returncode != 0 and "forbidden" in refused.stderr.lower(), refused
        allowed_home = lab.kubectl("--as", user, "-n", tenant, "auth", "can-i", "create",
                                   "checkpoints.cedana.io", check=False)
        assert allowed_home.stdout.strip() == "yes"
        _no_objects_left(lab, namespace)
    finally:
        delete_namespace(lab, tenant)
