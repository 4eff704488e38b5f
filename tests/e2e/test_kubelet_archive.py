"""`kubectl cedana checkpoints import` takes in an archive the kubelet's checkpoint API wrote
(issue 20 point 4), on the lab: containerd 2.4 dumps the container through the API server's node
proxy, the helper of that node makes it one of its checkpoints (verified, signed, pushed), and
`kubectl cedana restore` brings the program back on the same node and on node 2, its state
going on from the kubelet's checkpoint. A tenant cannot take in another namespace's archive."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.lab import (
    Lab,
    cedana,
    counts,
    counter_pod,
    create_namespace,
    delete_namespace,
    goes_on,
    helper_daemonset_lock,
    install_helpers,
    wait_final,
)


@pytest.fixture(scope="module", autouse=True)
def installed(lab: Lab) -> Iterator[None]:
    with helper_daemonset_lock():
        install_helpers(lab, "--checkpoint-repository", f"{lab.registry}/cedana/kubelet-archive")
        yield


@pytest.fixture
def archive(lab: Lab, namespace: str) -> Iterator[tuple[Path, int]]:
    """The kubelet's checkpoint of a counter (it runs on); the archive and the last count
    printed before it."""
    lab.apply(counter_pod("counter", interval_ms=200), namespace)
    lab.wait_pod_running(namespace, "counter")
    lab.wait_log(namespace, "counter", r"count=5\b")
    before = counts(lab, namespace, "counter")[-1]
    made = lab.kubectl("create", "--raw", f"/api/v1/nodes/{lab.node_name}/proxy/checkpoint/"
                       f"{namespace}/counter/main?timeout=120", "-f", "/dev/null", timeout=180)
    (path,) = json.loads(made.stdout)["items"]
    try:
        yield Path(path), before
    finally:
        Path(path).unlink(missing_ok=True)


def test_a_kubelet_archive_is_restored_here_and_on_node_2(
        lab: Lab, namespace: str, archive: tuple[Path, int]) -> None:
    path, before = archive
    taken = cedana(lab, "-n", namespace, "checkpoints", "import", path.name, "--node",
                   lab.node_name, "--name", "from-kubelet")
    assert taken.returncode == 0, taken.stderr
    obj = json.loads(lab.kubectl("-n", namespace, "get", "checkpoints.cedana.io",
                                 "from-kubelet", "-o", "json").stdout)
    assert obj["status"]["phase"] == "Succeeded"
    assert obj["status"]["container"] == "main"
    assert obj["status"]["checkpointID"] == taken.stdout.strip()
    assert obj["status"]["imageRef"].startswith(f"{lab.registry}/cedana/kubelet-archive:")
    assert path.name in obj["status"]["message"]
    # the archive is left where the kubelet put it
    assert path.is_file()

    here = cedana(lab, "-n", namespace, "restore", "from-kubelet", "--new-pod", "copy-1")
    assert here.returncode == 0, here.stderr
    goes_on(lab, namespace, "copy-1", before)
    there = cedana(lab, "-n", namespace, "restore", "from-kubelet", "--new-pod", "copy-2",
                   "--node", lab.node2_name)
    assert there.returncode == 0, there.stderr
    assert lab.pod(namespace, "copy-2")["spec"]["nodeName"] == lab.node2_name
    goes_on(lab, namespace, "copy-2", before)
    # the kubelet's checkpoint left its container running
    assert lab.pod(namespace, "counter")["status"]["containerStatuses"][0]["restartCount"] == 0


def test_another_namespace_cannot_take_in_the_archive(
        lab: Lab, namespace: str, archive: tuple[Path, int]) -> None:
    """The archive's spec.dump names its pod's namespace: a Checkpoint of another namespace
    (made by a tenant with every cedana right there, with plain kubectl) fails forbidden and
    keeps nothing; the plugin refuses before it asks; a name that climbs out is refused by
    the API server."""
    path, _ = archive
    tenant = create_namespace(lab, "archive-tenant")
    try:
        lab.kubectl("-n", tenant, "create", "rolebinding", "cedana", "--clusterrole=cedana-edit",
                    f"--serviceaccount={tenant}:default")
        user = f"system:serviceaccount:{tenant}:default"
        refused = cedana(lab, "-n", tenant, "checkpoints", "import", path.name, "--node",
                         lab.node_name)
        assert refused.returncode == 2 and f"namespace {tenant}" in refused.stderr
        body = {"apiVersion": "cedana.io/v1alpha1", "kind": "Checkpoint",
                "metadata": {"name": "steal", "labels": {"cedana.io/node": lab.node_name}},
                "spec": {"podName": "counter", "kubeletArchive": path.name,
                         "storage": "local"}}
        lab.kubectl("--as", user, "-n", tenant, "create", "-f", "-", input=json.dumps(body))
        status = wait_final(lab, tenant, "checkpoints", "steal", timeout=60)["status"]
        assert status["phase"] == "Failed" and status["errorCode"] == "forbidden", status
        assert f"pod {namespace}/counter" in status["message"]
        assert not status.get("checkpointID")
        climbing = {**body, "metadata": {"name": "climb"},
                    "spec": {"podName": "counter", "kubeletArchive": "../../etc/shadow"}}
        invalid = lab.kubectl("-n", tenant, "create", "-f", "-", input=json.dumps(climbing),
                              check=False)
        assert invalid.returncode != 0 and "kubeletArchive" in invalid.stderr
    finally:
        delete_namespace(lab, tenant)
