"""When a migration goes post-copy (sidecar/reconcile/migrations.py _post_copy): when asked and
it can be, by default above the helper's --post-copy-above, never when told not to; asked where
it cannot be (the same node, a whole pod, no peer port), refused with the reason."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from sidecar.config import DEFAULT_POST_COPY_ABOVE_BYTES, HelperConfig
from sidecar.errors import DumpFailed, InvalidRequest
from sidecar.ops import checkpoint
from sidecar.reconcile import migrations

PEER = ("10.0.0.2", 1325)


def _ctx(tmp_path: Any, above: int = DEFAULT_POST_COPY_ABOVE_BYTES) -> Any:
    config = HelperConfig(checkpoint_dir=tmp_path, node_name="node-1",
                          post_copy_above_bytes=above)
    return SimpleNamespace(node="node-1", helper=SimpleNamespace(config=config))


@pytest.fixture()
def memory(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    held = {"bytes": 0}
    monkeypatch.setattr(migrations, "_memory_of", lambda *_a: held["bytes"])
    return held


def _decide(ctx: Any, lazy: bool | None, *, names: tuple[str, ...] = ("main",),
            node: str = "node-2", peer: tuple[str, int] | None = PEER) -> bool:
    spec = {} if lazy is None else {"lazy": lazy}
    return migrations._post_copy(ctx, spec, "ns", "pod", list(names), node, peer)


def test_by_default_above_the_helpers_size(tmp_path: Any, memory: dict[str, int]) -> None:
    ctx = _ctx(tmp_path)
    memory["bytes"] = DEFAULT_POST_COPY_ABOVE_BYTES - 1
    assert not _decide(ctx, None)
    memory["bytes"] = DEFAULT_POST_COPY_ABOVE_BYTES
    assert _decide(ctx, None)
    assert not _decide(ctx, False)  # told not to
    # where it cannot be, the default stays stop-and-copy, without a word
    assert not _decide(ctx, None, node="node-1")
    assert not _decide(ctx, None, names=("a", "b"))
    assert not _decide(ctx, None, peer=None)
    # 0: only when asked
    assert not _decide(_ctx(tmp_path, above=0), None)


def test_asked_for_where_it_cannot_be_is_refused(tmp_path: Any,
                                                memory: dict[str, int]) -> None:
    ctx = _ctx(tmp_path)
    assert _decide(ctx, True)  # small, but asked
    for kwargs, why in (({"node": "node-1"}, "another node only"),
                        ({"names": ("a", "b")}, "a whole pod moves stop-and-copy"),
                        ({"peer": None}, "cannot be reached on the peer port")):
        with pytest.raises(InvalidRequest, match=why) as refused:
            _decide(ctx, True, **kwargs)
        assert refused.value.extra.get("fields") == ["spec.lazy"]


# -- a post-copy the helper chose falls back to stop-and-copy when its dump fails ------------------
def _taker(fail_lazy: Exception | None) -> tuple[Any, list[bool]]:
    calls: list[bool] = []

    def take(lazy: bool) -> dict[str, Any]:
        calls.append(lazy)
        if lazy and fail_lazy is not None:
            raise fail_lazy
        return {"lazy": lazy}
    return take, calls


def test_a_chosen_post_copy_whose_dump_fails_goes_stop_and_copy() -> None:
    take, calls = _taker(DumpFailed("CRIU: Error (criu/tty.c): can't dump the terminal"))
    heard: list[str] = []
    dumped, post_copy = migrations.with_fallback(take, True, True,
                                                 lambda exc: heard.append(exc.message))
    assert (dumped, post_copy, calls) == ({"lazy": False}, False, [True, False])
    assert heard == ["CRIU: Error (criu/tty.c): can't dump the terminal"]


def test_an_asked_post_copy_or_a_later_failure_does_not_fall_back() -> None:
    take, calls = _taker(DumpFailed("CRIU: no"))
    with pytest.raises(DumpFailed):  # spec.lazy true: the user asked for it
        migrations.with_fallback(take, True, False, lambda exc: None)
    assert calls == [True]
    kept = checkpoint.SourceKept(RuntimeError("the target said no"))
    take, calls = _taker(kept)
    with pytest.raises(checkpoint.SourceKept):  # handed over already: never again
        migrations.with_fallback(take, True, True, lambda exc: None)
    assert calls == [True]
    take, calls = _taker(None)
    assert migrations.with_fallback(take, False, True, lambda exc: None) == ({"lazy": False},
                                                                             False)
