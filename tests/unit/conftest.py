"""Fixtures shared by the unit tests; the fakes and helpers they build on live in
plugin_fakeapi.py (a fake API server serving pods and the cedana.io objects),
plugin_fakehelpers.py (the node helpers reconciling those objects) and sidecar_support.py (the
helper's recorded runc roots, fake tools and processes)."""
from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.plugin_fakeapi import FakeApiServer, FakeCluster, write_kubeconfig
from tests.unit.plugin_fakehelpers import FakeHelpers
from tests.unit.sidecar_support import HelperApp, stop


@pytest.fixture
def cluster() -> FakeCluster:
    """The fake API server's state: one node, node1, with a helper pod."""
    fake = FakeCluster()
    fake.add_helper("node1")
    return fake


@pytest.fixture
def helpers(cluster: FakeCluster) -> FakeHelpers:
    """The node helpers, reconciling the cedana.io objects of `cluster`."""
    return FakeHelpers(cluster)


@pytest.fixture
def api(cluster: FakeCluster) -> Iterator[FakeApiServer]:
    with FakeApiServer(cluster) as server:
        yield server


@pytest.fixture
def kubeconfig(api: FakeApiServer, tmp_path: Path) -> Path:
    return write_kubeconfig(tmp_path / "kubeconfig", api.url)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[HelperApp]:
    """The helper's application in-process, with one live container (COUNTER)."""
    helper = HelperApp(tmp_path)
    yield helper
    stop(helper.source)


@pytest.fixture(scope="session")
def c_programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The helper's C programs, built as its image builds them (gcc -static): name -> path."""
    out = tmp_path_factory.mktemp("c-programs")
    repo = Path(__file__).resolve().parents[2]
    built = {}
    for name, source in (("cedana-criu-guard", "sidecar/criu_guard.c"),
                         ("cedana-enter-cgroups", "sidecar/node/enter_cgroups.c"),
                         ("cedana-lazy-guard", "sidecar/node/lazy_guard.c")):
        subprocess.run(["gcc", "-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror", "-o",
                        str(out / name), str(repo / source)], check=True)
        built[name] = str(out / name)
    return built
