"""Remote checkpoints on the lab: pushed by one helper to the lab's registry in each compression,
pulled and restored by another helper with its own checkpoint directory (another node's disk);
a tampered image is refused before the placeholder is touched; retention deletes the oldest
locally and remotely; Events and annotations tell Kubernetes users what happened."""
from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from tests.e2e.helper import HelperProcess, RssSampler, start_helper, stop_helper
from tests.e2e.lab import (
    KUBECONFIG,
    LAB_DIR,
    Lab,
    counter_pod,
    pod_manifest,
    sleeper_pod,
)

pytestmark = pytest.mark.e2e

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REGISTRY_BLOBS = LAB_DIR / "registry" / "docker" / "registry" / "v2" / "blobs" / "sha256"


@pytest.fixture()
def repo() -> str:
    return f"cedana/remote-{uuid.uuid4().hex[:8]}"


@pytest.fixture()
def helpers(lab: Lab, repo: str, tmp_path: Path) -> Iterator[Any]:
    """Helpers with the lab registry as their checkpoint store, each with its own disk."""
    started: list[HelperProcess] = []

    def start(name: str, *extra: str) -> HelperProcess:
        helper = start_helper(f"{name}-{uuid.uuid4().hex[:6]}", tmp_path / name, extra_args=[
            "--checkpoint-repository", f"{lab.registry}/{repo}",
            "--kubeconfig", str(KUBECONFIG), *extra])
        started.append(helper)
        return helper

    yield start
    for helper in started:
        stop_helper(helper)


def _registry(lab: Lab, method: str, path: str, **kw: Any) -> requests.Response:
    return requests.request(method, f"https://{lab.registry}/v2/{path}",
                            auth=(lab.registry_user, lab.registry_password),
                            verify=lab.ca_cert, timeout=60, **kw)


def _image(lab: Lab, repo: str, tag: str) -> requests.Response:
    return _registry(lab, "GET", f"{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})


def _counts(text: str) -> list[int]:
    return [int(line.split("=")[1]) for line in text.splitlines() if line.startswith("count=")]


def test_each_compression_round_trips_to_another_disk(lab: Lab, namespace: str, repo: str,
                                                      helpers: Any) -> None:
    source_helper = helpers("source")
    other_node = helpers("other")
    lab.apply(counter_pod("counter", interval_ms=100), namespace)
    lab.wait_pod_running(namespace, "counter")
    lab.wait_log(namespace, "counter", r"count=\d\d")
    for kind in ("none", "gzip", "lz4", "zstd"):
        lab.apply(sleeper_pod(f"copy-{kind}"), namespace)
        lab.wait_pod_running(namespace, f"copy-{kind}")
        before = max(_counts(lab.logs(namespace, "counter")))
        dumped = source_helper.checkpoint(namespace, "counter", leave_running=True,
                                          compression=kind)
        assert dumped.status_code == 200, dumped.text
        answer = dumped.json()
        ident = answer["checkpoint_id"]
        assert answer["storage"] == "remote" and answer["remote"]["compression"] == kind

        got = _image(lab, repo, ident)
        assert got.status_code == 200, got.text
        image = got.json()
        ann = image["annotations"]
        assert ann["io.kubernetes.cri-o.annotations.checkpoint.name"] == "main"
        assert ann["org.criu.checkpoint.container.name"] == "main"
        assert ann["io.cedana.checkpoint.compression"] == kind
        # CRI names the image by any reference sharing its image ID (other tests push aliases)
        assert ann["io.kubernetes.cri-o.annotations.checkpoint.rootfsImageName"]
        layer = image["layers"][0]
        assert layer["size"] == answer["remote"]["size_bytes"]
        if kind == "none":
            assert layer["size"] == answer["remote"]["uncompressed_bytes"]
        else:
            assert layer["size"] < answer["remote"]["uncompressed_bytes"]

        # the other helper has never seen it: it pulls, verifies, restores
        assert not (other_node.checkpoint_dir / ident).exists()
        restored = other_node.restore(namespace, f"copy-{kind}", checkpoint_id=ident)
        assert restored.status_code == 200, restored.text
        assert restored.json()["pulled"]["size_bytes"] == layer["size"]
        first = int(lab.wait_log(namespace, f"copy-{kind}", r"count=(\d+)").group(1))
        assert first >= before
        lab.wait_log(namespace, f"copy-{kind}", rf"count={first + 3}\b")
        mode = (other_node.checkpoint_dir / ident / "checkpoint").stat().st_mode & 0o777
        assert mode == 0o700
    listed = other_node.get("/checkpoints", params={"remote": "true"}).json()["checkpoints"]
    assert {e["compression"] for e in listed} == {"none", "gzip", "lz4", "zstd"}
    assert all(e["where"] == "local+remote" for e in listed)


def _flip_one_byte(digest: str) -> None:
    data = REGISTRY_BLOBS / digest[7:9] / digest[7:] / "data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))


def test_a_tampered_remote_image_is_refused_before_the_placeholder_is_touched(
        lab: Lab, namespace: str, repo: str, helpers: Any) -> None:
    source_helper = helpers("source")
    other_node = helpers("other")
    lab.apply(counter_pod("counter", interval_ms=100), namespace)
    lab.apply(sleeper_pod("target"), namespace)
    lab.wait_pod_running(namespace, "counter")
    lab.wait_pod_running(namespace, "target")
    dumped = source_helper.checkpoint(namespace, "counter", leave_running=True,
                                      compression="none")
    assert dumped.status_code == 200, dumped.text
    ident = dumped.json()["checkpoint_id"]
    _flip_one_byte(_image(lab, repo, ident).json()["layers"][0]["digest"])

    refused = other_node.restore(namespace, "target", checkpoint_id=ident)
    assert refused.status_code == 422, refused.text
    assert refused.json()["code"] == "checkpoint_corrupted"
    assert "digest" in refused.json()["message"] or "sha256" in refused.json()["message"]
    # the placeholder still only sleeps, nothing partial is listed, no temporary left behind
    ps = lab.kubectl("-n", namespace, "exec", "target", "--", "ps", "-o", "comm").stdout
    assert "counter" not in ps
    assert lab.logs(namespace, "target") == ""
    status = lab.pod(namespace, "target")["status"]["containerStatuses"][0]
    assert status["restartCount"] == 0 and "running" in status["state"]
    assert other_node.get("/checkpoints").json()["checkpoints"] == []
    assert not [n for n in os.listdir(other_node.checkpoint_dir) if not n.startswith(".catalogue")]
    # the untouched local copy still restores on the source's node
    fine = source_helper.restore(namespace, "target", checkpoint_id=ident)
    assert fine.status_code == 200, fine.text


def test_retention_deletes_the_oldest_locally_and_remotely(
        lab: Lab, namespace: str, repo: str, helpers: Any) -> None:
    helper = helpers("kept", "--max-checkpoints-per-container", "2")
    lab.apply(counter_pod("counter", interval_ms=200), namespace)
    lab.wait_pod_running(namespace, "counter")
    ids = []
    for _ in range(3):
        dumped = helper.checkpoint(namespace, "counter", leave_running=True)
        assert dumped.status_code == 200, dumped.text
        ids.append(dumped.json()["checkpoint_id"])
    assert dumped.json()["retention_removed"] == [ids[0]]
    assert not (helper.checkpoint_dir / ids[0]).exists()
    assert _image(lab, repo, ids[0]).status_code == 404
    assert all(_image(lab, repo, i).status_code == 200 for i in ids[1:])
    local = [e["id"] for e in helper.get("/checkpoints").json()["checkpoints"]]
    assert local == ids[1:]
    # prune now, tighter than the configured limit: a dry run changes nothing
    dry = helper.post("/checkpoints/prune", {"max_per_container": 1, "dry_run": True})
    assert [r["id"] for r in dry.json()["removed"]] == [ids[1]]
    assert (helper.checkpoint_dir / ids[1]).exists()
    pruned = helper.post("/checkpoints/prune", {"max_per_container": 1})
    assert [r["id"] for r in pruned.json()["removed"]] == [ids[1]]
    assert not (helper.checkpoint_dir / ids[1]).exists()
    assert _image(lab, repo, ids[1]).status_code == 404
    assert _image(lab, repo, ids[2]).status_code == 200
    # rm deletes local files and the registry image
    removed = helper.delete(f"/checkpoints/{ids[2]}")
    assert removed.status_code == 200 and removed.json()["removed_remote"] is True
    assert _image(lab, repo, ids[2]).status_code == 404
    assert helper.delete(f"/checkpoints/{ids[2]}").status_code == 404


def _events(lab: Lab, namespace: str, pod: str, count: int = 1) -> list[dict[str, Any]]:
    """The helper's Events on the pod, once there are `count` (the helper writes them on a
    thread of their own, after the operation answered: within seconds)."""
    end = time.monotonic() + 30
    while True:
        out = lab.kubectl("-n", namespace, "get", "events", "--field-selector",
                          f"involvedObject.name={pod}", "-o", "json").stdout
        found = [e for e in json.loads(out)["items"] if e["source"].get("component") ==
                 "cedana-helper"]
        if len(found) >= count or time.monotonic() > end:
            return found
        time.sleep(0.2)


def test_events_and_provenance_name_the_right_objects(
        lab: Lab, namespace: str, repo: str, helpers: Any) -> None:
    helper = helpers("events")
    lab.apply(counter_pod("counter", interval_ms=200), namespace)
    lab.apply(sleeper_pod("target"), namespace)
    lab.apply(pod_manifest("uring", ["/usr/local/bin/iouring"]), namespace)
    for pod in ("counter", "target", "uring"):
        lab.wait_pod_running(namespace, pod)
    dumped = helper.checkpoint(namespace, "counter", leave_running=True)
    assert dumped.status_code == 200, dumped.text
    ident = dumped.json()["checkpoint_id"]
    assert helper.restore(namespace, "target", checkpoint_id=ident).status_code == 200
    again = helper.restore(namespace, "target", checkpoint_id=ident)
    assert again.status_code == 409
    lab.wait_log(namespace, "uring", r"iouring fd=\d+ beat=2")
    failed = helper.checkpoint(namespace, "uring", leave_running=True)
    assert failed.status_code == 422

    source = _events(lab, namespace, "counter")
    assert [e["reason"] for e in source] == ["Checkpointed"]
    assert ident in source[0]["message"] and source[0]["involvedObject"]["kind"] == "Pod"
    assert source[0]["involvedObject"]["uid"] == lab.pod(namespace, "counter")["metadata"]["uid"]
    target = sorted(e["reason"] for e in _events(lab, namespace, "target", count=2))
    assert target == ["RestoreFailed", "Restored"]
    restored = next(e for e in _events(lab, namespace, "target") if e["reason"] == "Restored")
    assert ident in restored["message"] and f"{namespace}/counter" in restored["message"]
    bad = next(e for e in _events(lab, namespace, "target") if e["reason"] == "RestoreFailed")
    assert bad["type"] == "Warning" and "already_restored" in bad["message"]
    uring = _events(lab, namespace, "uring")
    assert [e["reason"] for e in uring] == ["CheckpointFailed"]
    assert uring[0]["type"] == "Warning" and "io_uring_unsupported" in uring[0]["message"]
    described = lab.kubectl("-n", namespace, "describe", "pod", "target").stdout
    assert "Restored" in described and "cedana-helper" in described

    # the helper changes no pod (it may not patch pods): the provenance is in the Event
    assert f"node {lab.node_name}" in restored["message"] and "(container main" in restored["message"]
    annotations = lab.pod(namespace, "target")["metadata"].get("annotations") or {}
    assert not [k for k in annotations if k.startswith("cedana.io/")], annotations


def test_inspect_shows_processes_and_criu_stats(lab: Lab, namespace: str, helpers: Any) -> None:
    helper = helpers("inspect")
    lab.apply(pod_manifest("family", ["/bin/sh", "-c", "sleep 1000 & sleep 2000 & wait"]),
              namespace)
    lab.wait_pod_running(namespace, "family")
    dumped = helper.checkpoint(namespace, "family", leave_running=True, storage="local")
    assert dumped.status_code == 200, dumped.text
    ident = dumped.json()["checkpoint_id"]
    assert dumped.json()["storage"] == "local"
    info = helper.get(f"/checkpoints/{ident}").json()
    assert [p["name"] for p in info["processes"]] == ["sh", "sleep", "sleep"]
    stats = info["criu_stats"]["dump"]
    assert stats["pages_written"] > 0 and stats["frozen_time_us"] > 0
    assert info["where"] == "local" and info["manifest"]["checkpoint_id"] == ident


def test_push_and_pull_stream_without_a_copy_in_memory(lab: Lab, namespace: str,
                                                       helpers: Any) -> None:
    """256 MiB of process memory pushed and pulled uncompressed: the helper's own memory
    grows by far less than the checkpoint (the archive streams through 1 MiB chunks)."""
    source_helper = helpers("stream-src")
    other_node = helpers("stream-dst")
    lab.apply(pod_manifest("hog", ["/usr/local/bin/memhog", "256", "10"]), namespace)
    lab.apply(pod_manifest("hog-copy", ["/bin/sh", "-c", "while true; do sleep 3600; done"]),
              namespace)
    lab.wait_pod_running(namespace, "hog")
    lab.wait_pod_running(namespace, "hog-copy")
    lab.wait_log(namespace, "hog", r"\d", timeout=120)

    def peak_growth(helper: HelperProcess, request: Any) -> tuple[Any, int]:
        sampler = RssSampler(helper.proc.pid)
        base = sampler.process.memory_info().rss
        with sampler:
            answer = request()
        # the sampler measured the helper (a peak of 0 would pass the limit vacuously)
        assert sampler.samples > 0 and sampler.peak >= base, (sampler.samples, sampler.peak, base)
        return answer, sampler.peak - base

    dumped, push_growth = peak_growth(source_helper, lambda: source_helper.checkpoint(
        namespace, "hog", leave_running=True, compression="none"))
    assert dumped.status_code == 200, dumped.text
    moved = dumped.json()["remote"]["size_bytes"]
    assert moved > 256 << 20
    restored, pull_growth = peak_growth(other_node, lambda: other_node.restore(
        namespace, "hog-copy", checkpoint_id=dumped.json()["checkpoint_id"]))
    assert restored.status_code == 200, restored.text
    assert restored.json()["pulled"]["size_bytes"] == moved
    limit = 64 << 20
    assert push_growth < limit and pull_growth < limit, (push_growth, pull_growth)
