"""A migration's checkpoint goes straight from the source node's helper to the target's
(sidecar/ops/peer.py), on the lab's two nodes, with helpers installed WITHOUT a checkpoint
registry: before, a migration to another node needed one. And nobody else can put a
checkpoint on a node through the helpers' peer port: a tenant's pod that talks to it is
refused and the node's checkpoint directory is left as it was."""
from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.e2e.lab import (
    Lab,
    cedana,
    counter_pod,
    goes_on,
    helper_daemonset_lock,
    install_helpers,
    pod_manifest,
)

HELPER_NAMESPACE = "cedana-system"
CHECKPOINT_DIR = "/var/lib/cedana/checkpoints"
PEER_PORT = 1325


@pytest.fixture(scope="module", autouse=True)
def installed(lab: Lab) -> Iterator[None]:
    with helper_daemonset_lock():
        install_helpers(lab)  # no --checkpoint-repository: no registry at all
        yield


def _helper_pod(lab: Lab, node: str) -> dict:
    pods = json.loads(lab.kubectl("-n", HELPER_NAMESPACE, "get", "pods", "-l",
                                  "app.kubernetes.io/name=cedana-helper", "--field-selector",
                                  f"spec.nodeName={node}", "-o", "json").stdout)["items"]
    (pod,) = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    return pod


def _node_holds(lab: Lab, node: str) -> list[str]:
    """The names in the checkpoint directory of `node`, as its helper sees them."""
    pod = _helper_pod(lab, node)["metadata"]["name"]
    return sorted(lab.kubectl("-n", HELPER_NAMESPACE, "exec", pod, "-c", "helper", "--",
                              "ls", "-a", CHECKPOINT_DIR).stdout.split())


def test_a_migration_to_another_node_needs_no_registry(lab: Lab, namespace: str) -> None:
    node2 = lab.node2_name
    lab.apply(counter_pod("walker", interval_ms=200), namespace)
    lab.wait_pod_running(namespace, "walker")
    lab.wait_log(namespace, "walker", r"count=\d\d")
    before = max(int(n) for n in re.findall(r"count=(\d+)", lab.logs(namespace, "walker")))
    migrated = cedana(lab, "-n", namespace, "migrate", "walker", "--to-node", node2,
                      "--delete-source", "-o", "json")
    assert migrated.returncode == 0, migrated.stderr
    status = json.loads(migrated.stdout)["status"]
    assert status["phase"] == "Succeeded", status
    assert status["transfer"] == "direct" and status["transferMs"] >= 0, status
    assert status["storage"] == "local" and not status.get("imageRef"), status
    assert lab.pod(namespace, status["podName"])["spec"]["nodeName"] == node2
    goes_on(lab, namespace, status["podName"], before)  # the same process state goes on
    # the checkpoint is on node 2: sent there, not pulled from anywhere
    assert status["checkpointID"] in _node_holds(lab, node2)


def _tenant_talks_to(lab: Lab, tenant: str, address: str, payload: str) -> str:
    """What the peer port answers a tenant's pod that sends `payload` (shell printf syntax)."""
    name = f"nc-{uuid.uuid4().hex[:6]}"
    script = f"{{ {payload}; sleep 2; }} | nc {address} {PEER_PORT}; echo rc=$?"
    lab.apply(pod_manifest(name, ["/bin/sh", "-c", script], restartPolicy="Never"), tenant)
    end = time.monotonic() + 90
    while time.monotonic() < end:
        phase = lab.pod(tenant, name).get("status", {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            return lab.logs(tenant, name)
        time.sleep(0.5)
    raise AssertionError(f"the tenant's pod {name} did not end: {lab.logs(tenant, name)}")


def test_a_tenant_cannot_put_a_checkpoint_on_a_node(lab: Lab, namespace: str) -> None:
    node2 = lab.node2_name
    address = _helper_pod(lab, node2)["status"]["podIP"]
    before = _node_holds(lab, node2)
    forged = str(uuid.uuid4())
    hello = json.dumps({"v": 1, "checkpoint_id": forged, "from": lab.node_name, "to": node2,
                        "expires": round(time.time() + 60, 3), "salt": "ab" * 16})
    tenant = namespace  # any namespace but the helpers'
    # a well-formed hello and a frame not sealed with the cluster's key
    answer = _tenant_talks_to(
        lab, tenant, address,
        f"printf '%s\\n' '{hello}'; printf '\\000\\000\\001\\000'; "
        "head -c 256 /dev/urandom")
    (line,) = [x for x in answer.splitlines() if x.startswith("{")]
    refused = json.loads(line)
    assert refused["ok"] is False and refused["code"] == "checkpoint_untrusted", refused
    assert "not sealed with the cluster's key" in refused["message"]
    # a hello for another node, and one that is not JSON
    other = hello.replace(f'"to": "{node2}"', '"to": "elsewhere"')
    answer = _tenant_talks_to(lab, tenant, address, f"printf '%s\\n' '{other}'")
    (line,) = [x for x in answer.splitlines() if x.startswith("{")]
    assert json.loads(line)["code"] == "invalid_request", line
    answer = _tenant_talks_to(lab, tenant, address, "printf 'GET / HTTP/1.1\\r\\n\\r\\n'")
    (line,) = [x for x in answer.splitlines() if x.startswith("{")]
    assert json.loads(line)["code"] == "invalid_request", line
    # nothing was written on node 2: no checkpoint of that id, no partial one
    after = _node_holds(lab, node2)
    assert forged not in after and not [n for n in after if n.startswith(".tmp-")]
    assert [n for n in after if n not in before and not n.startswith(".catalogue")] == []
