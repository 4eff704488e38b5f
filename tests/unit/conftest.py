"""Fixtures shared by the unit tests; the fakes and helpers they build on live in
plugin_fakeapi.py (a fake API server serving pods and the cedana.io objects),
plugin_fakehelpers.py (the node helpers reconciling those objects) and sidecar_support.py (the
helper's recorded runc roots, fake tools and processes)."""
from __future__ import annotations

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
