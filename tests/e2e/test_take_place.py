"""A migrated pod takes its source's place (issue 18, point 5), on the lab.

`migrate --delete-source` of a Deployment's pod to node 2: the restored pod ends behind the same
Service, owned by the same ReplicaSet, and the ReplicaSet neither starts a fresh replica nor
deletes the restored one. A client keeps calling the Service the whole time. The lab runs no
kube-proxy, so the client does what kube-proxy would: each call goes to a ready address of the
Service's EndpointSlices, read afresh from the API (so "behind the Service" is the endpoints
controller's own verdict, not ours).

A client's TCP connection to a pod migrated to another node is closed (not left hanging), and
the client reconnects to the same server in the new pod.

A StatefulSet's pod cannot take its source's place (the StatefulSet would start a pod of the
same name again): a Migration with deleteSource is refused and the source is left untouched.
"""
from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.e2e.lab import (
    WORKLOAD_IMAGE,
    Lab,
    cedana,
    helper_daemonset_lock,
    install_helpers,
    pod_manifest,
)

#: the server: counts in memory (the counter, every 100 ms, into a file httpd serves); /www
#: is made before either starts (httpd exits at once when its home is missing)
SERVE = ("mkdir -p /www && { /usr/local/bin/counter /www/count 100 > /dev/null & "
         "exec httpd -f -p 8080 -h /www; }")


#: a call the server answered while the counter was rewriting its file (empty)
ANSWERED = -1


@pytest.fixture(scope="module", autouse=True)
def installed(lab: Lab) -> Iterator[None]:
    with helper_daemonset_lock():
        install_helpers(lab, "--checkpoint-repository", f"{lab.registry}/cedana/take-place")
        yield


def _deployment(name: str) -> list[dict[str, Any]]:
    labels = {"app": name}
    container = {"name": "web", "image": WORKLOAD_IMAGE, "imagePullPolicy": "IfNotPresent",
                 "command": ["/bin/sh", "-c", SERVE], "ports": [{"containerPort": 8080}],
                 "readinessProbe": {"httpGet": {"path": "/count", "port": 8080},
                                    "periodSeconds": 1}}
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels},
                               "spec": {"containers": [container],
                                        "terminationGracePeriodSeconds": 1,
                                        "automountServiceAccountToken": False}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
         "spec": {"selector": labels, "ports": [{"port": 8080, "targetPort": 8080}]}},
    ]


@dataclass
class Client:
    """Calls the Service every 100 ms, as long as it runs."""

    lab: Lab
    namespace: str
    service: str
    calls: list[tuple[float, str, int | None]] = field(default_factory=list)  # (t, ip, value)
    stop: threading.Event = field(default_factory=threading.Event)

    def ready_addresses(self) -> list[str]:
        slices = self.lab.kubectl(
            "-n", self.namespace, "get", "endpointslices", "-l",
            f"kubernetes.io/service-name={self.service}", "-o", "json").stdout
        return sorted(a for s in json.loads(slices)["items"] for e in s.get("endpoints") or []
                      if (e.get("conditions") or {}).get("ready") for a in e["addresses"])

    def run(self) -> None:
        while not self.stop.is_set():
            addresses = self.ready_addresses()
            value: int | None = None
            address = addresses[len(self.calls) % len(addresses)] if addresses else ""
            if address:
                try:
                    with urllib.request.urlopen(f"http://{address}:8080/count", timeout=1) as r:
                        body = r.read().decode().strip()
                    # answered; the counter may be rewriting the file (empty): no value then
                    value = int(body) if body.isdigit() else ANSWERED
                except http.client.IncompleteRead:
                    # answered too: httpd sent the length the file had, and the counter
                    # truncated it while httpd read it (a race of this workload's, not a
                    # failed call)
                    value = ANSWERED
                except (OSError, http.client.HTTPException):  # refused, reset, closed
                    value = None
            self.calls.append((time.monotonic(), address, value))
            self.stop.wait(0.1)


def _pods_of(lab: Lab, namespace: str, selector: str) -> list[dict[str, Any]]:
    out = lab.kubectl("-n", namespace, "get", "pods", "-l", selector, "-o", "json").stdout
    return list(json.loads(out)["items"])


def _watch_names(lab: Lab, namespace: str, selector: str, seen: set[str],
                 stop: threading.Event) -> None:
    """Every pod that ever matches `selector` (a watch sees a pod the ReplicaSet made and
    removed again at once, which listing now and then could miss)."""
    from kubernetes import watch
    while not stop.is_set():
        for event in watch.Watch().stream(lab.core.list_namespaced_pod, namespace,
                                          label_selector=selector, timeout_seconds=2):
            seen.add(event["object"].metadata.name)


def test_a_deployment_pod_migrated_with_delete_source_takes_its_place(lab: Lab,
                                                                      namespace: str) -> None:
    lab.apply(_deployment("web"), namespace)
    lab.kubectl("-n", namespace, "rollout", "status", "deployment/web", "--timeout=120s")
    (source,) = _pods_of(lab, namespace, "app=web")
    source_name = source["metadata"]["name"]
    replicaset = next(o for o in source["metadata"]["ownerReferences"] if o.get("controller"))
    seen: set[str] = set()
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_names, daemon=True,
                               args=(lab, namespace, "app=web", seen, stop))
    watcher.start()
    client = Client(lab, namespace, "web")
    caller = threading.Thread(target=client.run, daemon=True)
    caller.start()
    try:
        end = time.monotonic() + 60
        while sum(1 for _, _, v in client.calls if v is not None and v >= 0) < 5:
            assert time.monotonic() < end, client.calls[-5:]
            time.sleep(0.2)
        migrated = cedana(lab, "-n", namespace, "migrate", source_name, "--to-node",
                          lab.node2_name, "--delete-source", "--name", "move-web")
        assert migrated.returncode == 0, migrated.stderr
        assert migrated.stderr == "", migrated.stderr  # no "fresh replacement" warning
        before = max(v for _, _, v in client.calls if v is not None)
        new_name = f"{source_name}-migrated"
        restored = lab.pod(namespace, new_name)
        restored_ip = restored["status"]["podIP"]
        # behind the Service alone: the endpoints controller lists the restored pod, ready
        end = time.monotonic() + 60
        while client.ready_addresses() != [restored_ip]:
            assert time.monotonic() < end, (client.ready_addresses(), restored_ip)
            time.sleep(0.2)
        settled = time.monotonic()
        # the ReplicaSet keeps it: no fresh replica, the restored pod not deleted
        time.sleep(10)
        calls_after = [c for c in client.calls if c[0] > settled]
    finally:
        stop.set()
        client.stop.set()
        caller.join(5)
        watcher.join(10)
    pods = _pods_of(lab, namespace, "app=web")
    assert [p["metadata"]["name"] for p in pods] == [new_name], pods
    owners = pods[0]["metadata"]["ownerReferences"]
    assert [(o["kind"], o["uid"], o.get("controller")) for o in owners] == [
        ("ReplicaSet", replicaset["uid"], True)]
    assert pods[0]["metadata"]["labels"]["app"] == "web"
    assert pods[0]["spec"]["nodeName"] == lab.node2_name
    assert seen == {source_name, new_name}, seen  # no third pod, ever
    rs = json.loads(lab.kubectl("-n", namespace, "get", "replicaset", replicaset["name"], "-o",
                                "json").stdout)
    assert rs["status"]["replicas"] == 1 and rs["status"].get("readyReplicas") == 1, rs["status"]
    # the same server went on: its count continues from where it was (a fresh one starts at 0)
    values_after = [v for _, ip, v in calls_after if ip == restored_ip and v is not None
                    and v >= 0]
    assert values_after and values_after[0] >= before, (before, values_after[:3])
    assert values_after == sorted(values_after)
    # once the Service has only the restored pod, no call fails
    assert all(v is not None for _, _, v in calls_after), calls_after
    failed = sum(1 for _, _, v in client.calls if v is None)
    print(f"calls: {len(client.calls)}, failed during the migration: {failed}")
    migration = json.loads(lab.kubectl("-n", namespace, "get", "migration", "move-web", "-o",
                                       "json").stdout)
    assert migration["status"]["phase"] == "Succeeded"


def test_a_statefulset_pod_cannot_take_its_place_and_is_left_alone(lab: Lab,
                                                                   namespace: str) -> None:
    labels = {"app": "db"}
    lab.apply([{"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
                "spec": {"replicas": 1, "serviceName": "db",
                         "selector": {"matchLabels": labels},
                         "template": {"metadata": {"labels": labels}, "spec": {
                             "containers": [{"name": "main", "image": WORKLOAD_IMAGE,
                                             "imagePullPolicy": "IfNotPresent",
                                             "command": ["/usr/local/bin/counter",
                                                         "/tmp/counter", "100"]}],
                             "terminationGracePeriodSeconds": 1,
                             "automountServiceAccountToken": False}}}}], namespace)
    before = lab.wait_pod_running(namespace, "db-0")
    # with plain kubectl (the plugin refuses it before anything is made)
    lab.kubectl("-n", namespace, "create", "-f", "-", input=json.dumps({
        "apiVersion": "cedana.io/v1alpha1", "kind": "Migration", "metadata": {"name": "move-db"},
        "spec": {"podName": "db-0", "targetNode": lab.node2_name, "deleteSource": True}}))
    end = time.monotonic() + 60
    status: dict[str, Any] = {}
    while status.get("phase") not in ("Succeeded", "Failed"):
        assert time.monotonic() < end, status
        time.sleep(0.5)
        status = json.loads(lab.kubectl("-n", namespace, "get", "migration", "move-db", "-o",
                                        "json").stdout).get("status") or {}
    assert status["phase"] == "Failed" and status["errorCode"] == "invalid_request", status
    assert "run by StatefulSet db, which would start it again" in status["message"]
    after = lab.pod(namespace, "db-0")
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["status"]["containerStatuses"][0]["restartCount"] == 0
    assert "running" in after["status"]["containerStatuses"][0]["state"]
    assert lab.kubectl("-n", namespace, "get", "pod", "db-0-migrated",
                       check=False).returncode != 0
    plugin = cedana(lab, "-n", namespace, "migrate", "db-0", "--delete-source")
    assert plugin.returncode == 2 and "StatefulSet db" in plugin.stderr, plugin.stderr


HELPER_ACCOUNT = "system:serviceaccount:cedana-system:cedana-helper"


def test_the_helpers_account_may_not_rewrite_a_pod(lab: Lab, namespace: str) -> None:
    """`patch pods` is the helpers' for taking a place only: admission refuses the helpers'
    account any other change of a pod (a taken node rewriting images, or putting a pod behind
    another Service, stealing its calls)."""
    lab.apply(pod_manifest("tenant", ["/bin/sh", "-c", "sleep 3600"]), namespace)
    before = lab.wait_pod_running(namespace, "tenant")

    def patch(body: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return lab.kubectl("--as", HELPER_ACCOUNT, "-n", namespace, "patch", "pod", "tenant",
                           "--type", "strategic", "-p", json.dumps(body), check=False)

    refused = {
        "an image": {"spec": {"containers": [{"name": "main", "image": "evil:1"}]}},
        "a label": {"metadata": {"labels": {"app": "web"}}},
        "an owner": {"metadata": {"ownerReferences": [{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "1",
            "controller": True}]}},
        "a finalizer": {"metadata": {"finalizers": ["example.com/hold"]}},
        "the made-for mark": {"metadata": {"annotations": {"cedana.io/made-for": "x"}}},
    }
    for what, body in refused.items():
        answer = patch(body)
        assert answer.returncode != 0, what
        assert "denied request" in answer.stderr and "node helpers may" in answer.stderr, \
            (what, answer.stderr)
    allowed = patch({"metadata": {"annotations": {
        "controller.kubernetes.io/pod-deletion-cost": "-5"}}})
    assert allowed.returncode == 0, allowed.stderr
    after = lab.pod(namespace, "tenant")
    assert after["spec"]["containers"][0]["image"] == before["spec"]["containers"][0]["image"]
    assert after["metadata"].get("labels") == before["metadata"].get("labels")
    assert "ownerReferences" not in after["metadata"] and "finalizers" not in after["metadata"]
    assert after["metadata"]["annotations"] == {
        **before["metadata"].get("annotations", {}),
        "controller.kubernetes.io/pod-deletion-cost": "-5"}


def _ask(connection: socket.socket) -> bytes:
    connection.sendall(b"x\n")
    return connection.recv(64)


def _served(answer: bytes) -> int:
    match = re.match(rb"served=(\d+)", answer)
    assert match, answer
    return int(match.group(1))


def test_a_migration_to_node_2_closes_tcp_connections_and_clients_reconnect(
        lab: Lab, namespace: str) -> None:
    """A client holding a TCP connection to a pod migrated to another node is told (the
    connection is closed or reset, not left hanging), reconnects to the new pod, and finds the
    same server, whose count went on; the server drops the connection it had (restored closed,
    CRIU's --tcp-close) and goes on serving."""
    lab.apply(pod_manifest("tcp", ["/usr/local/bin/unixpeer", "tcp", "7000"]), namespace)
    address = lab.wait_pod_running(namespace, "tcp")["status"]["podIP"]
    lab.wait_log(namespace, "tcp", r"serving tcp port 7000")
    connection = socket.create_connection((address, 7000), timeout=10)
    connection.settimeout(1)
    answers = [_served(_ask(connection)) for _ in range(5)]
    moved: dict[str, subprocess.CompletedProcess[str]] = {}
    mover = threading.Thread(target=lambda: moved.update(result=cedana(
        lab, "-n", namespace, "migrate", "tcp", "--to-node", lab.node2_name, "--delete-source",
        "--new-pod", "tcp-moved")))
    mover.start()
    ended, silent = "", 0
    while not ended and silent < 300:
        try:
            answer = _ask(connection)
        except TimeoutError:
            silent += 1  # frozen for the dump: the answer waits
            continue
        except (ConnectionResetError, BrokenPipeError):
            ended = "reset"
            break
        if not answer:
            ended = "closed"
        else:
            answers.append(_served(answer))
            time.sleep(0.1)
    connection.close()
    mover.join(300)
    assert moved["result"].returncode == 0, moved["result"].stderr
    assert ended in ("closed", "reset"), f"no close after {silent} s of silence"
    again = socket.create_connection(
        (lab.pod(namespace, "tcp-moved")["status"]["podIP"], 7000), timeout=10)
    again.settimeout(10)
    first = _served(_ask(again))
    assert first > max(answers), (first, answers[-3:])  # a fresh server would say 1
    assert _served(_ask(again)) == first + 1
    again.close()
    lab.wait_log(namespace, "tcp-moved", r"connection dropped")
