"""Caller authorization at the HTTP boundary: a real `cedana-helper serve --authorization
kubernetes` whose Kubernetes API is the fake API server, reached directly (as another pod would)
and through the fake pod proxy by the real plugin (docs/security.md)."""
# ruff: noqa: F811  (pytest fixtures imported below are parameters of the tests)
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.plugin_fakeapi import (  # noqa: F401  (fixtures: api)
    FakeApiServer,
    FakeCluster,
    api,
    make_pod,
    run_cli,
    write_kubeconfig,
)

REPO = Path(__file__).resolve().parents[2]
GRANTS = "/apis/cedana.io/v1alpha1/namespaces/{ns}/checkpointaccesses"
SECRET = "s3cret-proof-for-tests"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
    port = _free_port()
    kubeconfig = write_kubeconfig(helper_dir / "helper.kubeconfig", api.url)
    log = (helper_dir / "helper.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "serve", "--host", "127.0.0.1", "--port",
         str(port), "--checkpoint-dir", str(helper_dir / "checkpoints"), "--runtime-root",
         str(helper_dir / "runc"), "--criu-runc-config", str(helper_dir / "criu.conf"),
         "--kubeconfig", str(kubeconfig)],
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
                    pytest.fail("helper did not start: "
                                + (helper_dir / "helper.log").read_text(errors="replace"))
                time.sleep(0.1)
        cluster.add_forwarding_helper("node1", url)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


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


def make_grant(cluster: FakeCluster, namespace: str, *, secret: str = SECRET, ttl: int = 600,
               age_s: float = 0, generation: int = 1) -> str:
    name = f"grant-{len(cluster.objects)}"
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - age_s))
    cluster.objects[f"{GRANTS.format(ns=namespace)}/{name}"] = {
        "apiVersion": "cedana.io/v1alpha1", "kind": "CheckpointAccess",
        "metadata": {"name": name, "namespace": namespace, "generation": generation,
                     "creationTimestamp": created},
        "spec": {"proofSHA256": hashlib.sha256(secret.encode()).hexdigest(), "ttlSeconds": ttl}}
    return f"{namespace}/{name}"


def proof(*grants: str, secret: str = SECRET) -> dict[str, str]:
    return {"X-Cedana-Grants": ",".join(grants), "X-Cedana-Proof": secret}


def test_no_proof_is_401_before_anything_else(helper_url: str) -> None:
    for method, route, body in [("GET", "/list/default", None), ("GET", "/checkpoints", None),
                                ("POST", "/checkpoint", {"checkpoint_data": {}}),
                                ("POST", "/restore", None), ("DELETE", "/checkpoints/x", None),
                                ("POST", "/checkpoints/prune", {})]:
        status, answer = call(helper_url, method, route, body)
        assert (status, answer["code"]) == (401, "unauthenticated"), (route, answer)
        assert "CheckpointAccess" in answer["message"]
    # kubelet's probe and the version stay open
    assert call(helper_url, "GET", "/healthz")[0] == 200
    assert call(helper_url, "GET", "/version")[0] == 200


def test_grant_opens_its_namespace_only(cluster: FakeCluster, helper_url: str) -> None:
    mine = make_grant(cluster, "team-a")
    status, answer = call(helper_url, "GET", "/list/team-a", headers=proof(mine))
    assert (status, answer) == (200, [])
    status, answer = call(helper_url, "GET", "/list/team-b", headers=proof(mine))
    assert (status, answer["code"], answer["namespace"]) == (403, "forbidden", "team-b")
    assert "create checkpointaccesses.cedana.io" in answer["message"]
    body = {"checkpoint_data": {"container_name": "c", "sandbox_name": "p",
                                "namespace": "team-b"}}
    status, answer = call(helper_url, "POST", "/checkpoint", body, headers=proof(mine))
    assert (status, answer["code"]) == (403, "forbidden")


@pytest.mark.parametrize("case", ["wrong secret", "expired", "modified", "missing",
                                  "malformed header"])
def test_grants_kubernetes_does_not_vouch_for_are_401(cluster: FakeCluster, helper_url: str,
                                                      case: str) -> None:
    if case == "wrong secret":
        headers = proof(make_grant(cluster, "team-a"), secret="guessed")
    elif case == "expired":
        headers = proof(make_grant(cluster, "team-a", ttl=60, age_s=600))
    elif case == "modified":
        headers = proof(make_grant(cluster, "team-a", generation=2))
    elif case == "missing":
        headers = proof("team-a/no-such-grant")
    else:
        headers = proof("../etc/passwd")
    status, answer = call(helper_url, "GET", "/list/team-a", headers=headers)
    assert (status, answer["code"]) == (401, "unauthenticated"), answer


def test_catalogue_shows_only_granted_namespaces(cluster: FakeCluster, helper_url: str,
                                                 helper_dir: Path) -> None:
    entries = {f"id-{ns}": {"id": f"id-{ns}", "namespace": ns, "pod": "p", "container": "c",
                            "path": str(helper_dir / "checkpoints" / ns), "created": "x"}
               for ns in ("team-a", "team-b")}
    (helper_dir / "checkpoints" / ".catalogue.json").write_text(json.dumps(entries))
    status, answer = call(helper_url, "GET", "/checkpoints",
                          headers=proof(make_grant(cluster, "team-a")))
    assert status == 200
    assert [e["id"] for e in answer["checkpoints"]] == ["id-team-a"]
    assert answer["hidden"] == 1
    both = proof(make_grant(cluster, "team-a"), make_grant(cluster, "team-b"))
    assert len(call(helper_url, "GET", "/checkpoints", headers=both)[1]["checkpoints"]) == 2
    # one checkpoint by id: only its own namespace's grant opens it
    status, answer = call(helper_url, "DELETE", "/checkpoints/id-team-b",
                          headers=proof(make_grant(cluster, "team-a")))
    assert (status, answer["code"]) == (403, "forbidden")
    assert "id-team-b" in json.loads((helper_dir / "checkpoints" / ".catalogue.json").read_text())
    # a restore of team-b's checkpoint into a team-a pod needs team-b too
    body = {"checkpoint_data": {"container_name": "c", "sandbox_name": "p",
                                "namespace": "team-a", "checkpoint_id": "id-team-b"}}
    status, answer = call(helper_url, "POST", "/restore", body,
                          headers=proof(make_grant(cluster, "team-a")))
    assert (status, answer["code"], answer["namespace"]) == (403, "forbidden", "team-b")


def test_api_server_unreachable_is_503(cluster: FakeCluster, api: FakeApiServer,
                                       helper_url: str) -> None:
    grant = make_grant(cluster, "team-a")
    api.httpd.shutdown()
    api.httpd.server_close()
    status, answer = call(helper_url, "GET", "/list/team-a", headers=proof(grant))
    assert (status, answer["code"]) == (503, "authorization_unavailable")


def test_plugin_makes_grants_and_deletes_them(cluster: FakeCluster, api: FakeApiServer,
                                              helper_url: str, tmp_path: Path) -> None:
    """The plugin's requests pass the proxy (Authorization stripped) with their own proof."""
    from kubectl_cedana.authz import grant_book
    from kubectl_cedana.kube import KubeClient
    from kubectl_cedana.settings import Settings

    cluster.add_pod(make_pod("counter", "team-a"))
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url)
    listed = run_cli(kubeconfig, "-n", "team-a", "list", "-o", "json")
    assert listed.exit_code == 0, listed.stderr
    created = [r for r in cluster.grant_requests if r.method == "POST"]
    assert [r.path for r in created] == [GRANTS.format(ns="team-a")]
    spec = created[0].body["spec"]
    assert len(spec["proofSHA256"]) == 64 and spec["ttlSeconds"] <= 3600
    # the secret itself never reaches the API server
    proxied = [r for r in cluster.requests if "/proxy/list/" in r.path]
    secret = proxied[0].headers["x-cedana-proof"]
    assert hashlib.sha256(secret.encode()).hexdigest() == spec["proofSHA256"]
    assert all(secret not in json.dumps(r.body) for r in cluster.grant_requests)
    # at the end of a command its grants go
    kube = KubeClient(Settings(kubeconfig=str(kubeconfig), namespace="team-a"))
    book = grant_book(kube)
    book.grant("team-a")
    assert any("/namespaces/team-a/checkpointaccesses/" in p for p in cluster.objects)
    book.release()
    assert not [p for p in cluster.objects if "/checkpointaccesses/kubectl-cedana-" in p]


def test_user_without_the_grant_permission_is_told_what_is_missing(
        cluster: FakeCluster, api: FakeApiServer, helper_url: str, tmp_path: Path) -> None:
    cluster.add_pod(make_pod("counter", "team-b"))
    cluster.forbidden.append(("POST", r"/namespaces/team-b/checkpointaccesses$"))
    cluster.denied_reviews.add(("create", "pods", "proxy", "cedana-system"))
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url)
    denied = run_cli(kubeconfig, "-n", "team-b", "checkpoint", "counter")
    assert denied.exit_code != 0
    assert "create checkpointaccesses.cedana.io in namespace team-b" in denied.stderr
    assert "pods/proxy" in denied.stderr and "cedana-checkpointer" in denied.stderr
    assert not [r for r in cluster.requests if "/proxy/checkpoint" in r.path]
