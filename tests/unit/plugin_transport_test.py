"""The plugin against a real local HTTP server playing the API server: credentials, the
namespace and global flags, the API server's refusals turned into one line, and watching an
object through everything a watch meets (410 Gone, watches the server ends, a slow helper, a
deleted object, Ctrl-C, SIGTERM)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kubectl_cedana import operations
from kubectl_cedana.kube import KubeClient
from kubectl_cedana.settings import Settings
from tests.unit.plugin_fakeapi import (
    TOKEN,
    FakeApiServer,
    FakeCluster,
    make_pki,
    make_pod,
    run_cli,
    wait_for,
    write_kubeconfig,
)
from tests.unit.plugin_fakehelpers import FakeHelpers

REPO = Path(__file__).resolve().parents[2]
CHECKPOINTS = "/apis/cedana.io/v1alpha1/namespaces/default/checkpoints"


@pytest.fixture
def counter(cluster: FakeCluster) -> dict:
    return cluster.add_pod(make_pod("counter"))


# -- credentials ------------------------------------------------------------------------------
def test_every_request_carries_the_token_and_nothing_reaches_a_helper(
        cluster: FakeCluster, helpers: FakeHelpers, counter: dict, kubeconfig: Path) -> None:
    result = run_cli(kubeconfig, "checkpoint", "counter")
    assert result.exit_code == 0, result.stderr
    assert cluster.requests and all(r.headers["authorization"] == f"Bearer {TOKEN}"
                                    for r in cluster.requests)
    assert not [r for r in cluster.requests if "/proxy" in r.path
                or "certificatesigningrequests" in r.path]
    assert result.stderr == ""


def test_client_certificate_kubeconfig_works_and_names_its_user(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    fake = FakeCluster()
    fake.add_helper("node1")
    fake.add_pod(make_pod("counter"))
    FakeHelpers(fake)
    with FakeApiServer(fake, tls=pki) as server:
        config = write_kubeconfig(tmp_path / "kc", server.url, pki=pki)
        result = run_cli(config, "checkpoint", "counter", "-o", "json")
    assert result.exit_code == 0, result.stderr
    obj = json.loads(result.stdout)
    assert obj["metadata"]["annotations"] == {"cedana.io/requested-by": "alice"}
    assert obj["status"]["requestedBy"] == "alice"
    subjects = [dict(x[0] for x in (r.peer_cert or {})["subject"]) for r in fake.requests]
    assert subjects and all(s["commonName"] == "alice" for s in subjects)
    assert all("authorization" not in r.headers for r in fake.requests)


def test_an_api_server_without_selfsubjectreview_gets_no_requested_by(
        cluster: FakeCluster, helpers: FakeHelpers, counter: dict, kubeconfig: Path) -> None:
    cluster.self_subject_review = False
    result = run_cli(kubeconfig, "checkpoint", "counter", "-o", "json")
    assert result.exit_code == 0, result.stderr
    assert "annotations" not in cluster.created("checkpoints")[0]["metadata"]


def test_rejected_token_is_reported_as_unauthorized(cluster: FakeCluster, api: FakeApiServer,
                                                    tmp_path: Path) -> None:
    config = write_kubeconfig(tmp_path / "kc", api.url, token="wrong")
    result = run_cli(config, "list")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: unauthorized")
    assert len(result.stderr.splitlines()) == 1


def test_connection_refused(tmp_path: Path) -> None:
    config = write_kubeconfig(tmp_path / "kc", "http://127.0.0.1:9")
    result = run_cli(config, "list")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot connect to the Kubernetes API server at "
                                    "http://127.0.0.1:9")


def test_missing_kubeconfig_file(tmp_path: Path) -> None:
    result = run_cli(tmp_path / "nope", "list")
    assert result.exit_code == 1
    assert "does not exist" in result.stderr


# -- refusals, in the API server's words ------------------------------------------------------
def test_a_user_without_the_role_is_told_which_permission_is_missing(
        cluster: FakeCluster, helpers: FakeHelpers, counter: dict, kubeconfig: Path) -> None:
    cluster.forbidden.append(("POST", r"/checkpoints$"))
    result = run_cli(kubeconfig, "checkpoint", "counter")
    assert result.exit_code == 1
    assert result.stderr == (
        'error: permission denied: you need "create checkpoints.cedana.io in namespace '
        'default" (API server: checkpoints.cedana.io is forbidden: User "token-user" cannot '
        'create resource "checkpoints" in API group "cedana.io" in the namespace "default") '
        "(check with: kubectl auth can-i create checkpoints.cedana.io -n default)\n")
    assert result.stdout == "" and cluster.objects_of("checkpoints") == []


def test_a_user_who_may_create_but_not_watch_learns_that_too(
        cluster: FakeCluster, helpers: FakeHelpers, counter: dict, kubeconfig: Path) -> None:
    cluster.forbidden.append(("GET", rf"^{CHECKPOINTS}$"))
    result = run_cli(kubeconfig, "checkpoint", "counter")
    assert result.exit_code == 1
    assert 'you need "watch checkpoints.cedana.io in namespace default"' in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert len(cluster.objects_of("checkpoints")) == 1  # made, and the helper goes on


def test_forbidden_pod_read_names_get_pods(cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.forbidden.append(("GET", r"^/api/v1/namespaces/default/pods/counter$"))
    result = run_cli(kubeconfig, "checkpoint", "counter")
    assert result.exit_code == 1
    assert 'you need "get pods in namespace default"' in result.stderr


def test_admission_refusal_is_its_own_message(cluster: FakeCluster, helpers: FakeHelpers,
                                              counter: dict, kubeconfig: Path) -> None:
    cluster.denied_reviews.add(("get", "checkpoints", "", "team-b"))
    result = run_cli(kubeconfig, "restore", "6f1d2c3b-0000-4000-8000-000000000001",
                     "--checkpoint-namespace", "team-b", "--into", "counter")
    assert result.exit_code == 1
    assert result.stderr.startswith(
        'error: refused by admission: restores.cedana.io "counter-')
    assert result.stderr.rstrip().endswith(
        "ValidatingAdmissionPolicy 'cedana.io' with binding 'cedana.io' denied request: "
        "restoring a checkpoint of namespace team-b needs get on checkpoints.cedana.io there, "
        "which token-user does not have")
    assert cluster.objects_of("restores") == []


def test_schema_errors_come_back_as_usage_errors(cluster: FakeCluster, counter: dict,
                                                 kubeconfig: Path) -> None:
    result = run_cli(kubeconfig, "checkpoint", "counter", "--name", "Not_A_Name")
    assert result.exit_code == 2
    assert result.stderr.startswith('error: invalid: Checkpoint.cedana.io "Not_A_Name" is '
                                    'invalid: metadata.name: Invalid value: "Not_A_Name"')


def test_the_api_not_installed_tells_to_install(cluster: FakeCluster, counter: dict,
                                                kubeconfig: Path) -> None:
    cluster.cedana_api = False
    result = run_cli(kubeconfig, "checkpoint", "counter")
    assert result.exit_code == 3
    assert result.stderr == ("error: the cedana.io API is not installed in this cluster (the API "
                             "server does not serve checkpoints.cedana.io) (run `kubectl "
                             "cedana install`)\n")


def test_request_timeout_exits_124(cluster: FakeCluster, counter: dict,
                                   kubeconfig: Path) -> None:
    cluster.delays.append(("GET", r"/pods/counter$", 2.0))
    result = run_cli(kubeconfig, "checkpoint", "counter", "--request-timeout", "300ms")
    assert result.exit_code == 124
    assert "timed out" in result.stderr


# -- namespaces and global flags --------------------------------------------------------------
def test_namespace_defaults_to_the_contexts(cluster: FakeCluster, helpers: FakeHelpers,
                                            api: FakeApiServer, tmp_path: Path) -> None:
    config = write_kubeconfig(tmp_path / "kc", api.url, namespace="demo")
    cluster.add_pod(make_pod("counter", "demo"))
    result = run_cli(config, "checkpoint", "counter")
    assert result.exit_code == 0, result.stderr
    assert cluster.requests_matching("GET", r"^/api/v1/namespaces/demo/pods/counter$")
    assert [o["metadata"]["namespace"] for o in cluster.objects_of("checkpoints")] == ["demo"]


def test_context_flag_switches_namespace(cluster: FakeCluster, kubeconfig: Path) -> None:
    result = run_cli(kubeconfig, "--context", "other", "checkpoint", "counter")
    assert result.exit_code == 3
    assert 'pod "counter" not found in namespace "elsewhere"' in result.stderr


def test_global_flags_work_after_the_command(cluster: FakeCluster, helpers: FakeHelpers,
                                             kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter", "team"))
    result = run_cli(kubeconfig, "checkpoint", "counter", "-n", "team", "-o", "json")
    assert result.exit_code == 0, result.stderr
    obj = json.loads(result.stdout)
    assert obj["kind"] == "Checkpoint" and obj["metadata"]["namespace"] == "team"


def test_flag_after_command_overrides_flag_before(cluster: FakeCluster, helpers: FakeHelpers,
                                                  kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter", "b"))
    result = run_cli(kubeconfig, "-n", "a", "checkpoint", "counter", "-n", "b")
    assert result.exit_code == 0, result.stderr


# -- watching ---------------------------------------------------------------------------------
def _watches(cluster: FakeCluster) -> list:
    return [r for r in cluster.requests_matching("GET", rf"^{CHECKPOINTS}$")
            if r.query.get("watch") == ["true"]]


def test_the_watch_starts_where_the_create_left_off(cluster: FakeCluster, helpers: FakeHelpers,
                                                    counter: dict, kubeconfig: Path) -> None:
    result = run_cli(kubeconfig, "checkpoint", "counter", "-o", "json")
    assert result.exit_code == 0, result.stderr
    (watch,) = _watches(cluster)
    created = cluster.requests_matching("POST", rf"^{CHECKPOINTS}$")
    name = json.loads(result.stdout)["metadata"]["name"]
    assert watch.query["fieldSelector"] == [f"metadata.name={name}"]
    assert int(watch.query["resourceVersion"][0]) > 100 and created


def test_a_watch_too_old_for_the_server_is_resumed_from_a_fresh_read(
        cluster: FakeCluster, helpers: FakeHelpers, counter: dict, kubeconfig: Path) -> None:
    helpers.step_s = 0.3
    cluster.on_created.append(lambda _plural, _key: cluster.forget_history())  # 410 Gone
    result = run_cli(kubeconfig, "checkpoint", "counter")
    assert result.exit_code == 0, result.stderr
    name = cluster.objects_of("checkpoints")[0]["metadata"]["name"]
    assert result.stdout.strip() == cluster.get("checkpoints", "default", name)["status"][
        "checkpointID"]
    assert len(_watches(cluster)) >= 2
    assert cluster.requests_matching("GET", rf"^{CHECKPOINTS}/{name}$")  # read again


def test_watches_the_server_ends_are_started_again(cluster: FakeCluster, helpers: FakeHelpers,
                                                   counter: dict, kubeconfig: Path) -> None:
    cluster.max_watch_s = 0.2
    helpers.step_s = 0.5
    result = run_cli(kubeconfig, "checkpoint", "counter")
    assert result.exit_code == 0, result.stderr
    assert len(_watches(cluster)) >= 2  # each after a read of the object (no change missed)
    name = cluster.objects_of("checkpoints")[0]["metadata"]["name"]
    assert cluster.requests_matching("GET", rf"^{CHECKPOINTS}/{name}$")


def test_the_phases_go_by_as_progress(cluster: FakeCluster, helpers: FakeHelpers, counter: dict,
                                      kubeconfig: Path) -> None:
    kube = KubeClient(Settings(kubeconfig=str(kubeconfig)))
    started = operations.start_checkpoint(kube, "default", "counter", None, leave_running=True)
    seen: list[str] = []
    final = operations.wait_for(kube, started, timeout=30, progress=seen.append)
    name = final["metadata"]["name"]
    assert seen[0] == (f"checkpoint {name}: Pending, waiting for the cedana helper on node "
                       "node1")
    assert f"checkpoint {name}: Running on node node1: taken by the helper on node1" in seen
    assert seen[-1].startswith(f"checkpoint {name}: Succeeded on node node1")


def test_no_helper_taking_it_times_out_with_where_it_stands(
        cluster: FakeCluster, helpers: FakeHelpers, counter: dict, kubeconfig: Path) -> None:
    helpers.ignored.add("checkpoints")
    result = run_cli(kubeconfig, "checkpoint", "counter", "--timeout", "1s")
    assert result.exit_code == 124
    name = cluster.objects_of("checkpoints")[0]["metadata"]["name"]
    assert result.stderr == (
        f"error: checkpoint default/{name} did not finish within 1s (checkpoint {name}: "
        "Pending, waiting for the cedana helper on node node1) (it goes on: kubectl -n "
        f"default get checkpoints.cedana.io {name} -w)\n")


def test_an_object_deleted_while_waited_for(cluster: FakeCluster, helpers: FakeHelpers,
                                            counter: dict, kubeconfig: Path) -> None:
    helpers.ignored.add("checkpoints")

    def delete_soon(_plural: str, key: tuple[str, str, str]) -> None:
        def gone() -> None:
            with cluster.lock:
                cluster._custom_delete("checkpoints", key, dry_run=False)
        threading.Timer(0.3, gone).start()

    cluster.on_created.append(delete_soon)
    result = run_cli(kubeconfig, "checkpoint", "counter")
    assert result.exit_code == 3
    assert "was deleted before it finished" in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupting_the_wait_leaves_the_object_to_its_helper(
        cluster: FakeCluster, helpers: FakeHelpers, counter: dict, kubeconfig: Path,
        sig: signal.Signals) -> None:
    helpers.ignored.add("checkpoints")  # it stays Pending: the plugin keeps watching
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubectl_cedana", "--kubeconfig", str(kubeconfig), "checkpoint",
         "counter"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        # as a terminal's Ctrl-C finds it: a shell's background job (CI) inherits SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert wait_for(lambda: bool(_watches(cluster)), timeout=30)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert out == b""
    (obj,) = cluster.objects_of("checkpoints")
    name = obj["metadata"]["name"]
    assert err.decode() == (f"error: interrupted; checkpoint default/{name} goes on (follow "
                            f"it: kubectl -n default get checkpoints.cedana.io {name} -w)\n")
