"""Resource limits of one helper (docs/security.md#limits): how many heavy operations run at
once (per helper, per namespace; both ways in: the REST routes and the ops functions the
reconciler calls) and the checkpoint directory's quota (before a dump and before a pull).

Operations are held in the fake runc (its `runc-slow` file) on a real server on loopback."""
from __future__ import annotations

import json
import os
import socket
import tarfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import httpx
import psutil
import pytest
import uvicorn

from sidecar.cli import check_retention_below_quota, checkpoint_dir_quota
from sidecar.config import HelperConfig
from sidecar.errors import QuotaExceeded, TooManyRequests
from sidecar.http.app import create_app
from sidecar.http.server import server_config
from sidecar.node import proctree
from sidecar.ops import checkpoint as checkpoint_ops
from sidecar.ops.context import Helper
from sidecar.ops.limits import Limits, default_quota, dump_estimate, used_bytes
from sidecar.storage import rootfs_diff
from sidecar.storage.catalogue import Catalogue
from tests.unit.sidecar_support import (
    COUNTER,
    FIRST,
    HELPER,
    POD,
    SECOND,
    HelperApp,
    assert_error,
    install_runc_root,
    make_config,
    pod_process,
    stop,
    wait_for,
)

SLOW_DUMP_S = 2.0
#: (namespace, pod, container) of the live containers of the recorded containerd root
CONTAINERS = {
    "counter": ("default", POD, "counter"),
    "first": ("default", "two-containers", "first"),
    "second": ("default", "two-containers", "second"),
    "helper": ("kube-system", "cedana-helper-7xk2v", "helper"),
}


class Served:
    """The helper's application on a real server (the helper's own protocol and limits) in a
    thread, over a containerd root whose four containers are live processes."""

    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        self.pods = [pod_process() for _ in range(4)]
        self.root = install_runc_root("containerd", tmp_path, {
            COUNTER: self.pods[0].pid, FIRST: self.pods[1].pid, SECOND: self.pods[2].pid,
            HELPER: self.pods[3].pid})
        self.config = make_config(tmp_path, **settings)
        self.tools = Path(self.config.runc_path).parent
        self.app = create_app(self.config, kube=None)
        self.helper: Helper = self.app.state.helper
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(server_config(self.app, self.config, "127.0.0.1", 0))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, 10)
        self.pool = ThreadPoolExecutor(4)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
        for pod in self.pods:
            stop(pod)

    def target(self, name: str) -> dict[str, Any]:
        namespace, pod, container = CONTAINERS[name]
        return {"namespace": namespace, "sandbox_name": pod, "container_name": container,
                "root": str(self.root)}

    def checkpoint(self, name: str) -> httpx.Response:
        return httpx.post(f"{self.base}/checkpoint", timeout=30, json={
            "checkpoint_data": self.target(name), "leave_running": True, "with_rootfs": False})

    def hold(self, name: str) -> Future[httpx.Response]:
        """A checkpoint of `name` that stays in the fake runc for SLOW_DUMP_S: once this
        returns, it is admitted and counted."""
        (self.tools / "runc-slow").write_text(str(SLOW_DUMP_S))
        (self.tools / "runc-args.json").unlink(missing_ok=True)
        future = self.pool.submit(self.checkpoint, name)
        wait_for(lambda: (self.tools / "runc-args.json").exists(), 10)
        return future


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """Start the served helper with these settings (HelperConfig fields)."""
    made: list[Served] = []

    def start(**settings: Any) -> Served:
        made.append(Served(tmp_path, **settings))
        return made[-1]

    yield start
    for served in made:
        served.close()


def refused(response: httpx.Response, limit: str) -> dict[str, Any]:
    body = assert_error(response, 429, "too_many_requests")
    assert body["limit"] == limit
    assert response.headers["Retry-After"] == str(body["retry_after_s"])
    assert int(response.headers["Retry-After"]) >= 1
    assert response.elapsed.total_seconds() < 1.0  # at once, not queued behind the dump
    return body


# -- operations at once ---------------------------------------------------------------------------
def test_one_namespace_at_its_limit_is_refused_others_proceed(
        serve: Callable[..., Served]) -> None:
    served = serve(max_operations=8, max_operations_per_namespace=1)
    held = served.hold("counter")  # namespace default
    body = refused(served.checkpoint("first"), "namespace")
    assert (body["namespace"], body["max_operations"], body["running"]) == ("default", 1, 1)
    assert "--max-operations-per-namespace 1" in body["message"]
    assert "'default'" in body["message"]
    other = served.pool.submit(served.checkpoint, "helper")  # namespace kube-system
    assert held.result().status_code == 200
    assert other.result().status_code == 200, other.result().text
    # released: the namespace takes a checkpoint again
    (served.tools / "runc-slow").unlink()
    assert served.checkpoint("first").status_code == 200
    assert served.helper.limits.running() == 0


def test_the_helper_at_its_limit_refuses_every_heavy_route(
        serve: Callable[..., Served]) -> None:
    served = serve(max_operations=1, max_operations_per_namespace=4)
    held = served.hold("counter")
    body = refused(served.checkpoint("helper"), "helper")
    assert (body["max_operations"], body["running"]) == (1, 1)
    assert "--max-operations 1" in body["message"]
    target = served.target("helper")
    image = "127.0.0.1:5000/x/app:1"  # under the tests' registry prefix
    for path, request in [
            ("/restore", {"checkpoint_data": {**target, "checkpoint_id": "nope"}}),
            ("/checkpoint/rootfs", {**target, "image_ref": image}),
            ("/checkpoint/rootfs/crio", {**target, "image_ref": image,
                                         "new_image_ref": image + "-new"}),
            ("/restore/rootfs", {**target, "image_ref": image})]:
        refused(httpx.post(served.base + path, json=request, timeout=30), "helper")
    # reads are not counted
    for path in ("/healthz", "/version", "/checkpoints", "/list/default"):
        assert httpx.get(served.base + path, params={"root": str(served.root)}
                         if path.startswith("/list") else None).status_code == 200, path
    assert held.result().status_code == 200
    assert served.helper.limits.running() == 0


def test_the_reconcilers_way_in_counts_against_the_same_limit(
        serve: Callable[..., Served]) -> None:
    """The reconciler of cedana.io objects calls the ops functions with the same Helper."""
    served = serve(max_operations=1)
    held = served.hold("counter")
    namespace, pod, container = CONTAINERS["helper"]
    with pytest.raises(TooManyRequests) as refusal:
        checkpoint_ops.checkpoint(served.helper, namespace=namespace, pod=pod,
                                  container=container, root=str(served.root),
                                  checkpoint_path=None, leave_running=True, with_rootfs=False)
    assert refusal.value.extra["limit"] == "helper"
    assert refusal.value.headers == {"Retry-After": str(refusal.value.extra["retry_after_s"])}
    assert held.result().status_code == 200
    # and one it admits holds the REST route off
    (served.tools / "runc-args.json").unlink()
    by_reconciler = served.pool.submit(
        checkpoint_ops.checkpoint, served.helper, namespace=namespace, pod=pod,
        container=container, root=str(served.root), checkpoint_path=None, leave_running=True,
        with_rootfs=False)
    wait_for(lambda: (served.tools / "runc-args.json").exists(), 10)
    refused(served.checkpoint("first"), "helper")
    assert by_reconciler.result()["checkpoint_id"]


def test_counters_are_released_after_failures(serve: Callable[..., Served]) -> None:
    served = serve(max_operations=1, max_operations_per_namespace=1)
    missing = httpx.post(f"{served.base}/checkpoint", timeout=30, json={
        "checkpoint_data": {**served.target("counter"), "container_name": "nope"},
        "leave_running": True})
    assert_error(missing, 404, "container_not_found")
    (served.tools / "runc-fail").write_text("")
    assert_error(served.checkpoint("counter"), 500, "dump_failed")
    (served.tools / "runc-fail").unlink()
    assert_error(httpx.post(f"{served.base}/restore", timeout=30, json={"checkpoint_data": {
        **served.target("first"), "checkpoint_id": "nope"}}), 404, "checkpoint_not_found")
    assert served.helper.limits.running() == 0
    assert served.checkpoint("counter").status_code == 200
    assert served.checkpoint("first").status_code == 200


def test_admission_is_per_namespace_then_per_helper_and_zero_is_no_limit(
        tmp_path: Path) -> None:
    limits = Limits()
    config = HelperConfig(checkpoint_dir=tmp_path, max_operations=3,
                          max_operations_per_namespace=2)
    with limits.admit(config, "a", "checkpoint"), limits.admit(config, "a", "restore"):
        with pytest.raises(TooManyRequests) as refusal:
            with limits.admit(config, "a", "checkpoint"):
                pass
        assert refusal.value.extra["limit"] == "namespace"
        with limits.admit(config, "b", "checkpoint"):
            assert limits.running() == 3 and limits.running("a") == 2
            with pytest.raises(TooManyRequests) as refusal:
                with limits.admit(config, "c", "checkpoint"):
                    pass
            assert refusal.value.extra["limit"] == "helper"
    assert limits.running() == 0
    with pytest.raises(RuntimeError):  # released when the operation fails, too
        with limits.admit(config, "a", "checkpoint"):
            raise RuntimeError("dump failed")
    assert limits.running() == 0 and limits.running("a") == 0
    unlimited = HelperConfig(checkpoint_dir=tmp_path, max_operations=0,
                             max_operations_per_namespace=0)
    with limits.admit(unlimited, "a", "x"), limits.admit(unlimited, "a", "y"), \
            limits.admit(unlimited, "a", "z"):
        assert limits.running("a") == 3


def test_a_429_from_the_middleware_carries_retry_after(tmp_path: Path) -> None:
    """Unknown tokens beyond their rate are refused before any route, with the header too."""
    from fastapi.testclient import TestClient

    from sidecar.kube.reviews import Caller
    from sidecar.ops.access import CallerVerifier

    verifier = CallerVerifier(lambda token: Caller("alice"), lambda *_: (True, ""),
                              new_tokens_per_minute=1)
    client = TestClient(create_app(HelperConfig(checkpoint_dir=tmp_path / "c"), kube=None,
                                   verifier=verifier))
    assert client.get("/checkpoints", headers={"Authorization": "Bearer one"}).status_code == 200
    answer = client.get("/checkpoints", headers={"Authorization": "Bearer two"})
    body = assert_error(answer, 429, "too_many_requests")
    assert int(answer.headers["Retry-After"]) >= 1 and body["retry_after_s"] >= 0


# -- the checkpoint directory's quota -------------------------------------------------------------
def listed_size(app: HelperApp, size: int) -> None:
    """A checkpoint of `size` bytes in the catalogue (its directory present)."""
    directory = app.config.checkpoint_dir / "old"
    directory.mkdir(parents=True)
    Catalogue(app.config.checkpoint_dir).add({
        "id": "old", "path": str(directory), "namespace": "default", "pod": "p",
        "container": "c", "size_bytes": size, "created": "2026-01-01T00:00:00Z",
        "status": "complete"})


def tree_of(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_size if p.is_file() else -1
            for p in directory.rglob("*")}


def test_a_checkpoint_beyond_the_quota_is_507_nothing_frozen_nothing_written(
        tmp_path: Path) -> None:
    quota = 100 * 1024 * 1024
    app = HelperApp(tmp_path, max_checkpoint_dir_bytes=quota)
    try:
        # the counter's processes hold more than the 64 KiB left
        listed_size(app, quota - 64 * 1024)
        before = tree_of(app.config.checkpoint_dir)
        answer = app.client.post("/checkpoint", json={**app.checkpoint_body(),
                                                      "leave_running": False})
        body = assert_error(answer, 507, "quota_exceeded")
        assert body["limit_bytes"] == quota
        assert body["used_bytes"] == quota - 64 * 1024
        assert body["needed_bytes"] > 64 * 1024
        assert "kubectl cedana checkpoints prune" in body["message"]
        assert "delete checkpoints.cedana.io" in body["message"]
        assert "Nothing was frozen, written or downloaded" in body["message"]
        # nothing written, runc never ran, the container neither frozen nor stopped
        assert tree_of(app.config.checkpoint_dir) == before
        assert not (Path(app.config.runc_path).parent / "runc-args.json").exists()
        assert psutil.Process(app.source.pid).status() not in (psutil.STATUS_STOPPED,
                                                               psutil.STATUS_ZOMBIE)
        assert [e["id"] for e in Catalogue(app.config.checkpoint_dir).list()] == ["old"]
        # with room for it, the same checkpoint is taken, and its reservation let go
        Catalogue(app.config.checkpoint_dir).delete("old")
        taken = app.client.post("/checkpoint", json=app.checkpoint_body())
        assert taken.status_code == 200, taken.text
        assert cast(Any, app.client.app).state.helper.limits.reserved_bytes() == 0
        assert used_bytes(app.config) == taken.json()["size_bytes"]
    finally:
        stop(app.source)


def test_what_operations_in_flight_reserved_counts(tmp_path: Path) -> None:
    app = HelperApp(tmp_path, max_checkpoint_dir_bytes=1 << 40)
    try:
        limits = Limits()
        config = app.config
        with limits.reserve(config, (1 << 40) - 1000, "a pull"):
            with pytest.raises(QuotaExceeded) as refusal:
                checkpoint_ops.checkpoint_container(
                    config, checkpoint_ops.containers_of(Helper(config), str(app.root)),
                    "default", POD, "counter", None, True, limits=limits)
            assert refusal.value.extra["used_bytes"] == (1 << 40) - 1000
            assert "operations in progress hold" in refusal.value.message
        assert limits.reserved_bytes() == 0
        result = checkpoint_ops.checkpoint_container(
            config, checkpoint_ops.containers_of(Helper(config), str(app.root)),
            "default", POD, "counter", None, True, limits=limits)
        assert result.size_bytes > 0 and limits.reserved_bytes() == 0
    finally:
        stop(app.source)


def test_no_quota_counts_nothing(tmp_path: Path) -> None:
    limits = Limits()
    config = HelperConfig(checkpoint_dir=tmp_path, max_checkpoint_dir_bytes=0)
    with limits.reserve(config, 1 << 60, "a checkpoint"):
        assert limits.reserved_bytes() == 0


def test_the_dump_estimate_is_memory_plus_the_rootfs_diff(tmp_path: Path) -> None:
    proc = pod_process()
    try:
        tree = proctree.process_tree(proc.pid)
        rss = sum(psutil.Process(p.pid).memory_info().rss for p in tree)
        assert dump_estimate(tree, None) >= rss * 0.9
        upper = tmp_path / "upper"
        (upper / "dir").mkdir(parents=True)
        (upper / "dir" / "big").write_bytes(os.urandom(300_000))
        (upper / "small").write_text("x")
        os.symlink("small", upper / "link")
        assert dump_estimate(tree, upper) - dump_estimate(tree, None) >= 300_000
        # an upper bound of what write_diff writes
        out = tmp_path / "out"
        out.mkdir()
        rootfs_diff.write_diff(upper, out)
        assert rootfs_diff.diff_size_estimate(upper) >= (out / rootfs_diff.DIFF_TAR).stat(
        ).st_size - tarfile.RECORDSIZE
        assert rootfs_diff.diff_size_estimate(tmp_path / "missing") == 0
    finally:
        stop(proc)


def test_used_bytes_are_the_listed_checkpoints_that_exist(tmp_path: Path) -> None:
    config = HelperConfig(checkpoint_dir=tmp_path)
    catalogue = Catalogue(tmp_path)
    for name, size in (("here", 1000), ("gone", 5000)):
        catalogue.add({"id": name, "path": str(tmp_path / name), "size_bytes": size,
                       "created": name})
    (tmp_path / "here").mkdir()
    assert used_bytes(config) == 1000


def test_the_default_quota_is_a_quarter_of_the_filesystem(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    size = st.f_blocks * st.f_frsize
    assert default_quota(tmp_path) == (size // 4, size)
    # a directory not made yet: its filesystem is its nearest parent's
    assert default_quota(tmp_path / "not" / "yet") == (size // 4, size)
    assert checkpoint_dir_quota(tmp_path / "not" / "yet", None) == size // 4
    assert checkpoint_dir_quota(tmp_path, 12345) == 12345
    assert checkpoint_dir_quota(tmp_path, 0) == 0


def test_retention_at_or_above_the_quota_is_warned_about(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    check_retention_below_quota(HelperConfig(checkpoint_dir=tmp_path, max_total_bytes=500,
                                             max_checkpoint_dir_bytes=1000))
    assert not caplog.records
    check_retention_below_quota(HelperConfig(checkpoint_dir=tmp_path, max_total_bytes=1000,
                                             max_checkpoint_dir_bytes=1000))
    (record,) = caplog.records
    assert record.levelname == "WARNING" and "--max-total-bytes 1000" in record.getMessage()


def test_the_helper_logs_its_quota_at_start(tmp_path: Path) -> None:
    from tests.unit.sidecar_support import helper_process

    with helper_process(tmp_path, "--authorization", "none"):
        pass
    lines = [json.loads(line) for line in (tmp_path / "helper.log").read_text().splitlines()
             if line.startswith("{")]
    (logged,) = [line for line in lines if "checkpoint directory quota" in line["message"]]
    st = os.statvfs(tmp_path)
    assert logged["max_checkpoint_dir_bytes"] == st.f_blocks * st.f_frsize // 4
    assert logged["filesystem_bytes"] == st.f_blocks * st.f_frsize
