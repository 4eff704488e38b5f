"""The plugin against the real node helper (`cedana-helper serve` on loopback) behind the fake
API server's pod proxy: the answers' shapes and error bodies are the helper's own.

Only routes that need no root and no containers are exercised here; checkpoint and restore of
real containers are the end-to-end suite's.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.plugin_fakeapi import FakeCluster, make_pod, run_cli
from tests.unit.sidecar_support import helper_process


@pytest.fixture
def real_helper(tmp_path: Path) -> Iterator[str]:
    with helper_process(tmp_path, "--authorization", "none") as url:
        yield url


@pytest.fixture
def cluster(real_helper: str) -> FakeCluster:
    """The fake API server's node1 is served by the real helper."""
    fake = FakeCluster()
    fake.add_forwarding_helper("node1", real_helper)
    return fake


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
    # a path outside the helper's directory is a name (of no checkpoint), never a host path
    outside = run_cli(kubeconfig, "restore", "/etc", "--into", "counter")
    assert outside.exit_code == 3
    assert outside.stderr.rstrip().endswith("[checkpoint_not_found]")
