"""Property-based fuzzing of every route of the helper: bodies, paths and queries.

Over 1000 generated requests per run (fixed: derandomized, no example database), against the
real application with a recorded runc root: no answer is 5xx, every 4xx carries a `code` and a
`message`, and the helper still answers /healthz afterwards. Half the requests go to a helper
that checks callers (`--authorization kubernetes` with an in-memory API), so the Authorization
header is fuzzed too. The figures go to the reliability report (tests/reliability.py).
"""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlencode

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.http.app import create_app
from sidecar.ops.access import Caller, CallerVerifier, Permission
from tests.reliability import record_figures
from tests.unit.sidecar_support import COUNTER, install_runc_root, make_config, pod_process, stop

EXAMPLES = 1200
ROOT = "@runc-root@"  # replaced by the recorded runc root in each request
TOKEN = "fuzz-token"

NO_SURROGATES: tuple[Literal["Cs"]] = ("Cs",)  # not encodable as UTF-8
text = st.text(st.characters(blacklist_categories=NO_SURROGATES), max_size=40)
names = st.one_of(text, st.sampled_from(["default", "counter", "main", "kube-system", "", ".",
                                         "..", "a" * 300, "ns/../x", "%2e%2e"]))
paths = st.one_of(text, st.sampled_from(["../../etc/evil", "/etc", ".tmp-x", ".catalogue.json",
                                         "ok-1", "a/b/c", "x\x00y", "/" * 50, "~root"]))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), text),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(text, inner, max_size=4)),
    max_leaves=12)


def container_ref(extra: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    fields = {"container_name": names, "sandbox_name": names, "namespace": names,
              "root": st.one_of(st.none(), paths, st.just(ROOT)), **extra}
    return st.fixed_dictionaries({}, optional={k: st.one_of(v, json_values)
                                               for k, v in fields.items()})


def well_formed(extra: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Every field there and of the right type, so the request reaches the handler's work."""
    short = st.text(st.characters(blacklist_categories=NO_SURROGATES), min_size=1,
                    max_size=30)
    return st.fixed_dictionaries({"container_name": st.one_of(short, st.just("counter")),
                                  "sandbox_name": short, "namespace": st.one_of(
                                      short, st.just("default")), "root": st.just(ROOT),
                                  **extra})


checkpoint_body = st.fixed_dictionaries({}, optional={
    "checkpoint_data": st.one_of(container_ref({"checkpoint_path": paths}), json_values,
                                 well_formed({"checkpoint_path": paths})),
    "leave_running": st.one_of(st.booleans(), json_values),
    "with_rootfs": st.one_of(st.booleans(), json_values),
    "storage": st.one_of(st.sampled_from(["local", "remote", "x"]), json_values),
    "compression": st.one_of(st.sampled_from(["zstd", "gzip", "none", "lz4", "rar"]),
                             json_values)})
restore_body = st.fixed_dictionaries({}, optional={
    "checkpoint_data": st.one_of(container_ref({"checkpoint_path": paths,
                                                "checkpoint_id": names}), json_values,
                                 well_formed({"checkpoint_id": st.sampled_from(
                                     ["known-id", "nope"])}))})
rootfs_body = st.one_of(well_formed({"image_ref": st.just("127.0.0.1:1/x:y"),
                                     "new_image_ref": st.just("127.0.0.1:1/x:z")}),
                        container_ref({"image_ref": st.one_of(text, st.sampled_from(
    ["127.0.0.1:1/x:y", "UPPER/case", "a" * 2000])), "address": paths,
    "new_image_ref": text}))
prune_body = st.fixed_dictionaries({}, optional={
    "max_per_container": st.one_of(st.integers(), json_values),
    "max_total_bytes": st.one_of(st.integers(), json_values),
    "dry_run": st.one_of(st.just(True), json_values)})

Request = tuple[str, str, Any, bytes | None]  # method, url, json body, raw body


def _url(path: str, query: dict[str, Any] | None = None) -> str:
    return path + ("?" + urlencode(query) if query else "")


requests_strategy: st.SearchStrategy[Request] = st.one_of(
    st.tuples(st.just("GET"), st.builds(lambda ns, root: _url(f"/list/{quote(ns, safe='')}",
                                                              {"root": root} if root else None),
                                        names, st.one_of(st.none(), paths, st.just(ROOT))),
              st.one_of(st.none(), st.fixed_dictionaries({}, optional={"root": paths}),
                        json_values), st.none()),
    st.tuples(st.just("POST"), st.just("/checkpoint"), checkpoint_body, st.none()),
    st.tuples(st.just("POST"), st.just("/restore"), restore_body, st.none()),
    st.tuples(st.just("POST"), st.sampled_from(["/checkpoint/rootfs", "/checkpoint/rootfs/crio",
                                                "/restore/rootfs"]), rootfs_body, st.none()),
    st.tuples(st.just("POST"), st.just("/checkpoints/prune"),
              st.one_of(st.just(None), prune_body), st.none()),
    st.tuples(st.sampled_from(["GET", "DELETE"]),
              st.builds(lambda i: f"/checkpoints/{quote(i, safe='')}",
                        st.one_of(names, st.just("known-id"))), st.none(), st.none()),
    st.tuples(st.sampled_from(["GET", "PUT", "PATCH"]),
              st.builds(lambda q: _url("/checkpoints", q),
                        st.dictionaries(st.sampled_from(["remote", "x"]), text, max_size=2)),
              st.none(), st.none()),
    # raw bytes: not JSON, truncated JSON, wrong content
    st.tuples(st.sampled_from(["POST", "GET", "DELETE"]),
              st.sampled_from(["/checkpoint", "/restore", "/restore/rootfs", "/checkpoints/prune",
                               "/list/default"]),
              st.none(), st.binary(max_size=200)),
    # anywhere else
    st.tuples(st.sampled_from(["GET", "POST", "OPTIONS", "HEAD"]),
              st.builds(lambda p: "/" + quote(p, safe="/"), text), st.none(), st.none()),
)
token_headers: st.SearchStrategy[dict[str, str]] = st.one_of(
    st.just({}),
    st.just({"Authorization": f"Bearer {TOKEN}"}),
    st.fixed_dictionaries({"Authorization": st.text(st.characters(min_codepoint=32,
                                                                  max_codepoint=126),
                                                    max_size=80)}),
    st.builds(lambda t: {"Authorization": f"Bearer {t}"},
              st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=80)))


def in_memory_api(now: float) -> CallerVerifier:
    """The API server as the helper sees it: one valid token (user fuzzer), reviews that allow
    namespace `default` only."""

    def read_token(token: str) -> Caller | None:
        return Caller("fuzzer", groups=("system:authenticated",)) if token == TOKEN else None

    def review(_caller: Any, namespace: str, _permission: Permission) -> tuple[bool, str]:
        return namespace == "default", ""

    return CallerVerifier(read_token, review, new_tokens_per_minute=100000)


class Fuzzed:
    def __init__(self, tmp_path: Path) -> None:
        self.source = pod_process()
        self.root = install_runc_root("containerd", tmp_path, {COUNTER: self.source.pid})
        self.root_path = str(self.root)
        config = make_config(tmp_path)
        catalogue = {"known-id": {"id": "known-id", "namespace": "default", "pod": "p",
                                  "container": "c", "path": str(config.checkpoint_dir / "k"),
                                  "created": "2024-01-01T00:00:00Z"}}
        config.checkpoint_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (config.checkpoint_dir / ".catalogue.json").write_text(json.dumps(catalogue))
        self.open = TestClient(create_app(config, kube=None), raise_server_exceptions=False)
        self.guarded = TestClient(create_app(config, kube=None,
                                             verifier=in_memory_api(time.time())),
                                  raise_server_exceptions=False)
        self.statuses: Counter[int] = Counter()
        self.codes: Counter[str] = Counter()
        self.bad: list[str] = []


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    target = Fuzzed(tmp_path_factory.mktemp("fuzz"))
    yield target
    stop(target.source)


def test_fuzz_every_route(fuzzed: Fuzzed) -> None:
    started = time.monotonic()

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(request=requests_strategy, guarded=st.booleans(), headers=token_headers)
    def one(request: Request, guarded: bool, headers: dict[str, str]) -> None:
        method, url, body, raw = request
        url = url.replace(quote(ROOT, safe=""), quote(fuzzed.root_path, safe=""))
        if body is not None:
            body = json.loads(json.dumps(body).replace(ROOT, fuzzed.root_path))
        client = fuzzed.guarded if guarded else fuzzed.open
        kwargs: dict[str, Any] = {"headers": dict(headers)}
        if raw is not None:
            kwargs["content"] = raw
            kwargs["headers"]["Content-Type"] = "application/json"
        elif body is not None:
            kwargs["content"] = json.dumps(body).encode()
            kwargs["headers"]["Content-Type"] = "application/json"
        response = client.request(method, url, **kwargs)
        fuzzed.statuses[response.status_code] += 1
        where = f"{method} {url[:120]} -> {response.status_code} {response.text[:300]}"
        assert response.status_code < 500, where
        if response.status_code >= 400 and method != "HEAD":
            answer = response.json()
            assert isinstance(answer.get("code"), str) and answer["code"], where
            assert isinstance(answer.get("message"), str) and answer["message"], where
            fuzzed.codes[answer["code"]] += 1

    one()
    total = sum(fuzzed.statuses.values())
    assert total >= 1000
    for client in (fuzzed.open, fuzzed.guarded):
        assert client.get("/healthz").json() == {"status": "ok"}
    # both halves reached the handlers: their own codes, not only the gatekeepers'
    assert {"invalid_request", "container_not_found", "unauthenticated",
            "forbidden"} <= set(fuzzed.codes), fuzzed.codes
    record_figures("fuzz", {
        "requests": total, "status_5xx": sum(n for s, n in fuzzed.statuses.items() if s >= 500),
        "status": {str(k): v for k, v in sorted(fuzzed.statuses.items())},
        "codes": dict(fuzzed.codes.most_common()),
        "seconds": round(time.monotonic() - started, 1)})
