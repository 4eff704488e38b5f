"""The placeholder a checkpoint is restored into needs nothing from the workload's image: an
image holding one static binary (no shell, no sleep) restores with --new-pod and migrates to
node 2. The restored pod has the source's probes, held back by a startup probe until the
restored program runs, and they really run: breaking the program's health endpoint makes the
kubelet restart the container, which then runs the program afresh."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.lab import (
    Lab,
    cedana,
    counter_pod,
    counts,
    goes_on,
    helper_daemonset_lock,
    install_helpers,
    pod_manifest,
)

STATIC_IMAGE = "docker.io/cedana-lab/static:1"  # hack/lab-images.sh: /counter and nothing else
PAUSE = "/.cedana/cedana-pause"


@pytest.fixture(scope="module", autouse=True)
def installed(lab: Lab) -> Iterator[None]:
    with helper_daemonset_lock():
        install_helpers(lab, "--checkpoint-repository", f"{lab.registry}/cedana/placeholder")
        yield


def test_an_image_with_only_a_static_binary(lab: Lab, namespace: str) -> None:
    pod = pod_manifest("lone", [], image=STATIC_IMAGE, pull_policy="Never")
    del pod["spec"]["containers"][0]["command"]  # the image's entrypoint: /counter
    lab.apply(pod, namespace)
    lab.wait_pod_running(namespace, "lone")
    lab.wait_log(namespace, "lone", r"count=5\b")
    # nothing to sleep with in that image
    shell = lab.kubectl("-n", namespace, "exec", "lone", "--", "/bin/sh", "-c", "true",
                        check=False)
    assert shell.returncode != 0
    # printed before the checkpoint: the restored process must go on from at least there
    before = max(counts(lab, namespace, "lone"))
    taken = cedana(lab, "-n", namespace, "checkpoint", "lone", "--leave-running",
                   "--storage", "local", "-o", "json")
    assert taken.returncode == 0, taken.stderr
    restored = cedana(lab, "-n", namespace, "restore", json.loads(taken.stdout)["metadata"]
                      ["name"], "--new-pod", "lone-2")
    assert restored.returncode == 0, restored.stderr
    spec = lab.pod(namespace, "lone-2")["spec"]
    (container,) = spec["containers"]
    # the image's own entrypoint, run afresh should the kubelet restart the placeholder
    assert container["command"] == [PAUSE, "run", "main", "--", "/counter", "/counter.txt",
                                    "200"]
    assert container["image"] == STATIC_IMAGE
    assert [c["name"] for c in spec["initContainers"]] == ["cedana-placeholder"]
    goes_on(lab, namespace, "lone-2", before)
    # and to the other node, through the registry
    before = max(counts(lab, namespace, "lone"))
    moved = cedana(lab, "-n", namespace, "migrate", "lone", "--to-node", lab.node2_name,
                   "--delete-source", "-o", "json")
    assert moved.returncode == 0, moved.stderr
    new_pod = json.loads(moved.stdout)["status"]["podName"]
    assert lab.pod(namespace, new_pod)["spec"]["nodeName"] == lab.node2_name
    goes_on(lab, namespace, new_pod, before)


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _wait(lab: Lab, namespace: str, name: str, what: str, check: Any,
          timeout: float = 90) -> dict[str, Any]:
    end = time.monotonic() + timeout
    pod: dict[str, Any] = {}
    while time.monotonic() < end:
        pod = lab.pod(namespace, name)
        if check(pod):
            return pod
        time.sleep(0.5)
    raise AssertionError(f"pod {name}: {what} not within {timeout} s: "
                         f"{json.dumps(pod.get('status'))[:1500]}")


def test_probes_come_back_and_really_run(lab: Lab, namespace: str) -> None:
    script = ("mkdir -p /www && echo ok > /www/healthz && httpd -p 8080 -h /www && "
              "exec /usr/local/bin/counter /tmp/counter 200")
    pod = pod_manifest("served", ["/bin/sh", "-c", script])
    probe = {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1,
             "failureThreshold": 2, "timeoutSeconds": 1}
    pod["spec"]["containers"][0].update(livenessProbe=probe, readinessProbe=probe)
    lab.apply(pod, namespace)
    _wait(lab, namespace, "served", "Ready", _ready)
    # printed before the checkpoint: the restored process must go on from at least there
    before = max(counts(lab, namespace, "served"))
    taken = cedana(lab, "-n", namespace, "checkpoint", "served", "--leave-running",
                   "--storage", "local", "-o", "json")
    assert taken.returncode == 0, taken.stderr
    restored = cedana(lab, "-n", namespace, "restore", json.loads(taken.stdout)["metadata"]
                      ["name"], "--new-pod", "served-2")
    assert restored.returncode == 0, restored.stderr
    container = lab.pod(namespace, "served-2")["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["exec"]["command"] == [PAUSE, "restored"]
    # ready once the restored server answers its probes, and never restarted on the way
    restored_pod = _wait(lab, namespace, "served-2", "Ready", _ready)
    assert restored_pod["status"]["containerStatuses"][0]["restartCount"] == 0
    goes_on(lab, namespace, "served-2", before)
    # the probes really run: a broken health endpoint has the kubelet restart the container,
    # and the restart runs the program afresh (it counts from 0 and serves again)
    lab.kubectl("-n", namespace, "exec", "served-2", "--", "rm", "/www/healthz")
    _wait(lab, namespace, "served-2", "restarted",
          lambda p: p["status"]["containerStatuses"][0]["restartCount"] >= 1)
    again = _wait(lab, namespace, "served-2", "Ready after the restart", _ready)
    assert again["status"]["containerStatuses"][0]["restartCount"] == 1
    assert counts(lab, namespace, "served-2")[0] == 0


def test_a_restored_pod_is_checkpointed_again_for_generations(lab: Lab, namespace: str) -> None:
    """Chains: checkpoint -> restore -> checkpoint the restored pod (twice periodically, while
    it runs, then stopping it) -> restore -> migrate to node 2 -> checkpoint again there ->
    restore: four generations after the first, one process whose count never starts again."""
    lab.apply(counter_pod("gen0", interval_ms=100), namespace)
    lab.wait_pod_running(namespace, "gen0")
    lab.wait_log(namespace, "gen0", r"count=20\b")
    pod = "gen0"
    for gen in (1, 2):
        if gen == 2:  # periodic checkpoints of a restored workload, which keeps running
            for n in range(2):
                periodic = cedana(lab, "-n", namespace, "checkpoint", pod, "--leave-running",
                                  "--name", f"periodic-{n}")
                assert periodic.returncode == 0, periodic.stderr
            lab.wait_log(namespace, pod, rf"count={max(counts(lab, namespace, pod)) + 3}\b")
        before = max(counts(lab, namespace, pod))
        taken = cedana(lab, "-n", namespace, "checkpoint", pod, "--name", f"gen{gen}")
        assert taken.returncode == 0, taken.stderr
        restored = cedana(lab, "-n", namespace, "restore", f"gen{gen}", "--new-pod",
                          f"gen{gen}")
        assert restored.returncode == 0, restored.stderr
        goes_on(lab, namespace, f"gen{gen}", before)
        pod = f"gen{gen}"
    before = max(counts(lab, namespace, pod))
    moved = cedana(lab, "-n", namespace, "migrate", pod, "--to-node", lab.node2_name,
                   "--delete-source", "--new-pod", "gen3")
    assert moved.returncode == 0, moved.stderr
    goes_on(lab, namespace, "gen3", before)
    before = max(counts(lab, namespace, "gen3"))
    taken = cedana(lab, "-n", namespace, "checkpoint", "gen3", "--name", "gen4")
    assert taken.returncode == 0, taken.stderr
    restored = cedana(lab, "-n", namespace, "restore", "gen4", "--new-pod", "gen4")
    assert restored.returncode == 0, restored.stderr
    goes_on(lab, namespace, "gen4", before)
    assert lab.pod(namespace, "gen4")["spec"]["nodeName"] == lab.node2_name
    # one placeholder, not a placeholder of a placeholder
    spec = lab.pod(namespace, "gen4")["spec"]
    assert spec["containers"][0]["command"] == [PAUSE, "run", "main", "--",
                                                "/usr/local/bin/counter", "/tmp/counter", "100"]
    assert [c["name"] for c in spec["initContainers"]] == ["cedana-placeholder"]
