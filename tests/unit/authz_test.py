"""Caller authorization at the helper's HTTP boundary: a real `cedana-helper serve
--authorization kubernetes` whose Kubernetes API is the fake API server, reached directly (as
another pod would). The plugin no longer calls the helper's port (it creates cedana.io objects
instead); these tests hold the helper's REST guard until it changes (docs/api.md)."""
from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.plugin_fakeapi import FakeApiServer, FakeCluster, write_kubeconfig
from tests.unit.sidecar_support import helper_process

REPO = Path(__file__).resolve().parents[2]
CSRS = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
SECRET = "s3cret-proof-for-tests"


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


def make_proof(cluster: FakeCluster, user: str = "alice", *, secret: str = SECRET,
               age_s: float = 0, signer_secret: str | None = None) -> dict[str, str]:
    """A CSR as the API server would store it for `user`, and the headers that name it."""
    name = f"cedana-caller-{len(cluster.objects)}"
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - age_s))
    digest = hashlib.sha256((signer_secret or secret).encode()).hexdigest()
    cluster.objects[f"{CSRS}/{name}"] = {
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": name, "creationTimestamp": created},
        "spec": {"signerName": f"cedana.io/caller-proof-{digest}", "username": user,
                 "uid": f"uid-{user}", "groups": ["system:authenticated"],
                 "usages": ["client auth"], "request": "eA=="}}
    return {"X-Cedana-Caller": name, "X-Cedana-Proof": secret}


def test_no_proof_is_401_before_anything_else(helper_url: str) -> None:
    cases: list[tuple[str, str, Any]] = [
        ("GET", "/list/default", None), ("GET", "/checkpoints", None),
        ("POST", "/checkpoint", {"checkpoint_data": {}}), ("POST", "/restore", None),
        ("DELETE", "/checkpoints/x", None), ("POST", "/checkpoints/prune", {})]
    for method, route, body in cases:
        status, answer = call(helper_url, method, route, body)
        assert (status, answer["code"]) == (401, "unauthenticated"), (route, answer)
        assert "X-Cedana-Caller" in answer["message"]
    # kubelet's probe and the version stay open
    assert call(helper_url, "GET", "/healthz")[0] == 200
    assert call(helper_url, "GET", "/version")[0] == 200


def test_a_caller_may_do_what_rbac_lets_it(cluster: FakeCluster, helper_url: str) -> None:
    cluster.denied_subject_reviews.add(("alice", "*", "*", "*", "team-b"))
    alice = make_proof(cluster, "alice")
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
    reviews = [json.loads(r.body)["spec"] if isinstance(r.body, str) else r.body["spec"]
               for r in cluster.requests if r.path.endswith("/subjectaccessreviews")]
    assert reviews and all(r["user"] == "alice" and r["uid"] == "uid-alice" for r in reviews)
    assert {"namespace": "team-b", "verb": "create", "group": "cedana.io",
            "resource": "checkpoints"} in [r["resourceAttributes"] for r in reviews]
    # the same request from bob, whom RBAC allows, passes authorization (and finds no pod)
    status, answer = call(helper_url, "POST", "/checkpoint", body,
                          headers=make_proof(cluster, "bob"))
    assert (status, answer["code"]) == (404, "container_not_found"), answer


@pytest.mark.parametrize("case", ["wrong secret", "expired", "missing", "malformed name"])
def test_proofs_kubernetes_does_not_vouch_for_are_401(cluster: FakeCluster, helper_url: str,
                                                      case: str) -> None:
    if case == "wrong secret":
        headers = make_proof(cluster, signer_secret="another")
    elif case == "expired":
        headers = make_proof(cluster, age_s=3600)
    elif case == "missing":
        headers = {"X-Cedana-Caller": "cedana-caller-nope", "X-Cedana-Proof": SECRET}
    else:
        headers = {"X-Cedana-Caller": "../etc/passwd", "X-Cedana-Proof": SECRET}
    status, answer = call(helper_url, "GET", "/list/team-a", headers=headers)
    assert (status, answer["code"]) == (401, "unauthenticated"), answer


def test_catalogue_shows_only_namespaces_the_caller_may_list(
        cluster: FakeCluster, helper_url: str, helper_dir: Path) -> None:
    entries = {f"id-{ns}": {"id": f"id-{ns}", "namespace": ns, "pod": "p", "container": "c",
                            "path": str(helper_dir / "checkpoints" / ns), "created": "x"}
               for ns in ("team-a", "team-b")}
    (helper_dir / "checkpoints" / ".catalogue.json").write_text(json.dumps(entries))
    cluster.denied_subject_reviews.add(("alice", "*", "*", "*", "team-b"))
    alice = make_proof(cluster, "alice")
    status, answer = call(helper_url, "GET", "/checkpoints", headers=alice)
    assert status == 200
    assert [e["id"] for e in answer["checkpoints"]] == ["id-team-a"]
    both = call(helper_url, "GET", "/checkpoints", headers=make_proof(cluster, "bob"))[1]
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
    headers = make_proof(cluster)
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
