"""A migration's checkpoint goes straight from the source node's helper to the target's
(sidecar/ops/peer.py), on the lab's two nodes, with helpers installed WITHOUT a checkpoint
registry: before, a migration to another node needed one. And nobody else can put a
checkpoint on a node through the helpers' peer port: a tenant's pod that talks to it is
refused and the node's checkpoint directory is left as it was."""
from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.e2e.lab import (
    Lab,
    cedana,
    counter_pod,
    goes_on,
    helper_pod,
    helper_daemonset_lock,
    install_helpers,
    node_holds,
    pod_manifest,
)

NODE2_NETNS = "cedana-lab-node2"
PEER_PORT = 1325


@pytest.fixture(scope="module", autouse=True)
def installed(lab: Lab) -> Iterator[None]:
    with helper_daemonset_lock():
        install_helpers(lab)  # no --checkpoint-repository: no registry at all
        yield


def test_a_migration_to_another_node_needs_no_registry(lab: Lab, namespace: str) -> None:
    node2 = lab.node2_name
    before = _counting(lab, namespace, "walker")
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
    assert status["checkpointID"] in node_holds(lab, node2)


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
    address = helper_pod(lab, node2)["status"]["podIP"]
    before = node_holds(lab, node2)
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
    after = node_holds(lab, node2)
    assert forged not in after and not [n for n in after if n.startswith(".tmp-")]
    assert [n for n in after if n not in before and not n.startswith(".catalogue")] == []


@contextlib.contextmanager
def _peer_port_refused() -> Iterator[None]:
    """Node 2's peer port answers every connection with a reset (its network namespace's
    firewall), for the length of the block."""
    rule = ["INPUT", "-p", "tcp", "--dport", str(PEER_PORT), "-j", "REJECT",
            "--reject-with", "tcp-reset"]
    iptables = ["ip", "netns", "exec", NODE2_NETNS, "iptables"]
    subprocess.run([*iptables, "-I", *rule], check=True, capture_output=True, timeout=30)
    try:
        yield
    finally:
        subprocess.run([*iptables, "-D", *rule], check=True, capture_output=True, timeout=30)


def _counting(lab: Lab, namespace: str, name: str) -> int:
    """A counter pod on node 1, counting; its latest count."""
    lab.apply(counter_pod(name, interval_ms=200), namespace)
    lab.wait_pod_running(namespace, name)
    lab.wait_log(namespace, name, r"count=\d\d")
    return max(int(n) for n in re.findall(r"count=(\d+)", lab.logs(namespace, name)))


def test_a_failed_hand_over_leaves_the_source_running(lab: Lab, namespace: str) -> None:
    """The network between the nodes cut (node 2's peer port refuses): with no registry to
    fall back on, the migration fails, and its source, frozen until the target would have
    restored it, goes on: the same process, its count continuing, never restarted."""
    _counting(lab, namespace, "stay")
    with _peer_port_refused():
        migrated = cedana(lab, "-n", namespace, "migrate", "stay", "--to-node",
                          lab.node2_name, "--delete-source", "--name", "cut")
    assert migrated.returncode != 0
    status = json.loads(lab.kubectl("-n", namespace, "get", "migration", "cut", "-o",
                                    "json").stdout)["status"]
    assert status["phase"] == "Failed" and status["errorCode"] == "restore_failed", status
    assert "could not be sent to node" in status["message"], status["message"]
    assert "pod stay was not stopped and goes on" in status["message"], status["message"]
    assert status["checkpointID"] in status["message"]  # kept on node 1, said where
    # the source: not deleted, not restarted, its count goes on from where it was
    source = lab.pod(namespace, "stay")
    assert not source["metadata"].get("deletionTimestamp")
    assert source["status"]["containerStatuses"][0]["restartCount"] == 0
    before = max(int(n) for n in re.findall(r"count=(\d+)", lab.logs(namespace, "stay")))
    lab.wait_log(namespace, "stay", rf"count={before + 3}\b")
    counts = [int(n) for n in re.findall(r"count=(\d+)", lab.logs(namespace, "stay"))]
    assert counts == list(range(counts[0], counts[0] + len(counts)))  # one process, no gap
    # the new pod made for it is gone (or going)
    gone = lab.kubectl("-n", namespace, "get", "pod", "stay-migrated", "-o", "json",
                       check=False)
    assert gone.returncode != 0 or json.loads(gone.stdout)["metadata"].get("deletionTimestamp")


def test_with_a_registry_a_refused_transfer_goes_through_it(lab: Lab, namespace: str) -> None:
    """Last in this file: the helpers are installed again, with a checkpoint registry. Node 2's
    peer port refusing, the migration goes through the registry and succeeds."""
    install_helpers(lab, "--checkpoint-repository", f"{lab.registry}/cedana/peer-fallback")
    before = _counting(lab, namespace, "detour")
    with _peer_port_refused():
        migrated = cedana(lab, "-n", namespace, "migrate", "detour", "--to-node",
                          lab.node2_name, "--delete-source", "-o", "json")
    assert migrated.returncode == 0, migrated.stderr
    status = json.loads(migrated.stdout)["status"]
    assert status["transfer"] == "registry" and status["storage"] == "remote", status
    assert status["imageRef"].startswith(f"{lab.registry}/cedana/peer-fallback:"), status
    assert lab.pod(namespace, status["podName"])["spec"]["nodeName"] == lab.node2_name
    goes_on(lab, namespace, status["podName"], before)
