"""The plugin against the real node helper (`cedana-helper serve` on loopback) behind the fake
API server's pod proxy: the answers' shapes and error bodies are the helper's own.

Only routes that need no root and no containers are exercised here; checkpoint and restore of
real containers are the end-to-end suite's.
"""
# ruff: noqa: F811  (pytest fixtures imported below are parameters of the tests)
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.plugin_fakeapi import (  # noqa: F401  (fixtures: api)
    FakeApiServer,
    FakeCluster,
    api,
    make_pod,
    run_cli,
    write_kubeconfig,
)

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def real_helper(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    (tmp_path / "runc").mkdir()
    log = (tmp_path / "helper.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "serve", "--host", "127.0.0.1", "--port",
         str(port), "--checkpoint-dir", str(tmp_path / "checkpoints"), "--runtime-root",
         str(tmp_path / "runc"), "--criu-runc-config", str(tmp_path / "criu-runc.conf"),
         "--authorization", "none"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        env=dict(os.environ, NODE_NAME="node1", PYTHONPATH=str(REPO)))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("the helper did not start: "
                                + (tmp_path / "helper.log").read_text(errors="replace"))
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def cluster(real_helper: str) -> FakeCluster:
    fake = FakeCluster()
    fake.add_forwarding_helper("node1", real_helper)
    return fake


@pytest.fixture
def kubeconfig(api: FakeApiServer, tmp_path: Path) -> Path:
    return write_kubeconfig(tmp_path / "kubeconfig", api.url)


def test_version_of_the_real_helper(kubeconfig: Path) -> None:
    from sidecar import version as helper_version

    result = run_cli(kubeconfig, "version", "-o", "json")
    assert result.exit_code == 0, result.stderr
    (node,) = json.loads(result.stdout)["nodes"]
    assert node["node"] == "node1" and node["helper"] == helper_version
    assert node["runc"] and node["criu"] and node["error"] == ""


def test_list_and_empty_catalogue(kubeconfig: Path) -> None:
    listed = run_cli(kubeconfig, "list")
    assert listed.exit_code == 0, listed.stderr
    assert listed.stderr == "No containers found in namespace default.\n"
    catalogue = run_cli(kubeconfig, "checkpoints", "ls", "-A", "-o", "json")
    assert catalogue.exit_code == 0, catalogue.stderr
    assert json.loads(catalogue.stdout)["items"] == []


def test_helper_errors_come_through_with_their_codes(cluster: FakeCluster,
                                                     kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    missing = run_cli(kubeconfig, "checkpoint", "counter")
    assert missing.exit_code == 3
    assert missing.stderr.startswith("error: helper on node node1: ")
    assert missing.stderr.rstrip().endswith("[container_not_found]")
    outside = run_cli(kubeconfig, "restore", "/etc", "--into", "counter")
    assert outside.exit_code == 2
    assert outside.stderr.rstrip().endswith("[path_outside_checkpoint_dir]")
