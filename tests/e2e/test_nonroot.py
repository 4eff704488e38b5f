"""Non-root workloads (issue 22, point 1): a pod that passes the restricted Pod Security profile
(its own user, no privilege escalation, every capability dropped, a read-only root filesystem
with a writable emptyDir) is checkpointed, restored and migrated to node 2, in a namespace that
enforces that profile, and its process goes on as the same user with its state.

The lab's root lacks CAP_SYS_RESOURCE, which CRIU's prlimit() on another user's process needs
("Can't get rlimit 0: Operation not permitted"); our CRIU carries a patch that reads
/proc/PID/limits instead (hack/patches/criu-rlimit-from-proc.patch, docs/lab.md).
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.lab import (
    Lab,
    cedana,
    counter_file,
    counts,
    goes_on,
    helper_daemonset_lock,
    install_helpers,
    pod_manifest,
)

UID = 1000


@pytest.fixture(scope="module", autouse=True)
def installed(lab: Lab) -> Iterator[None]:
    with helper_daemonset_lock():
        install_helpers(lab, "--checkpoint-repository", f"{lab.registry}/cedana/nonroot")
        yield


def restricted_pod(name: str) -> dict[str, Any]:
    pod = pod_manifest(name, ["/usr/local/bin/counter", "/work/counter", "100"])
    pod["spec"]["securityContext"] = {"runAsNonRoot": True, "runAsUser": UID,
                                      "runAsGroup": UID, "fsGroup": UID,
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    container = pod["spec"]["containers"][0]
    container["securityContext"] = {"allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]},
                                    "readOnlyRootFilesystem": True}
    container["volumeMounts"] = [{"name": "work", "mountPath": "/work"}]
    pod["spec"]["volumes"] = [{"name": "work", "emptyDir": {}}]
    return pod


def goes_on_as_its_user(lab: Lab, namespace: str, pod: str, before: int) -> None:
    first = goes_on(lab, namespace, pod, before)
    # once the placeholder's startup probe has passed (the kubelet's exec of it briefly runs
    # runc's init as root inside the container: the restore is now fast enough to meet it)
    deadline = time.monotonic() + 60
    while not (lab.pod(namespace, pod)["status"].get("containerStatuses") or [{}])[0] \
            .get("started") and time.monotonic() < deadline:
        time.sleep(0.5)
    # the program runs as its own user, not as root, and writes where it may (a runc init
    # still setting up an exec is not the program)
    uids = lab.kubectl("-n", namespace, "exec", pod, "--", "/bin/sh", "-c",
                       "for s in /proc/[0-9]*/status; do grep -q '^Name:.runc:' $s "
                       "|| grep -h '^Uid:' $s; done 2>/dev/null | sort -u").stdout
    assert {line.split()[1] for line in uids.splitlines()} == {str(UID)}, uids
    assert counter_file(lab, namespace, pod, "/work/counter") >= first


def test_a_restricted_pod_is_checkpointed_restored_and_migrated(lab: Lab,
                                                                namespace: str) -> None:
    for mode in ("enforce", "warn"):
        lab.kubectl("label", "namespace", namespace,
                    f"pod-security.kubernetes.io/{mode}=restricted", "--overwrite")
    lab.apply(restricted_pod("app"), namespace)
    lab.wait_pod_running(namespace, "app")
    lab.wait_log(namespace, "app", r"count=10\b")
    # the root filesystem is read-only indeed
    refused = lab.kubectl("-n", namespace, "exec", "app", "--", "/bin/sh", "-c",
                          "echo x > /tmp/x", check=False)
    assert refused.returncode != 0
    before = max(counts(lab, namespace, "app"))
    taken = cedana(lab, "-n", namespace, "checkpoint", "app", "--leave-running", "-o", "json")
    assert taken.returncode == 0, taken.stderr
    name = json.loads(taken.stdout)["metadata"]["name"]
    restored = cedana(lab, "-n", namespace, "restore", name, "--new-pod", "app-2")
    assert restored.returncode == 0, restored.stderr
    goes_on_as_its_user(lab, namespace, "app-2", before)
    before = max(counts(lab, namespace, "app-2"))
    moved = cedana(lab, "-n", namespace, "migrate", "app-2", "--to-node", lab.node2_name,
                   "--delete-source", "--new-pod", "app-3")
    assert moved.returncode == 0, moved.stderr
    goes_on_as_its_user(lab, namespace, "app-3", before)
    assert lab.pod(namespace, "app-3")["spec"]["nodeName"] == lab.node2_name
