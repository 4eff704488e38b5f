"""The helper as a real HTTP server on loopback: parallel work on different containers, one
operation per container, and the server keeps serving after bad input."""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import uvicorn

from sidecar.http.app import create_app
from tests.unit.sidecar_support import (
    COUNTER,
    FIRST,
    install_runc_root,
    make_config,
    pod_process,
    stop,
)

SLOW_DUMP_S = 1.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    pods = [pod_process(), pod_process()]
    root = install_runc_root("containerd", tmp_path, {COUNTER: pods[0].pid, FIRST: pods[1].pid})
    config = make_config(tmp_path)
    (Path(config.runc_path).parent / "runc-slow").write_text(str(SLOW_DUMP_S))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(config), log_config=None, access_log=False))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", root
    finally:
        srv.should_exit = True
        thread.join(10)
        sock.close()
        for pod in pods:
            stop(pod)


def checkpoint(base: str, root: Path, pod: str, container: str) -> httpx.Response:
    return httpx.post(f"{base}/checkpoint", timeout=30, json={
        "checkpoint_data": {"container_name": container, "sandbox_name": pod,
                            "namespace": "default", "root": str(root)},
        "leave_running": True})


def test_different_containers_in_parallel_same_container_refused(
        server: tuple[str, Path]) -> None:
    base, root = server
    jobs = [("counter-5f7c9d8b4-x2kqp", "counter"), ("two-containers", "first"),
            ("counter-5f7c9d8b4-x2kqp", "counter")]
    started = time.monotonic()
    with ThreadPoolExecutor(3) as pool:
        futures = []
        for job in jobs:
            futures.append(pool.submit(checkpoint, base, root, *job))
            time.sleep(0.2)  # the third overlaps the first's dump
        responses = [f.result() for f in futures]
    elapsed = time.monotonic() - started
    assert responses[1].status_code == 200
    codes = sorted([responses[0].status_code, responses[2].status_code])
    assert codes == [200, 409]
    refused = next(r for r in (responses[0], responses[2]) if r.status_code == 409)
    assert refused.json()["code"] == "operation_in_progress"
    # the two dumps overlapped instead of running one after the other
    assert elapsed < 2 * SLOW_DUMP_S + 0.9
    assert len(httpx.get(f"{base}/checkpoints").json()["checkpoints"]) == 2


def test_keeps_serving_after_bad_input(server: tuple[str, Path]) -> None:
    base, _ = server
    bad = [
        httpx.post(f"{base}/checkpoint", content=b"{",
                   headers={"content-type": "application/json"}),
        httpx.post(f"{base}/checkpoint", content=b"x" * (10 * 1024 * 1024),
                   headers={"content-type": "application/json"}),
        httpx.post(f"{base}/restore", json={"checkpoint_data": {}}),
        httpx.get(f"{base}/list/default", params={"root": "/nonexistent"}),
        httpx.delete(f"{base}/checkpoints/nope"),
    ]
    assert [r.status_code for r in bad] == [400, 413, 400, 400, 404]
    assert all(set(r.json()) >= {"code", "message"} for r in bad)
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
