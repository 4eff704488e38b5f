"""Whole-pod checkpoints on the lab: `kubectl cedana checkpoint POD` without -c takes every
container of the pod, its native sidecar included, in one freeze; a restore brings them all
back in a new pod, on this node or (a Migration) on node 2, each continuing from its state.

The pod: a writer counting every 10 ms into a shared emptyDir, a container holding 128 MiB,
a reader keeping the last value it read in a shell variable (in memory) and printing it, and a
native sidecar (a restartable init container) counting on its own. One freeze means the
reader's memory cannot hold a value the writer's memory had not reached. Dumped one after the
other (the writer, thawed again while the 128 MiB are dumped, then the reader), the reader
would remember a value dozens past the writer's image: this test fails so when the helper's
pod-wide freeze is taken out.
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import HelperConfig
from sidecar.errors import DumpFailed
from sidecar.ops.checkpoint import checkpoint_pod_containers
from sidecar.ops.containers import Containers
from sidecar.storage.catalogue import Catalogue
from tests.e2e.lab import (
    cedana,
    LAB_DIR,
    RUNC_ROOT,
    WORKLOAD_IMAGE,
    Lab,
    helper_daemonset_lock,
    install_helpers,
    pod_manifest,
)
from tests.e2e.test_faults import tmpfs

CHECKPOINT_DIR = Path("/var/lib/cedana/checkpoints")  # node 1's helper's, as the host sees it
READER = ("seen=0; while true; do echo seen=$seen; "
          "read v < /shared/a && [ -n \"$v\" ] && seen=$v; sleep 0.02; done")


@pytest.fixture(scope="module", autouse=True)
def installed(lab: Lab) -> Iterator[None]:
    with helper_daemonset_lock():
        install_helpers(lab, "--checkpoint-repository", f"{lab.registry}/cedana/whole-pod")
        yield


def whole_pod(name: str) -> dict[str, Any]:
    def container(cname: str, command: list[str], **extra: Any) -> dict[str, Any]:
        return {"name": cname, "image": WORKLOAD_IMAGE, "imagePullPolicy": "IfNotPresent",
                "command": command, **extra}
    shared = [{"name": "shared", "mountPath": "/shared"}]
    return pod_manifest(
        name, [], containers=[
            container("writer", ["/usr/local/bin/counter", "/shared/a", "10"],
                      volumeMounts=shared),
            # dumped between the two: its 128 MiB take a while, so without one freeze the
            # writer would run on (and the reader read on) for that long
            container("ballast", ["/usr/local/bin/memhog", "128", "1000"]),
            container("reader", ["/bin/sh", "-c", READER], volumeMounts=shared)],
        initContainers=[container("side", ["/usr/local/bin/counter", "/tmp/side", "100"],
                                  restartPolicy="Always")],
        volumes=[{"name": "shared", "emptyDir": {}}])


def numbers(text: str, key: str) -> list[int]:
    return [int(n) for n in re.findall(rf"^{key}=(\d+)$", text, re.M)]


def first_after_restore(lab: Lab, namespace: str, pod: str, container: str, key: str) -> int:
    """The first value the restored process printed (the placeholder itself prints nothing)."""
    lab.wait_log(namespace, pod, rf"(?m)^{key}=(\d+)$", container=container, timeout=60)
    return numbers(lab.logs(namespace, pod, container), key)[0]


def running_source(lab: Lab, namespace: str, name: str) -> dict[str, int]:
    lab.apply(whole_pod(name), namespace)
    lab.wait_pod_running(namespace, name)
    lab.wait_log(namespace, name, r"(?m)^count=\d{3}$", container="writer")
    lab.wait_log(namespace, name, r"(?m)^seen=[1-9]\d*$", container="reader")
    lab.wait_log(namespace, name, r"(?m)^count=[1-9]$", container="side")
    return {c: max(numbers(lab.logs(namespace, name, c), k) or [0])
            for c, k in (("writer", "count"), ("reader", "seen"), ("side", "count"))}


def assert_restored_as_one_moment(lab: Lab, namespace: str, pod: str,
                                  before: dict[str, int]) -> None:
    """Each container goes on from its own state, and the states are of one moment."""
    obj = lab.pod(namespace, pod)
    assert [c["name"] for c in obj["spec"]["containers"]] == ["writer", "ballast", "reader"]
    # first the init container that brings the placeholder's cedana-pause, then the sidecar
    assert [(c["name"], c.get("restartPolicy")) for c in obj["spec"]["initContainers"]] == \
        [("cedana-placeholder", None), ("side", "Always")]
    writer = first_after_restore(lab, namespace, pod, "writer", "count")
    reader = first_after_restore(lab, namespace, pod, "reader", "seen")
    side = first_after_restore(lab, namespace, pod, "side", "count")
    # memory, not a fresh start: each one from at least where it was before the checkpoint
    assert writer >= before["writer"] and side >= before["side"], (writer, side, before)
    assert reader >= before["reader"] > 0, (reader, before)
    # one freeze: the reader had read nothing the writer's image had not yet written
    assert reader < writer, f"reader remembered {reader}, the writer's image was at {writer}"
    # and they run on together: the reader reads what the restored writer writes now
    lab.wait_log(namespace, pod, rf"(?m)^count={writer + 50}$", container="writer")
    later = "|".join(str(writer + i) for i in range(40, 400))
    lab.wait_log(namespace, pod, rf"(?m)^seen=({later})$", container="reader")
    lab.wait_log(namespace, pod, rf"(?m)^count={side + 2}$", container="side")
    # the 128 MiB came back intact (its checksum holds) and it goes on beating, not anew
    lab.wait_log(namespace, pod, r"(?m)^memhog mib=128 beat=\d+ .* ok=1$", container="ballast")
    beats = re.findall(r"(?m)^memhog mib=128 beat=(\d+) sum=\d+ ok=(\d)$",
                       lab.logs(namespace, pod, "ballast"))
    assert int(beats[0][0]) > 0 and all(ok == "1" for _, ok in beats), beats


def test_checkpoint_and_restore_a_whole_pod(lab: Lab, namespace: str) -> None:
    before = running_source(lab, namespace, "trio")
    taken = cedana(lab, "-n", namespace, "checkpoint", "trio", "--leave-running",
                   "--storage", "local", "-o", "json")
    assert taken.returncode == 0, taken.stderr
    status = json.loads(taken.stdout)["status"]
    members = status["containers"]
    assert [m["name"] for m in members] == ["side", "writer", "ballast", "reader"]
    assert members[0]["checkpointID"] == status["checkpointID"]
    assert len({m["checkpointID"] for m in members}) == 4
    assert status["sizeBytes"] == sum(m["sizeBytes"] for m in members)
    assert status["container"] == "side,writer,ballast,reader"
    for member in members:
        assert (CHECKPOINT_DIR / member["checkpointID"] / "manifest.json").is_file()
    name = json.loads(taken.stdout)["metadata"]["name"]
    restored = cedana(lab, "-n", namespace, "restore", name, "--new-pod", "trio-2", "-o", "json")
    assert restored.returncode == 0, restored.stderr
    rst = json.loads(restored.stdout)["status"]
    assert [c["name"] for c in rst["containers"]] == ["side", "writer", "ballast", "reader"]
    assert_restored_as_one_moment(lab, namespace, "trio-2", before)
    # the restored pod is checkpointed whole again, and comes back whole again
    again = {c: max(numbers(lab.logs(namespace, "trio-2", c), k))
             for c, k in (("writer", "count"), ("reader", "seen"), ("side", "count"))}
    retaken = cedana(lab, "-n", namespace, "checkpoint", "trio-2", "--leave-running",
                     "--storage", "local", "--name", "trio-2-again")
    assert retaken.returncode == 0, retaken.stderr
    rerestored = cedana(lab, "-n", namespace, "restore", "trio-2-again", "--new-pod", "trio-3")
    assert rerestored.returncode == 0, rerestored.stderr
    assert_restored_as_one_moment(lab, namespace, "trio-3", again)
    # the source ran on (--leave-running), every container of it, none restarted
    lab.wait_log(namespace, "trio", rf"(?m)^count={before['writer'] + 100}$",
                 container="writer")
    source = lab.pod(namespace, "trio")["status"]
    assert {s["name"]: s["restartCount"] for s in
            source["initContainerStatuses"] + source["containerStatuses"]} == \
        {"side": 0, "writer": 0, "ballast": 0, "reader": 0}
    # -c still takes one container only
    one = cedana(lab, "-n", namespace, "checkpoint", "trio", "-c", "side", "-o", "json")
    assert one.returncode == 0, one.stderr
    assert "containers" not in json.loads(one.stdout)["status"]
    # deleting the Checkpoint deletes every member's data
    removed = cedana(lab, "-n", namespace, "checkpoints", "rm", name, "--wait")
    assert removed.returncode == 0, removed.stderr
    for member in members:
        assert not (CHECKPOINT_DIR / member["checkpointID"]).exists()


def test_migrate_a_whole_pod_to_the_second_node(lab: Lab, namespace: str) -> None:
    before = running_source(lab, namespace, "mover")
    moved = cedana(lab, "-n", namespace, "migrate", "mover", "--to-node", lab.node2_name,
                   "--delete-source", "-o", "json")
    assert moved.returncode == 0, moved.stderr
    status = json.loads(moved.stdout)["status"]
    new_pod = status["podName"]
    assert lab.pod(namespace, new_pod)["spec"]["nodeName"] == lab.node2_name
    handed = json.loads(lab.kubectl("-n", namespace, "get", "restores.cedana.io",
                                    status["restoreName"], "-o", "json").stdout)
    assert [c["name"] for c in handed["status"]["containers"]] == ["side", "writer", "ballast", "reader"]
    assert_restored_as_one_moment(lab, namespace, new_pod, before)
    for _ in range(120):
        gone = lab.kubectl("-n", namespace, "get", "pod", "mover", "-o", "json", check=False)
        if gone.returncode != 0 or json.loads(gone.stdout)["metadata"].get("deletionTimestamp"):
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the source pod mover was not deleted")


@pytest.mark.parametrize("leave_running", [True, False])
def test_a_member_that_fails_lists_nothing_and_every_container_runs_on(
        lab: Lab, namespace: str, leave_running: bool) -> None:
    """The checkpoint directory (a 24 MiB tmpfs) holds the sidecar's and the writer's images
    but not the 128 MiB container's: the whole-pod checkpoint fails naming the cause, nothing
    is listed, nothing of the first two is left, and every container runs on unfrozen and
    never restarted, with or without leave_running. (The helper's operation, run here with the
    node's real runc and CRIU.)"""
    pod = whole_pod("fill")
    lab.apply(pod, namespace)
    lab.wait_pod_running(namespace, "fill")
    lab.wait_log(namespace, "fill", r"(?m)^count=\d{3}$", container="writer")
    lab.wait_log(namespace, "fill", r"(?m)^memhog mib=128 beat=1 ", container="ballast")
    names = ["side", "writer", "ballast", "reader"]
    with tmpfs(LAB_DIR / "test-helpers" / f"podfull-{namespace[-6:]}", "24m") as mount:
        config = HelperConfig(checkpoint_dir=mount / "checkpoints", runtime_root=Path(RUNC_ROOT),
                              node_name=lab.node_name)
        config.checkpoint_dir.mkdir(mode=0o700)
        with pytest.raises(DumpFailed) as failed:
            checkpoint_pod_containers(config, Containers(Path(RUNC_ROOT)), namespace, "fill",
                                      names, leave_running)
        assert "No space left on device" in failed.value.message, failed.value.message
        assert Catalogue(config.checkpoint_dir).list() == []
        left = [p.name for p in config.checkpoint_dir.iterdir() if not p.name.startswith(".")]
        assert left == [] and not list(config.checkpoint_dir.glob(".tmp-*")), left
        assert not list((config.checkpoint_dir / ".frozen").glob("*"))
    statuses = lab.pod(namespace, "fill")["status"]
    assert {s["name"]: s["restartCount"] for s in
            statuses["initContainerStatuses"] + statuses["containerStatuses"]} == \
        dict.fromkeys(names, 0)
    for container, key in (("side", "count"), ("writer", "count"), ("reader", "seen")):
        last = max(numbers(lab.logs(namespace, "fill", container), key))
        later = "|".join(str(last + i) for i in range(2, 2000))
        lab.wait_log(namespace, "fill", rf"(?m)^{key}=({later})$", container=container,
                     timeout=30)
