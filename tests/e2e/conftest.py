"""End-to-end fixtures: the real lab cluster, and a fresh namespace per test."""
from __future__ import annotations

import shutil
from typing import Iterator

import pytest

from tests.e2e.helper import HelperProcess
from tests.e2e.lab import LAB_DIR, Lab, ensure_lab_up, fresh_namespace


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def lab() -> Lab:
    ensure_lab_up()
    return Lab()


@pytest.fixture
def namespace(lab: Lab, request: pytest.FixtureRequest) -> Iterator[str]:
    yield from fresh_namespace(lab, request.node.name)


@pytest.fixture(scope="session")
def helper(lab: Lab, worker_id: str) -> Iterator[HelperProcess]:
    """The node helper running as root on the lab's node (one per test worker)."""
    from tests.e2e.helper import start_helper, stop_helper
    home = LAB_DIR / "test-helpers" / f"worker-{worker_id}"
    shutil.rmtree(home, ignore_errors=True)  # a run that was killed left it
    proc = start_helper(f"worker-{worker_id}")
    try:
        yield proc
    finally:
        stop_helper(proc)
        shutil.rmtree(home, ignore_errors=True)  # its checkpoints: GBs per run otherwise
