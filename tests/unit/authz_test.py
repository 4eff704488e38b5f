"""Caller authorization at the HTTP boundary: a real `cedana-helper serve --authorization
kubernetes` whose Kubernetes API is the fake API server, called with bearer tokens the fake
TokenReview vouches for (or not), as `kubectl port-forward` users do (docs/security.md)."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.plugin_fakeapi import FakeApiServer, FakeCluster, write_kubeconfig
from tests.unit.sidecar_support import helper_process

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


@pytest.fixture
def helper_dir(tmp_path: Path) -> Path:
    (tmp_path / "runc").mkdir()
    (tmp_path / "checkpoints").mkdir(mode=0o700)
    return tmp_path


@pytest.fixture
def helper_url(api: FakeApiServer, cluster: FakeCluster, helper_dir: Path) -> Iterator[str]:
    """The real helper, checking callers against the fake API server."""
    kubeconfig = write_kubeconfig(helper_dir / "helper.kubeconfig", api.url)
    with helper_process(helper_dir, "--kubeconfig", str(kubeconfig)) as url:
        yield url


def call(url: str, method: str, route: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + route, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def make_token(cluster: FakeCluster, user: str = "alice") -> dict[str, str]:
    """A token the API server vouches for as `user`, as the Authorization header."""
    token = f"token-of-{user}-{len(cluster.review_tokens)}"
    cluster.review_tokens[token] = {"username": user, "uid": f"uid-{user}",
                                    "groups": ["system:authenticated"]}
    return {"Authorization": f"Bearer {token}"}


def reviews_of(cluster: FakeCluster, kind: str) -> list[Any]:
    return [json.loads(r.body) if isinstance(r.body, str) else r.body
            for r in cluster.requests if r.path.endswith(f"/{kind}")]


def test_no_token_is_401_before_anything_else(cluster: FakeCluster, helper_url: str) -> None:
    cases: list[tuple[str, str, Any]] = [
        ("GET", "/list/default", None), ("GET", "/checkpoints", None),
        ("POST", "/checkpoint", {"checkpoint_data": {}}), ("POST", "/restore", None),
        ("DELETE", "/checkpoints/x", None), ("POST", "/checkpoints/prune", {})]
    for method, route, body in cases:
        status, answer = call(helper_url, method, route, body)
        assert (status, answer["code"]) == (401, "unauthenticated"), (route, answer)
        assert "Authorization: Bearer" in answer["message"]
    # refused before any question to the API server
    assert not reviews_of(cluster, "tokenreviews")
    # kubelet's probe and the version stay open
    assert call(helper_url, "GET", "/healthz")[0] == 200
    assert call(helper_url, "GET", "/version")[0] == 200


def test_a_caller_may_do_what_rbac_lets_it(cluster: FakeCluster, helper_url: str,
                                           helper_dir: Path) -> None:
    cluster.denied_subject_reviews.add(("alice", "*", "*", "*", "team-b"))
    alice = make_token(cluster, "alice")
    status, answer = call(helper_url, "GET", "/list/team-a", headers=alice)
    assert (status, answer) == (200, [])
    status, answer = call(helper_url, "GET", "/list/team-b", headers=alice)
    assert (status, answer["code"], answer["namespace"]) == (403, "forbidden", "team-b")
    assert answer["user"] == "alice" and answer["permission"] == "list pods in namespace team-b"
    body = {"checkpoint_data": {"container_name": "c", "sandbox_name": "p",
                                "namespace": "team-b"}}
    status, answer = call(helper_url, "POST", "/checkpoint", body, headers=alice)
    assert (status, answer["code"]) == (403, "forbidden")
    assert answer["permission"] == "create checkpoints.cedana.io in namespace team-b"
    # the helper asked the API server in alice's name, as the kubelet does
    reviews = [r["spec"] for r in reviews_of(cluster, "subjectaccessreviews")]
    assert reviews and all(r["user"] == "alice" and r["uid"] == "uid-alice" for r in reviews)
    assert {"namespace": "team-b", "verb": "create", "group": "cedana.io",
            "resource": "checkpoints"} in [r["resourceAttributes"] for r in reviews]
    # every action is attributable: the helper's log line names the user, uid, groups, namespace
    lines = [json.loads(line) for line in (helper_dir / "helper.log").read_text().splitlines()
             if line.startswith("{")]
    listed = [e for e in lines if e.get("path") == "/list/team-a" and e.get("status") == 200]
    assert listed and listed[-1]["user"] == "alice" and listed[-1]["uid"] == "uid-alice"
    assert listed[-1]["groups"] == ["system:authenticated"]
    assert listed[-1]["namespace"] == "team-a"
    # the same request from bob, whom RBAC allows, passes authorization (and finds no pod)
    status, answer = call(helper_url, "POST", "/checkpoint", body,
                          headers=make_token(cluster, "bob"))
    assert (status, answer["code"]) == (404, "container_not_found"), answer


@pytest.mark.parametrize("header", ["Bearer not-a-known-token", "Basic YWxpY2U6cHc=",
                                    "Bearer", "bearer  ", "token-without-scheme"])
def test_tokens_kubernetes_does_not_vouch_for_are_401(helper_url: str, header: str) -> None:
    status, answer = call(helper_url, "GET", "/list/team-a", headers={"Authorization": header})
    assert (status, answer["code"]) == (401, "unauthenticated"), answer


def test_a_refused_token_is_not_asked_about_again(cluster: FakeCluster, helper_url: str) -> None:
    for _ in range(5):
        status, _answer = call(helper_url, "GET", "/list/team-a",
                               headers={"Authorization": "Bearer stolen-or-made-up"})
        assert status == 401
    asked = [r for r in reviews_of(cluster, "tokenreviews")
             if r["spec"]["token"] == "stolen-or-made-up"]
    assert len(asked) == 1  # the negative cache answered the other four


def test_catalogue_shows_only_namespaces_the_caller_may_list(
        cluster: FakeCluster, helper_url: str, helper_dir: Path) -> None:
    entries = {f"id-{ns}": {"id": f"id-{ns}", "namespace": ns, "pod": "p", "container": "c",
                            "path": str(helper_dir / "checkpoints" / ns), "created": "x"}
               for ns in ("team-a", "team-b")}
    (helper_dir / "checkpoints" / ".catalogue.json").write_text(json.dumps(entries))
    cluster.denied_subject_reviews.add(("alice", "*", "*", "*", "team-b"))
    alice = make_token(cluster, "alice")
    status, answer = call(helper_url, "GET", "/checkpoints", headers=alice)
    assert status == 200
    assert [e["id"] for e in answer["checkpoints"]] == ["id-team-a"]
    both = call(helper_url, "GET", "/checkpoints", headers=make_token(cluster, "bob"))[1]
    assert sorted(e["id"] for e in both["checkpoints"]) == ["id-team-a", "id-team-b"]
    # one checkpoint by id: only who may delete in its namespace
    status, answer = call(helper_url, "DELETE", "/checkpoints/id-team-b", headers=alice)
    assert (status, answer["code"]) == (403, "forbidden")
    assert "id-team-b" in json.loads((helper_dir / "checkpoints" / ".catalogue.json").read_text())
    # restoring team-b's checkpoint into a team-a pod needs team-b's checkpoint too
    body = {"checkpoint_data": {"container_name": "c", "sandbox_name": "p",
                                "namespace": "team-a", "checkpoint_id": "id-team-b"}}
    status, answer = call(helper_url, "POST", "/restore", body, headers=alice)
    assert (status, answer["code"], answer["namespace"]) == (403, "forbidden", "team-b")
    # prune may delete anything on the node: refused unless allowed everywhere
    status, answer = call(helper_url, "POST", "/checkpoints/prune", {}, headers=alice)
    assert (status, answer["code"]) == (403, "forbidden")


def test_api_server_unreachable_is_503(cluster: FakeCluster, api: FakeApiServer,
                                       helper_url: str) -> None:
    headers = make_token(cluster)
    api.httpd.shutdown()
    api.httpd.server_close()
    status, answer = call(helper_url, "GET", "/list/team-a", headers=headers)
    assert (status, answer["code"]) == (503, "authorization_unavailable")


def test_every_route_has_a_policy(tmp_path: Path) -> None:
    """Each route states what its caller needs; an app with a route that does not will not
    start, so adding a route means saying what it needs."""
    from fastapi import APIRouter

    from sidecar.http import routes
    from sidecar.http.app import create_app
    from sidecar.http.policy import routes_without_policy
    from tests.unit.sidecar_support import make_config, route_table

    config = make_config(tmp_path)
    create_app(config, kube=None)
    assert len(route_table()) >= 12
    assert routes_without_policy(routes.ROUTERS) == []
    forgotten = APIRouter()
    forgotten.get("/unguarded")(lambda: {})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(routes, "ROUTERS", [*routes.ROUTERS, forgotten])
        with pytest.raises(RuntimeError, match="GET /unguarded"):
            create_app(config, kube=None)
