"""A Checkpoint whose operation meets an error that is not one of the helper's own (a defect,
or a fault of the moment): tried again, then Failed with that error's words, never left
Running to read as "the helper restarted"."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from sidecar.reconcile import checkpoints
from sidecar.reconcile.common import Ctx


class Objects:
    """The few calls _take makes on the API, kept in memory (the e2e tests use the real one)."""

    def __init__(self) -> None:
        self.statuses: list[dict[str, Any]] = []

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        return {"spec": {"containers": [{"name": "app"}]}}

    def set_finalizers(self, plural: str, obj: dict[str, Any], finalizers: list[str]
                       ) -> dict[str, Any]:
        return {**obj, "metadata": {**obj["metadata"], "finalizers": finalizers}}

    def patch_status(self, plural: str, obj: dict[str, Any], status: dict[str, Any],
                     precondition: bool = False) -> dict[str, Any]:
        self.statuses.append(status)
        return {**obj, "status": {**obj.get("status", {}), **status}}


def _obj() -> dict[str, Any]:
    return {"kind": "Checkpoint", "metadata": {"name": "c", "namespace": "ns", "uid": "u1",
                                               "generation": 1},
            "spec": {"podName": "p", "container": "app"}, "status": {}}


def test_an_unexpected_error_is_retried_then_failed_with_its_words(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise FileNotFoundError(2, "No such file or directory", "/proc/42/root/dev/shm/x")

    monkeypatch.setattr(checkpoints.checkpoint, "checkpoint", boom)
    objects = Objects()
    ctx = Ctx(SimpleNamespace(config=SimpleNamespace(node_name="n1")), objects)  # type: ignore[arg-type]
    for _ in range(1, checkpoints.UNEXPECTED_ATTEMPTS):
        with pytest.raises(checkpoints.Retry):
            checkpoints.reconcile(ctx, _obj())
        last = objects.statuses[-1]
        assert last["phase"] == "Pending", last
        assert "FileNotFoundError" in last["message"]
        assert "/proc/42/root/dev/shm/x" in last["message"]
        assert not ctx.working_on("u1")
    checkpoints.reconcile(ctx, _obj())
    last = objects.statuses[-1]
    assert last["phase"] == "Failed" and last["errorCode"] == "internal_error", last
    assert "FileNotFoundError" in last["message"] and "restarted" not in last["message"]
    assert ctx.failures == {}  # counted afresh for a new object


def test_a_success_after_an_unexpected_error_forgets_it(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def flaky(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("the moment's fault")
        return {"size_bytes": 1, "duration_ms": 2, "storage": "local", "container_id": "c1"}

    monkeypatch.setattr(checkpoints.checkpoint, "checkpoint", flaky)
    objects = Objects()
    objects.get = lambda *a: None  # type: ignore[attr-defined]
    objects.patch_meta = lambda *a: None  # type: ignore[attr-defined]
    ctx = Ctx(SimpleNamespace(config=SimpleNamespace(node_name="n1")), objects)  # type: ignore[arg-type]
    with pytest.raises(checkpoints.Retry):
        checkpoints.reconcile(ctx, _obj())
    checkpoints.reconcile(ctx, _obj())
    assert objects.statuses[-1]["phase"] == "Succeeded"
    assert ctx.failures == {}
