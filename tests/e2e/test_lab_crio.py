"""The lab's CRI-O node (hack/lab-node3.sh; issue 20, points 1 and 2): CRI-O 1.34 built from its
Go module, crun as its default runtime and runc as a second one (RuntimeClass cedana-lab-runc),
conmon, its own kubelet, namespaces and pod subnet. Pods run there under either runtime, and the
helper finds, checkpoints and restores them: the container's own runtime dumps it (crun with
its libcriu, or runc), and the restore goes into a placeholder pod on the same node."""
from __future__ import annotations

import ipaddress
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.lab import (
    CRIO_RUNC_CLASS,
    HELPER_NAMESPACE,
    NODE3_IP,
    NODE3_POD_SUBNET,
    NODE3_RUN_ON_HOST,
    NODE3_TAINT_KEY,
    Lab,
    cedana,
    counter_pod,
    create_namespace,
    delete_namespace,
    goes_on,
    helper_daemonset_lock,
    helper_pod,
    install_helpers,
    pod_manifest,
    port_forward,
    run,
    service_account_token,
)

CRIO_CHECKPOINTS_ON_HOST = Path("/var/lib/kubectl-cedana-lab/node3/checkpoints")
IMAGES_CACHE = Path("/var/cache/kubectl-cedana/images")
# what the container does to its files: a new one, one changed, one deleted
CHANGE_FILES = ("printf 'new-bytes' > /data/new.txt; printf 'appended' >> /data/original.txt; "
                "rm /data/doomed.txt; touch /tmp/ready; while true; do sleep 1; done")


REPOSITORY = "cedana/crio-checkpoints"


@pytest.fixture(scope="module")
def installed(lab: Lab) -> Iterator[None]:
    with helper_daemonset_lock():
        install_helpers(lab, "--checkpoint-repository", f"{lab.registry}/{REPOSITORY}",
                        "--registry-prefix", f"{lab.registry}/rootfs/{{namespace}}")
        yield


def _on_crio(pod: dict[str, Any], lab: Lab, runtime_class: str | None = None) -> dict[str, Any]:
    pod["spec"]["nodeName"] = lab.crio_node
    if runtime_class:
        pod["spec"]["runtimeClassName"] = runtime_class
    return pod


def test_crio_node_is_ready_tainted_and_runs_crio(lab: Lab) -> None:
    node = json.loads(lab.kubectl("get", "node", lab.crio_node, "-o", "json").stdout)
    ready = next(c["status"] for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready == "True"
    runtime = node["status"]["nodeInfo"]["containerRuntimeVersion"]
    major, minor = (int(x) for x in runtime.removeprefix("cri-o://").split(".")[:2])
    assert runtime.startswith("cri-o://") and (major, minor) >= (1, 33), runtime
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == NODE3_IP
    assert {"key": NODE3_TAINT_KEY, "value": "true", "effect": "NoSchedule"} in \
        node["spec"].get("taints", [])


def test_pods_run_under_crun_by_default_and_runc_by_runtime_class(lab: Lab,
                                                                 namespace: str) -> None:
    lab.apply([_on_crio(counter_pod("by-crun"), lab),
               _on_crio(counter_pod("by-runc"), lab, CRIO_RUNC_CLASS)], namespace)
    for pod, runtime, state in (("by-crun", "crun", "status"), ("by-runc", "runc", "state.json")):
        running = lab.wait_pod_running(namespace, pod)
        assert ipaddress.ip_address(running["status"]["podIP"]) in \
            ipaddress.ip_network(NODE3_POD_SUBNET)
        status = running["status"]["containerStatuses"][0]
        assert status["containerID"].startswith("cri-o://"), status
        cid = status["containerID"].removeprefix("cri-o://")
        # the container is in that runtime's root on the node, and only there
        assert Path(NODE3_RUN_ON_HOST, runtime, cid, state).is_file()
        other = "runc" if runtime == "crun" else "crun"
        assert not Path(NODE3_RUN_ON_HOST, other, cid).exists()
        # logs and exec through the API server, from CRI-O's conmon and stream server
        first = int(lab.wait_log(namespace, pod, r"count=(\d+)").group(1))
        lab.wait_log(namespace, pod, rf"count={first + 2}\b")
        token = uuid.uuid4().hex
        assert lab.kubectl("-n", namespace, "exec", pod, "--", "/bin/echo",
                           token).stdout.strip() == token


@pytest.mark.parametrize("runtime_class", [None, CRIO_RUNC_CLASS], ids=["crun", "runc"])
def test_helper_checkpoints_and_restores_on_crio(lab: Lab, namespace: str, installed: None,
                                                 runtime_class: str | None) -> None:
    engine = "runc" if runtime_class else "crun"
    pod = f"count-{engine}"
    lab.apply(_on_crio(counter_pod(pod, interval_ms=200), lab, runtime_class), namespace)
    lab.wait_pod_running(namespace, pod)
    lab.wait_log(namespace, pod, r"count=5\b")
    # the helper on the CRI-O node lists it, with the runtime that runs it
    listed = cedana(lab, "-n", namespace, "list", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    rows = [r for r in json.loads(listed.stdout)["items"] if r["pod"] == pod]
    assert [r["node"] for r in rows] == [lab.crio_node], rows
    taken = cedana(lab, "-n", namespace, "checkpoint", pod, "--leave-running", "--storage",
                   "local", "--name", f"{pod}-ckpt", "-o", "json")
    assert taken.returncode == 0, taken.stderr
    ident = json.loads(taken.stdout)["status"]["checkpointID"]
    checkpoint = CRIO_CHECKPOINTS_ON_HOST / ident
    # CRIU's images and the dump's log, written by the container's own runtime
    assert (checkpoint / "checkpoint" / "inventory.img").is_file()
    assert (checkpoint / "config.dump").is_file()
    before = int(lab.wait_log(namespace, pod, r"count=(\d+)").group(1))
    # the source went on (leave-running)
    lab.wait_log(namespace, pod, rf"count={before + 5}\b")
    restored = cedana(lab, "-n", namespace, "restore", f"{pod}-ckpt", "--new-pod", f"{pod}-r")
    assert restored.returncode == 0, restored.stderr
    new = lab.pod(namespace, f"{pod}-r")
    assert new["spec"]["nodeName"] == lab.crio_node
    assert new["spec"].get("runtimeClassName") == runtime_class
    # its memory, not a fresh start: the counter goes on from where the checkpoint was
    goes_on(lab, namespace, f"{pod}-r", 5)
    # --wait: until the helper deleted the data and the object is gone (without it the
    # deletion goes on after the command, and this check raced the helper)
    removed = cedana(lab, "-n", namespace, "checkpoints", "rm", f"{pod}-ckpt", "--wait")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout == f'checkpoint "{pod}-ckpt" ({ident}) deleted\n'
    assert not checkpoint.exists()


def test_migration_from_containerd_to_crio_and_back(lab: Lab, namespace: str,
                                                    installed: None) -> None:
    """containerd (runc) -> CRI-O (crun) -> containerd: the same process goes on each time."""
    lab.apply(counter_pod("traveller", interval_ms=200), namespace)
    assert lab.wait_pod_running(namespace, "traveller")["spec"]["nodeName"] == lab.node_name
    lab.wait_log(namespace, "traveller", r"count=5\b")
    pod, seen = "traveller", 5
    for node in (lab.crio_node, lab.node_name):
        moved = cedana(lab, "-n", namespace, "migrate", pod, "--to-node", node,
                       "--delete-source", "-o", "json")
        assert moved.returncode == 0, moved.stderr
        status = json.loads(moved.stdout)["status"]
        assert status["phase"] == "Succeeded" and status["transfer"] == "direct", status
        new = lab.pod(namespace, status["podName"])
        assert new["spec"]["nodeName"] == node
        runtime = new["status"]["containerStatuses"][0]["containerID"].partition("://")[0]
        assert runtime == ("cri-o" if node == lab.crio_node else "containerd"), new["status"]
        seen = goes_on(lab, namespace, status["podName"], seen)
        pod = status["podName"]


def test_crio_restores_natively_a_checkpoint_image_the_helper_pushed(
        lab: Lab, namespace: str, installed: None) -> None:
    """A pod whose image is the helper's checkpoint image: CRI-O sees the checkpoint
    annotation, pulls the rootfs image it names, and restores the process itself (runc and
    CRIU), without the helper. (With crun, CRI-O's restore moves the process into the source
    container's cgroups, which this lab's hybrid cgroup layout does not let CRIU re-create:
    docs/lab.md.)"""
    lab.apply(_on_crio(counter_pod("origin", interval_ms=200), lab, CRIO_RUNC_CLASS), namespace)
    lab.wait_pod_running(namespace, "origin")
    lab.wait_log(namespace, "origin", r"count=5\b")
    origin = lab.pod(namespace, "origin")["status"]["containerStatuses"][0]
    taken = cedana(lab, "-n", namespace, "checkpoint", "origin", "--leave-running",
                   "--storage", "remote", "--compression", "gzip", "-o", "json")
    assert taken.returncode == 0, taken.stderr
    status = json.loads(taken.stdout)["status"]
    reference = status["imageRef"]
    assert reference.startswith(f"{lab.registry}/{REPOSITORY}:"), status
    lab.kubectl("-n", namespace, "delete", "pod", "origin", "--wait=true", timeout=120)
    restored = _on_crio(counter_pod("native"), lab, CRIO_RUNC_CLASS)
    restored["spec"]["containers"][0]["image"] = reference
    restored["spec"]["containers"][0]["imagePullPolicy"] = "Always"
    lab.apply(restored, namespace)
    pod = lab.wait_pod_running(namespace, "native", timeout=180)
    # asked for the checkpoint image, CRI-O restored onto the rootfs image its config.dump
    # names (a plain start of the image would report the image itself)
    assert pod["spec"]["containers"][0]["image"] == reference
    status = pod["status"]["containerStatuses"][0]
    assert status["image"] != reference, status
    # the image the source ran: by its ID (CRI-O reports one of the names its storage has for
    # that image, and another test may have stored the same image under another name)
    assert status["imageID"].rpartition("@")[2] == origin["imageID"].rpartition("@")[2], \
        (status, origin)
    # the counter goes on from the checkpoint's count (5 or more), not from zero
    goes_on(lab, namespace, "native", 5)


def test_seed_crio_routes_on_a_real_crio_pod(lab: Lab, namespace: str, installed: None) -> None:
    """The seed's CRI-O routes on a pod CRI-O runs (crun, containers/storage): /list shows it
    with CRI-O's annotations; /checkpoint/rootfs/crio commits its changed files onto the image
    it was started from (read from the registry) and pushes them with the node's credentials;
    the kubelet runs the pushed image on the CRI-O node. A tenant of another namespace is
    refused."""
    base = f"{lab.registry}/rootfs/{namespace}/base:1"  # under the allowed prefix
    run(["skopeo", "copy", "-q", "--dest-creds", f"{lab.registry_user}:{lab.registry_password}",
         "--dest-cert-dir", f"/etc/containers/certs.d/{lab.registry}",
         f"docker-archive:{IMAGES_CACHE / 'workload.tar'}", f"docker://{base}"], timeout=300)
    lab.apply(_on_crio(pod_manifest("files", ["/bin/sh", "-c", CHANGE_FILES], image=base), lab),
              namespace)
    lab.wait_pod_running(namespace, "files", timeout=180)
    for _ in range(60):
        if lab.kubectl("-n", namespace, "exec", "files", "--", "test", "-f", "/tmp/ready",
                       check=False).returncode == 0:
            break
        time.sleep(0.5)
    token = service_account_token(lab, namespace, "committer", "edit")
    tenant = create_namespace(lab, "crio-tenant")
    try:
        stranger = service_account_token(lab, tenant, "stranger", "edit")
        new_ref = f"{lab.registry}/rootfs/{namespace}:crio"
        body = {"container_name": "main", "sandbox_name": "files", "namespace": namespace,
                "image_ref": base, "new_image_ref": new_ref}
        helper = helper_pod(lab, lab.crio_node)["metadata"]["name"]
        with port_forward(lab, HELPER_NAMESPACE, helper, 1324) as url:
            listed = requests.get(f"{url}/list/{namespace}", timeout=30,
                                  headers={"Authorization": f"Bearer {token}"})
            assert listed.status_code == 200, listed.text
            (entry,) = [c for c in listed.json() if c["sandbox_name"] == "files"]
            assert (entry["runtime"], entry["engine"], entry["container_name"]) == \
                ("cri-o", "crun", "main"), entry
            refused = requests.post(f"{url}/checkpoint/rootfs/crio", json=body, timeout=60,
                                    headers={"Authorization": f"Bearer {stranger}"})
            assert refused.status_code == 403, refused.text
            committed = requests.post(f"{url}/checkpoint/rootfs/crio", json=body, timeout=300,
                                      headers={"Authorization": f"Bearer {token}"})
            assert committed.status_code == 200, committed.text
            assert committed.json()["base_image"] == base
    finally:
        delete_namespace(lab, tenant)
    # the kubelet runs the pushed image on the CRI-O node: the changed files are in it
    lab.apply(_on_crio(pod_manifest("from-commit", ["/bin/sh", "-c", "sleep 3600"],
                                    image=new_ref, pull_policy="Always"), lab), namespace)
    lab.wait_pod_running(namespace, "from-commit", timeout=180)
    show = lab.kubectl("-n", namespace, "exec", "from-commit", "--", "/bin/sh", "-c",
                       "cat /data/new.txt; echo; cat /data/original.txt; echo; "
                       "test -e /data/doomed.txt && echo doomed-here || echo doomed-gone").stdout
    assert show.splitlines() == ["new-bytes", "original content of the image", "appended",
                                 "doomed-gone"], show
