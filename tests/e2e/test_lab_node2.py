"""The lab's second node (hack/lab-node2.sh): a real kubelet with its own containerd, network
namespace, pod subnet and mount namespace, registered with the same API server. Pods run there,
their logs and exec come through the API server, it pulls from the lab registry, pods on the two
nodes reach each other, and the helper DaemonSet's pod on node 2 sees node 2's containers only."""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import requests

from tests.e2e.lab import (NODE2_IP, NODE2_POD_SUBNET, NODE2_TAINT_KEY, REPO, Lab,
                           counter_pod, helper_daemonset_lock, pod_manifest, port_forward, run,
                           service_account_token, sleeper_pod)

CACHE_IMAGES = Path("/var/cache/kubectl-cedana/images")
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"
HELPER_NS = "cedana-system"
HELPER_SELECTOR = "app.kubernetes.io/name=cedana-helper"
# node 2's /run/containerd/runc/k8s.io, as the host sees it (hack/lab-node2.sh)
NODE2_RUNC_ROOT_ON_HOST = "/run/kubectl-cedana-lab/node2/containerd/runc/k8s.io"


def _on_node2(lab: Lab, manifest: dict[str, Any]) -> dict[str, Any]:
    manifest["spec"]["nodeName"] = lab.node2_name
    return manifest


def _in_node2_subnet(ip: str) -> bool:
    return ipaddress.ip_address(ip) in ipaddress.ip_network(NODE2_POD_SUBNET)


def _node(lab: Lab, name: str) -> dict[str, Any]:
    return json.loads(lab.kubectl("get", "node", name, "-o", "json").stdout)


def test_both_nodes_ready_and_node2_tainted(lab: Lab) -> None:
    nodes = json.loads(lab.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    ready = {n["metadata"]["name"]: next(c["status"] for c in n["status"]["conditions"]
                                         if c["type"] == "Ready") for n in nodes}
    assert ready.get(lab.node_name) == "True" and ready.get(lab.node2_name) == "True", ready
    node2 = _node(lab, lab.node2_name)
    addresses = {a["type"]: a["address"] for a in node2["status"]["addresses"]}
    assert addresses["InternalIP"] == NODE2_IP
    assert {"key": NODE2_TAINT_KEY, "value": "true", "effect": "NoSchedule"} in \
        node2["spec"].get("taints", [])


def test_pod_on_node2_runs_with_logs_exec_and_its_own_subnet(lab: Lab, namespace: str) -> None:
    # through the scheduler: a nodeSelector and a toleration of node 2's taint
    pod = counter_pod("counter")
    pod["spec"]["nodeSelector"] = {"kubernetes.io/hostname": lab.node2_name}
    pod["spec"]["tolerations"] = [lab.node2_toleration]
    lab.apply(pod, namespace)
    running = lab.wait_pod_running(namespace, "counter")
    assert running["spec"]["nodeName"] == lab.node2_name
    assert running["status"]["hostIP"] == NODE2_IP
    assert _in_node2_subnet(running["status"]["podIP"]), running["status"]["podIP"]
    # logs and exec: the API server reaches node 2's kubelet on 10.88.0.2:10250
    first = int(lab.wait_log(namespace, "counter", r"count=(\d+)").group(1))
    lab.wait_log(namespace, "counter", rf"count={first + 2}\b")
    token = uuid.uuid4().hex
    out = lab.kubectl("-n", namespace, "exec", "counter", "--", "/bin/echo", token).stdout
    assert out.strip() == token
    # its network namespace is node 2's pod network, its default route node 2's pod bridge
    routes = lab.kubectl("-n", namespace, "exec", "counter", "--", "/bin/ip", "route").stdout
    assert "default via 10.88.2.1" in routes, routes


def test_untolerating_pod_is_kept_off_node2(lab: Lab, namespace: str) -> None:
    pod = sleeper_pod("kept-off")
    pod["spec"]["nodeSelector"] = {"kubernetes.io/hostname": lab.node2_name}
    lab.apply(pod, namespace)
    end = time.monotonic() + 60
    conditions: list[dict[str, Any]] = []
    while time.monotonic() < end:
        status = lab.pod(namespace, "kept-off")["status"]
        conditions = status.get("conditions") or []
        if any(c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"
               for c in conditions):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"not reported unschedulable: {conditions}")
    assert "taint" in json.dumps(conditions).lower()


def test_node2_pulls_from_the_lab_registry(lab: Lab, namespace: str) -> None:
    tag = uuid.uuid4().hex[:10]
    repo = f"lab/node2-{namespace}"
    ref = f"{lab.registry}/{repo}:{tag}"
    run(["skopeo", "copy", "--quiet", "--dest-creds",
         f"{lab.registry_user}:{lab.registry_password}",
         "--dest-cert-dir", f"/etc/containers/certs.d/{lab.registry}",
         f"docker-archive:{CACHE_IMAGES / 'workload.tar'}", f"docker://{ref}"], timeout=180)
    # node 2 pulls 127.0.0.1:5000/... like node 1: its loopback leads to the host's registry
    lab.apply(_on_node2(lab, pod_manifest("pulled", ["/bin/sh", "-c", "echo pulled-$((6*7)); sleep 3600"],
                                          image=ref, pull_policy="Always")), namespace)
    pod = lab.wait_pod_running(namespace, "pulled", timeout=180)
    digest = requests.head(f"https://{lab.registry}/v2/{repo}/manifests/{tag}",
                           auth=(lab.registry_user, lab.registry_password), verify=lab.ca_cert,
                           headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
                           timeout=30).headers["Docker-Content-Digest"]
    assert pod["status"]["containerStatuses"][0]["imageID"].endswith(digest)
    lab.wait_log(namespace, "pulled", r"pulled-42")
    events = lab.kubectl("-n", namespace, "get", "events", "--field-selector",
                         "involvedObject.name=pulled", "-o", "json").stdout
    pulled = [e for e in json.loads(events)["items"] if e["reason"] == "Pulled"]
    assert pulled and all(e["source"].get("host") == lab.node2_name for e in pulled)


def test_pods_on_the_two_nodes_reach_each_other(lab: Lab, namespace: str) -> None:
    token = uuid.uuid4().hex
    serve = ["/bin/sh", "-c", f"mkdir -p /www && echo {token} >/www/t && exec httpd -f -p 8080 -h /www"]
    lab.apply([_on_node2(lab, pod_manifest("web2", serve)), sleeper_pod("client1")], namespace)
    web2 = lab.wait_pod_running(namespace, "web2")
    client1 = lab.wait_pod_running(namespace, "client1")
    assert client1["spec"]["nodeName"] == lab.node_name
    ip = web2["status"]["podIP"]
    # node 1's pod -> node 2's pod (across the lab bridge, proxy ARP and node 2's routing)
    # (busybox nc: the static busybox's wget crashes in these images)
    request = f'printf "GET /t HTTP/1.0\\r\\n\\r\\n" | nc -w 5 {ip} 8080'
    got = ""
    end = time.monotonic() + 30
    while time.monotonic() < end and token not in got:
        got = lab.kubectl("-n", namespace, "exec", "client1", "--", "/bin/sh", "-c", request,
                          check=False).stdout
        time.sleep(0.5)
    assert token in got, got
    # the API server (on the host) -> node 2's pod, through its pod proxy
    proxied = lab.kubectl("get", "--raw", f"/api/v1/namespaces/{namespace}/pods/web2:8080/proxy/t")
    assert proxied.stdout.strip() == token


def _plugin(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**lab.env(), "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    return subprocess.run([str(VENV_BIN / "kubectl-cedana"), *args], capture_output=True,
                          text=True, timeout=300, env=env)


def _helper_pod(lab: Lab, node: str) -> str:
    end = time.monotonic() + 120
    while time.monotonic() < end:
        pods = json.loads(lab.kubectl("-n", HELPER_NS, "get", "pods", "-l", HELPER_SELECTOR,
                                      "-o", "json").stdout)["items"]
        for p in pods:
            statuses = p["status"].get("containerStatuses") or []
            if p["spec"].get("nodeName") == node and p["metadata"].get("deletionTimestamp") is None \
                    and statuses and all(s.get("ready") for s in statuses):
                return str(p["metadata"]["name"])
        time.sleep(1)
    raise AssertionError(f"no ready helper pod on {node}")


def test_helper_daemonset_runs_on_node2_with_node2s_mounts(lab: Lab, namespace: str) -> None:
    lab.apply([_on_node2(lab, counter_pod("on-node2")), counter_pod("on-node1")], namespace)
    lab.wait_pod_running(namespace, "on-node2")
    assert lab.wait_pod_running(namespace, "on-node1")["spec"]["nodeName"] == lab.node_name
    with helper_daemonset_lock():
        present = lab.kubectl("-n", HELPER_NS, "get", "daemonset", "cedana-helper",
                              check=False).returncode == 0
        installed = _plugin(lab, "install")
        try:
            assert installed.returncode == 0, installed.stderr
            helper1, helper2 = _helper_pod(lab, lab.node_name), _helper_pod(lab, lab.node2_name)
            # each helper's port is its node's loopback, reached with kubectl port-forward; a
            # token of a service account that may list the namespace's pods (the view role)
            token = service_account_token(lab, namespace, "lister", "view")
            auth = {"Authorization": f"Bearer {token}"}
            seen = {}
            for pod, node in ((helper2, lab.node2_name), (helper1, lab.node_name)):
                with port_forward(lab, HELPER_NS, pod, 1324) as url:
                    assert requests.get(url + "/version", timeout=30).json()["node"] == node
                    # its /run/containerd is its node's: each lists its own node's containers
                    listed = requests.get(f"{url}/list/{namespace}", headers=auth, timeout=30)
                    assert listed.status_code == 200, listed.text
                    seen[node] = {c["sandbox_name"] for c in listed.json()}
            assert seen == {lab.node2_name: {"on-node2"}, lab.node_name: {"on-node1"}}, seen
            # the plugin (through the API) shows each pod on its node
            listed_rows = _plugin(lab, "-n", namespace, "list", "-o", "json")
            assert listed_rows.returncode == 0, listed_rows.stderr
            rows = {(r["pod"], r["node"]) for r in json.loads(listed_rows.stdout)["items"]}
            assert rows == {("on-node2", lab.node2_name), ("on-node1", lab.node_name)}, rows
            # and the node 2 pod's container is in node 2's runc root, not in node 1's
            cid = lab.container_id(namespace, "on-node2")
            assert not Path(lab.runc_root, cid).exists()
            assert Path(NODE2_RUNC_ROOT_ON_HOST, cid, "state.json").exists()
        finally:
            if not present:  # leave the lab as this test found it
                removed = _plugin(lab, "uninstall")
                assert removed.returncode == 0, removed.stderr
