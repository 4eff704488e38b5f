"""The plugin against a real local HTTP server playing API server, pod proxy and helper."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.unit.plugin_fakeapi import (
    HELPER_NS,
    TOKEN,
    FakeApiServer,
    FakeCluster,
    make_pki,
    make_pod,
    run_cli,
    wait_for,
    write_kubeconfig,
)

REPO = Path(__file__).resolve().parents[2]
PROXY = "/api/v1/namespaces/cedana-system/pods/cedana-helper-node1:1324/proxy"


# -- reaching the helper ----------------------------------------------------------------------
def test_version_reaches_each_helper_through_the_pod_proxy_with_the_token(
        cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.add_helper("node2")
    result = run_cli(kubeconfig, "version")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Client Version: kubectl-cedana 0.1.0"
    assert lines[1].split() == ["NODE", "HELPER", "RUNC", "CRIU"]
    assert lines[2].split() == ["node1", "0.1.0", "1.1.5", "4.1.1"]
    assert lines[3].split()[0] == "node2"
    proxied = cluster.requests_matching(
        "GET", r"^/api/v1/namespaces/cedana-system/pods/cedana-helper-node\d:1324/proxy/version$")
    assert len(proxied) == 2
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in proxied)
    assert result.stderr == ""


def test_helper_pod_is_found_by_label_and_node_field_selector(
        cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.add_helper("node2")
    cluster.add_pod(make_pod("counter", node="node2"))
    result = run_cli(kubeconfig, "checkpoint", "counter")
    assert result.exit_code == 0, result.stderr
    lookups = [r for r in cluster.requests_matching("GET", r"^/api/v1/namespaces/cedana-system/"
                                                            r"pods$")]
    assert lookups[0].query["labelSelector"] == ["app.kubernetes.io/name=cedana-helper"]
    assert lookups[0].query["fieldSelector"] == ["spec.nodeName=node2"]
    assert cluster.helpers["node2"].checkpoints and not cluster.helpers["node1"].checkpoints


def test_client_certificate_kubeconfig_works(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    fake = FakeCluster()
    fake.add_helper("node1")
    with FakeApiServer(fake, tls=pki) as server:
        config = write_kubeconfig(tmp_path / "kc", server.url, pki=pki)
        result = run_cli(config, "version", "-o", "json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["nodes"][0]["criu"] == "4.1.1"
    subjects = [dict(x[0] for x in (r.peer_cert or {})["subject"]) for r in fake.requests]
    assert subjects and all(s["commonName"] == "alice" for s in subjects)
    assert all("authorization" not in r.headers for r in fake.requests)


def test_rejected_token_is_reported_as_unauthorized(cluster: FakeCluster, api: FakeApiServer,
                                                    tmp_path: Path) -> None:
    config = write_kubeconfig(tmp_path / "kc", api.url, token="wrong")
    result = run_cli(config, "list")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: unauthorized")
    assert len(result.stderr.splitlines()) == 1


def test_no_helper_on_the_pods_node_tells_to_install(cluster: FakeCluster,
                                                      kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter", node="node9"))
    result = run_cli(kubeconfig, "checkpoint", "counter")
    assert result.exit_code == 3
    assert result.stderr == ("error: no cedana helper pod on node node9 "
                             "(run `kubectl cedana install`)\n")
    assert result.stdout == ""


def test_forbidden_proxy_names_the_missing_permission(cluster: FakeCluster,
                                                      kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    cluster.forbidden.append(("POST", r"/proxy/"))
    result = run_cli(kubeconfig, "checkpoint", "counter")
    assert result.exit_code == 1
    assert 'you need "create pods/proxy in namespace cedana-system"' in result.stderr
    assert "kubectl auth can-i create pods --subresource=proxy -n cedana-system" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_forbidden_pod_read_names_get_pods(cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.forbidden.append(("GET", r"^/api/v1/namespaces/default/pods/counter$"))
    result = run_cli(kubeconfig, "checkpoint", "counter")
    assert result.exit_code == 1
    assert 'you need "get pods in namespace default"' in result.stderr


def test_unreachable_helper_is_a_remote_failure(cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    cluster.unreachable.add("node1")
    result = run_cli(kubeconfig, "checkpoint", "counter")
    assert result.exit_code == 5
    assert "cannot reach the cedana helper pod cedana-helper-node1 on node node1" in result.stderr
    assert "connection refused" in result.stderr


@pytest.mark.parametrize("code,status,exit_code", [
    ("container_not_found", 404, 3), ("dump_failed", 500, 5), ("operation_in_progress", 409, 4),
    ("io_uring_unsupported", 422, 5), ("path_outside_checkpoint_dir", 400, 2)])
def test_helper_errors_are_relayed_with_their_code(cluster: FakeCluster, kubeconfig: Path,
                                                   code: str, status: int,
                                                   exit_code: int) -> None:
    cluster.add_pod(make_pod("counter"))
    cluster.helpers["node1"].errors["checkpoint"] = (status, {"code": code,
                                                              "message": "it went wrong",
                                                              "log_tail": "criu: ..."})
    result = run_cli(kubeconfig, "checkpoint", "counter")
    assert result.exit_code == exit_code
    assert result.stderr == f"error: helper on node node1: it went wrong [{code}]\n"


def test_helper_error_body_shown_with_debug(cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    cluster.helpers["node1"].errors["checkpoint"] = (500, {"code": "dump_failed",
                                                           "message": "x", "log_tail": "EPERM"})
    result = run_cli(kubeconfig, "checkpoint", "counter", "--debug")
    assert result.exit_code == 5
    assert "EPERM" in result.stderr and "Traceback" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("error: helper on node node1")


def test_request_timeout_exits_124(cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.helpers["node1"].delays["version"] = 2.0
    result = run_cli(kubeconfig, "version", "--request-timeout", "300ms")
    assert result.exit_code == 124
    assert "timed out" in result.stderr


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


# -- namespaces and global flags --------------------------------------------------------------
def test_namespace_defaults_to_the_contexts(cluster: FakeCluster, api: FakeApiServer,
                                            tmp_path: Path) -> None:
    config = write_kubeconfig(tmp_path / "kc", api.url, namespace="demo")
    cluster.add_pod(make_pod("counter", "demo"))
    result = run_cli(config, "checkpoint", "counter")
    assert result.exit_code == 0, result.stderr
    assert cluster.requests_matching("GET", r"^/api/v1/namespaces/demo/pods/counter$")


def test_context_flag_switches_namespace(cluster: FakeCluster, kubeconfig: Path) -> None:
    result = run_cli(kubeconfig, "--context", "other", "checkpoint", "counter")
    assert result.exit_code == 3
    assert 'pod "counter" not found in namespace "elsewhere"' in result.stderr


def test_global_flags_work_after_the_command(cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter", "team"))
    result = run_cli(kubeconfig, "checkpoint", "counter", "-n", "team", "-o", "json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["kind"] == "Checkpoint" and doc["source"]["namespace"] == "team"


def test_flag_after_command_overrides_flag_before(cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter", "b"))
    result = run_cli(kubeconfig, "-n", "a", "checkpoint", "counter", "-n", "b")
    assert result.exit_code == 0, result.stderr


# -- list -------------------------------------------------------------------------------------
def test_list_table_and_wide(cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("web", containers=("app", "proxy")))
    cluster.add_pod(make_pod("counter"))
    result = run_cli(kubeconfig, "list")
    assert result.exit_code == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    assert rows[0] == ["POD", "CONTAINER", "NODE", "STATUS"]
    assert rows[1:] == [["counter", "main", "node1", "running"],
                        ["web", "app", "node1", "running"], ["web", "proxy", "node1", "running"]]
    wide = run_cli(kubeconfig, "list", "-o", "wide")
    assert wide.stdout.splitlines()[0].split() == ["POD", "CONTAINER", "NODE", "STATUS", "PID",
                                                   "CONTAINER-ID", "IMAGE"]


def test_list_all_namespaces_asks_each_namespace_with_pods_on_the_node(
        cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("a", "one"))
    cluster.add_pod(make_pod("b", "two"))
    result = run_cli(kubeconfig, "list", "-A", "-o", "yaml")
    assert result.exit_code == 0, result.stderr
    doc = yaml.safe_load(result.stdout)
    assert doc["kind"] == "ContainerList"
    assert {(i["namespace"], i["pod"]) for i in doc["items"]} >= {("one", "a"), ("two", "b")}
    asked = {r.path.rsplit("/", 1)[1] for r in cluster.requests_matching("GET", r"/proxy/list/")}
    assert asked == {"one", "two", HELPER_NS}


def test_list_empty_namespace(cluster: FakeCluster, kubeconfig: Path) -> None:
    result = run_cli(kubeconfig, "list", "-n", "empty")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr == "No containers found in namespace empty.\n"


def test_list_without_any_helper(kubeconfig: Path, cluster: FakeCluster) -> None:
    del cluster.pods[(HELPER_NS, "cedana-helper-node1")]
    result = run_cli(kubeconfig, "list")
    assert result.exit_code == 3
    assert "kubectl cedana install" in result.stderr


# -- checkpoint -------------------------------------------------------------------------------
def test_checkpoint_prints_the_id_and_sends_the_contract_body(cluster: FakeCluster,
                                                              kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    result = run_cli(kubeconfig, "checkpoint", "counter", "--leave-running")
    assert result.exit_code == 0, result.stderr
    ident = result.stdout.strip()
    assert ident in cluster.helpers["node1"].checkpoints
    sent = cluster.requests_matching("POST", r"/proxy/checkpoint$")[0].body
    assert sent == {"checkpoint_data": {"container_name": "main", "sandbox_name": "counter",
                                        "namespace": "default", "checkpoint_path": ""},
                    "leave_running": True, "with_rootfs": True}


def test_checkpoint_path_and_default_stop(cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    result = run_cli(kubeconfig, "checkpoint", "counter", "--path", "/var/lib/cedana/checkpoints/x")
    assert result.exit_code == 0, result.stderr
    sent = cluster.requests_matching("POST", r"/proxy/checkpoint$")[0].body
    assert sent["leave_running"] is False
    assert sent["checkpoint_data"]["checkpoint_path"] == "/var/lib/cedana/checkpoints/x"


def test_checkpoint_multi_container_needs_c(cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("web", containers=("app", "proxy")))
    result = run_cli(kubeconfig, "checkpoint", "web")
    assert result.exit_code == 2
    assert result.stderr == ('error: pod "web" has 2 containers: app, proxy '
                             "(choose one with -c CONTAINER)\n")
    ok = run_cli(kubeconfig, "checkpoint", "web", "-c", "proxy", "-o", "json")
    assert ok.exit_code == 0
    assert json.loads(ok.stdout)["source"]["container"] == "proxy"


def test_checkpoint_unknown_pod_and_container(cluster: FakeCluster, kubeconfig: Path) -> None:
    missing = run_cli(kubeconfig, "checkpoint", "ghost")
    assert missing.exit_code == 3
    assert missing.stderr == 'error: pod "ghost" not found in namespace "default"\n'
    cluster.add_pod(make_pod("counter"))
    wrong = run_cli(kubeconfig, "checkpoint", "counter", "-c", "nope")
    assert wrong.exit_code == 3
    assert "containers: main" in wrong.stderr


def test_checkpoint_of_a_pod_that_does_not_run(cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter", phase="Pending", running=False))
    result = run_cli(kubeconfig, "checkpoint", "counter")
    assert result.exit_code == 4
    assert "not running" in result.stderr


def test_checkpoint_wide_and_json_output(cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    wide = run_cli(kubeconfig, "checkpoint", "counter", "-o", "wide")
    assert wide.stdout.splitlines()[0].split() == ["CHECKPOINT", "POD", "CONTAINER", "NODE",
                                                   "SIZE", "DURATION", "PATH"]
    doc = json.loads(run_cli(kubeconfig, "checkpoint", "counter", "-o", "json").stdout)
    assert list(doc)[:2] == ["apiVersion", "kind"]
    assert doc["apiVersion"] == "kubectl-cedana/v1"
    assert set(doc) >= {"checkpoint_id", "checkpoint_path", "size_bytes", "duration_ms",
                        "leave_running", "source"}
    assert len(doc["source"]["container_id"]) == 64 and doc["source"]["runtime"] == "containerd"


# -- checkpoints ------------------------------------------------------------------------------
def _checkpoint(kubeconfig: Path, pod: str = "counter", *extra: str) -> str:
    result = run_cli(kubeconfig, "checkpoint", pod, *extra)
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip()


def test_checkpoints_ls_inspect_rm(cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    cluster.add_pod(make_pod("other", "elsewhere"))
    ident = _checkpoint(kubeconfig)
    _checkpoint(kubeconfig, "other", "-n", "elsewhere")
    listed = run_cli(kubeconfig, "checkpoints")
    assert listed.exit_code == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["ID", "POD", "CONTAINER", "NODE", "SIZE", "COMPRESSION", "AGE",
                                "WHERE"]
    assert len(lines) == 2 and lines[1].split()[:4] == [ident, "counter", "main", "node1"]
    assert lines[1].split()[-1] == "local"
    every = json.loads(run_cli(kubeconfig, "checkpoints", "ls", "-A", "-o", "json").stdout)
    assert every["kind"] == "CheckpointList" and len(every["items"]) == 2
    inspected = run_cli(kubeconfig, "checkpoints", "inspect", ident[:8], "-o", "json")
    assert inspected.exit_code == 0, inspected.stderr
    assert json.loads(inspected.stdout)["manifest"] == {"files": 3}
    removed = run_cli(kubeconfig, "checkpoints", "rm", ident)
    assert removed.stdout == f'checkpoint "{ident}" deleted\n'
    assert ident not in cluster.helpers["node1"].checkpoints
    again = run_cli(kubeconfig, "checkpoints", "rm", ident)
    assert again.exit_code == 3


# -- restore ----------------------------------------------------------------------------------
def test_restore_new_pod_builds_placeholder_waits_and_restores(cluster: FakeCluster,
                                                               kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    ident = _checkpoint(kubeconfig)
    result = run_cli(kubeconfig, "restore", ident, "--new-pod", "counter-copy", "-o", "json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["kind"] == "Restore" and doc["placeholder_created"] is True
    assert doc["target"] == {"namespace": "default", "pod": "counter-copy", "container": "main",
                             "node": "node1", "container_id": "", "runtime": "",
                             "image": "busybox:1.36"}
    created = cluster.requests_matching("POST", r"^/api/v1/namespaces/default/pods$")[0].body
    assert created["spec"]["containers"][0]["command"] == ["/bin/sh", "-c",
                                                           "while true; do sleep 3600; done"]
    assert created["metadata"]["labels"]["cedana.io/checkpoint-id"] == ident
    assert created["spec"]["nodeName"] == "node1"
    restored = cluster.helpers["node1"].restored[0]
    assert restored == {"container_name": "main", "sandbox_name": "counter-copy",
                        "namespace": "default", "checkpoint_id": ident}
    assert ("default", "counter-copy") in cluster.pods


def test_restore_new_pod_rejects_another_node(cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    ident = _checkpoint(kubeconfig)
    result = run_cli(kubeconfig, "restore", ident, "--new-pod", "x", "--node", "node2")
    assert result.exit_code == 4
    assert "stored on node node1" in result.stderr
    assert not cluster.requests_matching("POST", r"/pods$")


def test_restore_new_pod_failure_removes_the_placeholder(cluster: FakeCluster,
                                                         kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    ident = _checkpoint(kubeconfig)
    cluster.helpers["node1"].errors["restore"] = (500, {"code": "restore_failed",
                                                        "message": "criu restore failed"})
    result = run_cli(kubeconfig, "restore", ident, "--new-pod", "copy")
    assert result.exit_code == 5
    assert result.stderr == ("error: helper on node node1: criu restore failed; deleted "
                             "placeholder pod default/copy [restore_failed]\n")
    assert ("default", "copy") not in cluster.pods
    deletes = cluster.requests_matching("DELETE", r"/pods/copy$")
    assert deletes[0].query["gracePeriodSeconds"] == ["0"]


def test_restore_new_pod_image_without_shell(cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    ident = _checkpoint(kubeconfig)
    cluster.placeholder_mode = "no-shell"
    result = run_cli(kubeconfig, "restore", ident, "--new-pod", "copy")
    assert result.exit_code == 1
    assert "/bin/sh" in result.stderr and "--into" in result.stderr
    assert ("default", "copy") not in cluster.pods


def test_restore_new_pod_name_taken(cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    cluster.add_pod(make_pod("copy"))
    ident = _checkpoint(kubeconfig)
    result = run_cli(kubeconfig, "restore", ident, "--new-pod", "copy")
    assert result.exit_code == 4
    assert 'pod "copy" already exists' in result.stderr
    assert ("default", "copy") in cluster.pods  # someone else's pod is left alone


def test_restore_new_pod_wait_times_out(cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    ident = _checkpoint(kubeconfig)
    cluster.placeholder_mode = "pending"
    result = run_cli(kubeconfig, "restore", ident, "--new-pod", "copy", "--timeout", "1s")
    assert result.exit_code == 124
    assert "did not start within 1s" in result.stderr
    assert ("default", "copy") not in cluster.pods


def test_restore_new_pod_when_source_is_gone(cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    ident = _checkpoint(kubeconfig)
    del cluster.pods[("default", "counter")]
    result = run_cli(kubeconfig, "restore", ident, "--new-pod", "copy")
    assert result.exit_code == 3
    assert "no longer exists" in result.stderr and "--into" in result.stderr


def test_restore_into_existing_pod(cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    cluster.add_pod(make_pod("sleeper", containers=("app", "side")))
    ident = _checkpoint(kubeconfig)
    result = run_cli(kubeconfig, "restore", ident, "--into", "sleeper", "-c", "app")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"restored checkpoint {ident} into pod default/sleeper "
                                    "(container app, node node1, pid 4242)")
    assert cluster.helpers["node1"].restored[0]["sandbox_name"] == "sleeper"
    assert not cluster.requests_matching("POST", r"^/api/v1/namespaces/default/pods$")


def test_restore_into_pod_on_another_node(cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.add_helper("node2")
    cluster.add_pod(make_pod("counter"))
    cluster.add_pod(make_pod("sleeper", node="node2"))
    ident = _checkpoint(kubeconfig)
    result = run_cli(kubeconfig, "restore", ident, "--into", "sleeper")
    assert result.exit_code == 4
    assert "stored on node node1 but pod \"sleeper\" runs on node node2" in result.stderr


def test_restore_by_path_into_pod(cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    cluster.add_pod(make_pod("sleeper"))
    _checkpoint(kubeconfig, "counter", "--path", "/var/lib/cedana/checkpoints/mine")
    result = run_cli(kubeconfig, "restore", "/var/lib/cedana/checkpoints/mine",
                     "--into", "sleeper")
    assert result.exit_code == 0, result.stderr
    assert cluster.helpers["node1"].restored[0]["checkpoint_path"] == \
        "/var/lib/cedana/checkpoints/mine"


def test_restore_unknown_checkpoint(cluster: FakeCluster, kubeconfig: Path) -> None:
    result = run_cli(kubeconfig, "restore", "0000dead", "--new-pod", "x")
    assert result.exit_code == 3
    assert 'checkpoint "0000dead" not found on any node' in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_during_restore_new_pod_removes_placeholder(
        cluster: FakeCluster, kubeconfig: Path, sig: signal.Signals) -> None:
    cluster.add_pod(make_pod("counter"))
    ident = _checkpoint(kubeconfig)
    cluster.placeholder_mode = "pending"  # the plugin keeps waiting for it to run
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubectl_cedana", "--kubeconfig", str(kubeconfig), "restore",
         ident, "--new-pod", "copy"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert wait_for(lambda: ("default", "copy") in cluster.pods, timeout=30)
        assert wait_for(lambda: len(cluster.requests_matching("GET", r"/pods/copy$")) >= 1)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert out == b""
    assert err.decode().strip().splitlines()[-1] == \
        "error: interrupted; deleted placeholder pod default/copy"
    assert ("default", "copy") not in cluster.pods
    assert ("default", "counter") in cluster.pods


# -- migrate ----------------------------------------------------------------------------------
def test_migrate_creates_the_pod_before_the_checkpoint_and_reports_the_pause(
        cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    result = run_cli(kubeconfig, "migrate", "counter", "--delete-source", "-o", "json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["kind"] == "Migration"
    assert doc["target"]["pod"] == "counter-migrated" and doc["source_deleted"] is True
    assert isinstance(doc["pause_ms"], int) and doc["pause_ms"] >= 0
    assert doc["checkpoint_ms"] == 210 and doc["restore_ms"] == 350
    order = [(r.method, r.path) for r in cluster.requests
             if r.method in ("POST", "DELETE", "PATCH")]
    assert order == [
        ("POST", "/api/v1/namespaces/default/pods"),
        ("POST", f"{PROXY}/checkpoint"),
        ("POST", f"{PROXY}/restore"),
        ("PATCH", "/api/v1/namespaces/default/pods/counter-migrated"),
        ("DELETE", "/api/v1/namespaces/default/pods/counter"),
    ]
    checkpoint_body = cluster.requests_matching("POST", r"/proxy/checkpoint$")[0].body
    assert checkpoint_body["leave_running"] is False
    migrated = cluster.pods[("default", "counter-migrated")]
    assert migrated["metadata"]["labels"]["cedana.io/checkpoint-id"] == doc["checkpoint_id"]
    assert ("default", "counter") not in cluster.pods


def test_migrate_keeps_source_running_by_default(cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    result = run_cli(kubeconfig, "migrate", "counter", "--new-pod", "twin")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "migrated default/counter (container main) to pod twin on node node1"
    assert lines[1].startswith("checkpoint ") and "pause" in lines[1]
    assert cluster.requests_matching("POST", r"/proxy/checkpoint$")[0].body["leave_running"]
    assert ("default", "counter") in cluster.pods


def test_migrate_to_another_node_is_refused_before_anything_changes(
        cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    missing = run_cli(kubeconfig, "migrate", "counter", "--to-node", "node2")
    assert missing.exit_code == 3 and "node2" in missing.stderr  # no helper there
    cluster.add_helper("node2")
    result = run_cli(kubeconfig, "migrate", "counter", "--to-node", "node2")
    assert result.exit_code == 2
    assert "needs a checkpoint registry" in result.stderr
    assert "--checkpoint-repository" in result.stderr
    assert not [r for r in cluster.requests if r.method != "GET"]


def test_migrate_restore_failure_keeps_checkpoint_and_removes_pod(
        cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    cluster.helpers["node1"].errors["restore"] = (500, {"code": "restore_failed",
                                                        "message": "boom"})
    result = run_cli(kubeconfig, "migrate", "counter", "--delete-source")
    assert result.exit_code == 5
    ident = next(iter(cluster.helpers["node1"].checkpoints))
    assert f"checkpoint {ident} is kept on node node1; the source container was stopped" \
        in result.stderr
    assert ("default", "counter-migrated") not in cluster.pods
    assert ("default", "counter") in cluster.pods


# -- doctor -----------------------------------------------------------------------------------
def test_doctor_reports_helpers_criu_and_rbac(cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.objects["/apis/apps/v1/namespaces/cedana-system/daemonsets/cedana-helper"] = {
        "metadata": {"name": "cedana-helper", "generation": 1},
        "spec": {"template": {"spec": {"containers": [
            {"image": "docker.io/cedana/helper:0.1.0"}]}}},
        "status": {"desiredNumberScheduled": 1, "numberReady": 1, "updatedNumberScheduled": 1,
                   "observedGeneration": 1}}
    result = run_cli(kubeconfig, "doctor", "-o", "json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] is True
    by_check = {(c["check"], c["scope"]): c for c in doc["checks"]}
    assert by_check[("criu", "node1")]["detail"].startswith("CRIU 4.1.1")
    assert by_check[("rbac", "create pods/proxy in namespace cedana-system")]["result"] == "ok"
    cluster.denied_reviews.add(("create", "pods", "proxy", "cedana-system"))
    cluster.add_pod(make_pod("x", node="node2"))
    cluster.nodes.append("node2")
    failing = run_cli(kubeconfig, "doctor")
    assert failing.exit_code == 1
    table = failing.stdout
    assert "create pods/proxy in namespace cedana-system" in table
    assert any(line.split()[:3] == ["helper", "node2", "fail"] for line in table.splitlines())
    assert failing.stderr == "error: 2 check(s) failed\n"


# -- partial answers --------------------------------------------------------------------------
def test_list_prints_what_it_got_and_fails_for_the_silent_node(cluster: FakeCluster,
                                                               kubeconfig: Path) -> None:
    cluster.add_helper("node2")
    cluster.add_pod(make_pod("counter"))
    cluster.add_pod(make_pod("other", node="node2"))
    cluster.unreachable.add("node2")
    result = run_cli(kubeconfig, "list")
    assert result.exit_code == 5
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["POD", "counter"]
    assert result.stderr.startswith("error: cannot reach the cedana helper pod "
                                    "cedana-helper-node2 on node node2")


def test_version_reports_each_nodes_error(cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.add_helper("node2")
    cluster.helpers["node2"].errors["version"] = (500, {"code": "internal_error",
                                                        "message": "bug"})
    result = run_cli(kubeconfig, "version", "-o", "json")
    assert result.exit_code == 5
    nodes = {n["node"]: n for n in json.loads(result.stdout)["nodes"]}
    assert nodes["node1"]["criu"] == "4.1.1" and nodes["node1"]["error"] == ""
    assert nodes["node2"]["error"] == "helper on node node2: bug [internal_error]"
    assert result.stderr == "error: helper on node node2: bug [internal_error]\n"
