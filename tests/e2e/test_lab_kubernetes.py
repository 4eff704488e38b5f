"""The lab runs current Kubernetes: v1.34 on containerd 2.x on both nodes, custom resources
work end to end, and the kubelet's own checkpoint API answers through the API server."""
from __future__ import annotations

import json
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

from tests.e2e.lab import LAB_DIR, PKI, Lab, counter_pod

API = "https://127.0.0.1:6443"


def _api(method: str, path: str, body: Any = None, *, content_type: str = "application/json",
         timeout: float = 60) -> requests.Response:
    """A request to the API server as the lab's admin."""
    return requests.request(
        method, API + path, data=None if body is None else json.dumps(body),
        headers={"Content-Type": content_type}, verify=str(PKI / "ca.crt"),
        cert=(str(PKI / "admin.crt"), str(PKI / "admin.key")), timeout=timeout)


def _apiserver_pid() -> int:
    return int((LAB_DIR / "pids" / "kube-apiserver.pid").read_text())


def test_every_node_runs_kubernetes_1_34_on_containerd_2_or_crio(lab: Lab) -> None:
    nodes = json.loads(lab.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    info = {n["metadata"]["name"]: n["status"]["nodeInfo"] for n in nodes}
    assert set(info) == {lab.node_name, lab.node2_name, lab.crio_node}
    for name, node in info.items():
        assert node["kubeletVersion"].startswith("v1.34."), (name, node)
        runtime = node["containerRuntimeVersion"]
        if name == lab.crio_node:  # tests/e2e/test_lab_crio.py
            assert runtime.startswith("cri-o://1.3"), (name, runtime)
            continue
        assert runtime.startswith("containerd://2."), (name, runtime)
        assert int(runtime.split("://2.")[1].split(".")[0]) >= 1, runtime  # containerd >= 2.1
    versions = json.loads(lab.kubectl("version", "-o", "json").stdout)
    assert versions["serverVersion"]["gitVersion"].startswith("v1.34.")
    # kubectl matches the cluster: same minor version
    assert versions["clientVersion"]["minor"] == versions["serverVersion"]["minor"] == "34"


def _crd(group: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group, "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget",
                      "shortNames": ["wdg"]},
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"}],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {"type": "object", "required": ["size"],
                                 "properties": {"size": {"type": "integer", "minimum": 1}}},
                        "status": {"type": "object",
                                   "properties": {"phase": {"type": "string"}}}}}},
            }],
        },
    }


def _established(lab: Lab, name: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        crd = json.loads(lab.kubectl("get", "crd", name, "-o", "json").stdout)
        conditions = {c["type"]: c["status"] for c in crd.get("status", {}).get("conditions", [])}
        if conditions.get("Established") == "True":
            return
        time.sleep(0.5)
    raise AssertionError(f"CRD {name} not Established after {timeout}s")


def test_custom_resources_work_and_the_api_server_stays_up(lab: Lab, namespace: str) -> None:
    """The 1.20 build crashed decoding any custom resource: create, list, watch, patch the
    status of and delete one, and the same API server process answers afterwards."""
    pid = _apiserver_pid()
    group = f"{namespace}.lab.cedana.io"
    crd = _crd(group)
    lab.kubectl("apply", "-f", "-", input=json.dumps(crd))
    try:
        _established(lab, crd["metadata"]["name"])
        base = f"/apis/{group}/v1/namespaces/{namespace}/widgets"
        # Established, yet the new group may take a moment to be served
        end = time.monotonic() + 30
        while _api("GET", base).status_code != 200:
            assert time.monotonic() < end, f"{base} not served"
            time.sleep(0.3)

        events: list[tuple[str, str, Any]] = []
        watching = threading.Event()

        def watch() -> None:
            with requests.get(API + base + "?watch=true&timeoutSeconds=60", stream=True,
                              verify=str(PKI / "ca.crt"), timeout=90,
                              cert=(str(PKI / "admin.crt"), str(PKI / "admin.key"))) as resp:
                assert resp.status_code == 200, resp.text
                watching.set()
                for line in resp.iter_lines():
                    event = json.loads(line)
                    obj = event["object"]
                    events.append((event["type"], obj["metadata"]["name"],
                                   (obj.get("status") or {}).get("phase")))
                    if event["type"] == "DELETED":
                        return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        assert watching.wait(30)

        created = _api("POST", base, {"apiVersion": f"{group}/v1", "kind": "Widget",
                                      "metadata": {"name": "w1"}, "spec": {"size": 3}})
        assert created.status_code == 201, created.text
        # schema validation: the API server refuses a bad spec with the field named
        bad = _api("POST", base, {"apiVersion": f"{group}/v1", "kind": "Widget",
                                  "metadata": {"name": "w2"}, "spec": {"size": 0}})
        assert bad.status_code == 422, bad.text
        assert any(c.get("field") == "spec.size" for c in bad.json()["details"]["causes"]), bad.text

        listed = _api("GET", base).json()
        assert [i["metadata"]["name"] for i in listed["items"]] == ["w1"]
        # printer columns and the short name, as kubectl shows them
        table = lab.kubectl("-n", namespace, "get", f"wdg.{group}").stdout.splitlines()
        assert table[0].split() == ["NAME", "SIZE", "PHASE"] and table[1].split()[:2] == ["w1", "3"]

        # the status subresource: status changes there, a spec change there is ignored
        patched = _api("PATCH", base + "/w1/status",
                       {"status": {"phase": "Ready"}, "spec": {"size": 9}},
                       content_type="application/merge-patch+json")
        assert patched.status_code == 200, patched.text
        got = _api("GET", base + "/w1").json()
        assert got["status"] == {"phase": "Ready"} and got["spec"] == {"size": 3}

        deleted = _api("DELETE", base + "/w1")
        assert deleted.status_code == 200, deleted.text
        watcher.join(60)
        assert [e[0] for e in events] == ["ADDED", "MODIFIED", "DELETED"], events
        assert events[1] == ("MODIFIED", "w1", "Ready")
    finally:
        lab.kubectl("delete", "crd", crd["metadata"]["name"], "--wait=false", check=False)
    assert _apiserver_pid() == pid
    assert _api("GET", "/readyz").status_code == 200


def test_kubelet_checkpoint_api_writes_an_archive_and_the_pod_runs_on(lab: Lab,
                                                                     namespace: str) -> None:
    """POST /checkpoint/{namespace}/{pod}/{container} through the API server's node proxy:
    containerd 2.x dumps the container with runc and CRIU into an archive on the node."""
    lab.apply(counter_pod("counter", interval_ms=200), namespace)
    lab.wait_pod_running(namespace, "counter")
    before = int(lab.wait_log(namespace, "counter", r"count=(\d+)").group(1))
    resp = _api("POST", f"/api/v1/nodes/{lab.node_name}/proxy/checkpoint/{namespace}/counter/main"
                        "?timeout=120", timeout=180)
    assert resp.status_code == 200, resp.text
    items = resp.json()["items"]
    assert len(items) == 1
    archive = Path(items[0])
    try:
        assert archive.parent == Path("/var/lib/kubelet/checkpoints")
        assert archive.name.startswith(f"checkpoint-counter_{namespace}-main-")
        with tarfile.open(archive) as tar:
            names = set(tar.getnames())
            assert {"config.dump", "spec.dump", "checkpoint/inventory.img"} <= names, names
            assert any(n.startswith("checkpoint/pages-") for n in names)
            config = json.load(tar.extractfile("config.dump"))  # type: ignore[arg-type]
        # containerd names the container by its CRI name (main_counter_NAMESPACE_UID_0)
        assert config["id"] == lab.container_id(namespace, "counter")
        assert config["name"].startswith(f"main_counter_{namespace}_")
        # the kubelet's checkpoint leaves the container running: it counts on, never restarted
        lab.wait_log(namespace, "counter", rf"count={before + 10}\b")
        assert lab.pod(namespace, "counter")["status"]["containerStatuses"][0]["restartCount"] == 0
    finally:
        archive.unlink(missing_ok=True)


def test_kubelet_checkpoint_needs_its_own_permission(lab: Lab, namespace: str) -> None:
    """nodes/checkpoint is a permission of its own: a user who may only read pods is refused."""
    lab.apply(counter_pod("counter"), namespace)
    lab.wait_pod_running(namespace, "counter")
    proc = lab.kubectl("--as", f"system:serviceaccount:{namespace}:default", "create", "--raw",
                       f"/api/v1/nodes/{lab.node_name}/proxy/checkpoint/{namespace}/counter/main",
                       "-f", "/dev/null", check=False)
    assert proc.returncode != 0
    assert "forbidden" in proc.stderr.lower(), proc.stderr
    assert not list(Path("/var/lib/kubelet/checkpoints").glob(f"checkpoint-counter_{namespace}-*"))
