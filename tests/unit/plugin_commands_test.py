"""Each command against the fake API server and the fake helpers: the object it creates (its
labels, annotation and spec), what it prints from the status the helper writes, how a Failed
status becomes an exit status and one line, and the commands that read and delete objects."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.plugin_fakeapi import HELPER_NS, FakeCluster, make_pod, run_cli
from tests.unit.plugin_fakehelpers import FakeHelpers

ID = "6f1d2c3b-0000-4000-8000-000000000001"
NODE_LABEL = "cedana.io/node"
REQUESTED_BY = "cedana.io/requested-by"
CHECKPOINT_DATA_FINALIZER = "cedana.io/checkpoint-data"


def _checkpoint(kubeconfig: Path, pod: str = "counter", *extra: str) -> dict[str, Any]:
    result = run_cli(kubeconfig, "checkpoint", pod, "--leave-running", "-o", "json", *extra)
    assert result.exit_code == 0, result.stderr
    return dict(json.loads(result.stdout))


def _stored(namespace: str, name: str, *, pod: str = "counter", container: str = "main",
            node: str = "node1", phase: str = "Succeeded", ident: str = "",
            size: int = 1000, completed: str = "2024-05-01T10:00:00Z") -> dict[str, Any]:
    labels = {NODE_LABEL: node}
    if ident:
        labels["cedana.io/checkpoint-id"] = ident
    return {"metadata": {"name": name, "namespace": namespace, "labels": labels,
                         "creationTimestamp": completed,
                         "finalizers": ["cedana.io/checkpoint-data"]},
            "spec": {"podName": pod, "container": container},
            "status": {"phase": phase, "node": node, "checkpointID": ident,
                       "container": container, "sizeBytes": size, "completedAt": completed}}


# -- checkpoint -------------------------------------------------------------------------------
def test_checkpoint_creates_one_object_for_the_pods_node_and_prints_the_id(
        cluster: FakeCluster, helpers: FakeHelpers, kubeconfig: Path) -> None:
    cluster.add_helper("node2")
    cluster.add_pod(make_pod("counter", node="node2"))
    result = run_cli(kubeconfig, "checkpoint", "counter")
    assert result.exit_code == 0, result.stderr
    (sent,) = cluster.created("checkpoints")
    assert sent == {"apiVersion": "cedana.io/v1alpha1", "kind": "Checkpoint",
                    "metadata": {"namespace": "default", "generateName": "counter-",
                                 "labels": {NODE_LABEL: "node2"},
                                 "annotations": {REQUESTED_BY: "token-user"},
                                 # set at creation: the helper need not add it (issue 19)
                                 "finalizers": [CHECKPOINT_DATA_FINALIZER]},
                    "spec": {"podName": "counter", "container": "main", "leaveRunning": False,
                             "withRootfs": True}}
    (obj,) = cluster.objects_of("checkpoints")
    assert result.stdout == obj["status"]["checkpointID"] + "\n"
    assert result.stderr == ""
    assert obj["status"]["node"] == "node2"


def test_checkpoint_flags_go_into_the_spec(cluster: FakeCluster, helpers: FakeHelpers,
                                           kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("web", containers=("app", "proxy")))
    result = run_cli(kubeconfig, "checkpoint", "web", "-c", "proxy", "--leave-running",
                     "--without-rootfs", "--storage", "remote", "--compression", "lz4",
                     "--name", "web-before-upgrade")
    assert result.exit_code == 0, result.stderr
    (sent,) = cluster.created("checkpoints")
    assert sent["metadata"]["name"] == "web-before-upgrade"
    assert "generateName" not in sent["metadata"]
    assert sent["spec"] == {"podName": "web", "container": "proxy", "leaveRunning": True,
                            "withRootfs": False, "storage": "remote", "compression": "lz4"}


def test_checkpoint_json_yaml_and_wide(cluster: FakeCluster, helpers: FakeHelpers,
                                       kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    obj = _checkpoint(kubeconfig)
    assert (obj["apiVersion"], obj["kind"]) == ("cedana.io/v1alpha1", "Checkpoint")
    assert obj["status"]["phase"] == "Succeeded" and obj["status"]["sizeBytes"] == 123456
    assert obj["metadata"]["labels"]["cedana.io/checkpoint-id"] == obj["status"]["checkpointID"]
    as_yaml = yaml.safe_load(run_cli(kubeconfig, "checkpoint", "counter", "-o", "yaml").stdout)
    assert as_yaml["kind"] == "Checkpoint" and as_yaml["status"]["phase"] == "Succeeded"
    wide = run_cli(kubeconfig, "checkpoint", "counter", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["CHECKPOINT", "NAME", "POD", "CONTAINER", "NODE", "SIZE",
                               "DURATION", "STORAGE"]
    assert wide[1].split()[2:] == ["counter", "main", "node1", "120.6KiB", "210ms", "local"]


def test_checkpoint_no_wait_prints_the_name_and_does_not_watch(
        cluster: FakeCluster, helpers: FakeHelpers, kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    helpers.ignored.add("checkpoints")
    result = run_cli(kubeconfig, "checkpoint", "counter", "--no-wait")
    assert result.exit_code == 0, result.stderr
    (obj,) = cluster.objects_of("checkpoints")
    assert result.stdout == obj["metadata"]["name"] + "\n"
    assert not [r for r in cluster.requests if r.query.get("watch")]


@pytest.mark.parametrize("flag", ["--dry-run", "--dry-run=client"])
def test_checkpoint_client_dry_run_prints_and_creates_nothing(
        cluster: FakeCluster, helpers: FakeHelpers, kubeconfig: Path, flag: str) -> None:
    cluster.add_pod(make_pod("counter"))
    line = run_cli(kubeconfig, "checkpoint", "counter", flag)
    assert line.exit_code == 0, line.stderr
    assert line.stdout == "checkpoint.cedana.io/counter-<generated> created (dry run)\n"
    printed = yaml.safe_load(run_cli(kubeconfig, "checkpoint", "counter", flag,
                                     "-o", "yaml").stdout)
    assert printed["metadata"]["generateName"] == "counter-"
    assert printed["spec"]["podName"] == "counter"
    assert cluster.created("checkpoints") == [] and cluster.objects_of("checkpoints") == []


def test_checkpoint_server_dry_run_is_admitted_and_not_stored(
        cluster: FakeCluster, helpers: FakeHelpers, kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    result = run_cli(kubeconfig, "checkpoint", "counter", "--dry-run=server")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("checkpoint.cedana.io/counter-")
    assert result.stdout.endswith(" created (server dry run)\n")
    (post,) = cluster.requests_matching("POST", r"/checkpoints$")
    assert post.query["dryRun"] == ["All"]
    assert cluster.objects_of("checkpoints") == []


def _half_running(name: str) -> dict[str, Any]:
    """A pod of two containers, the second still being created."""
    pod = make_pod(name, containers=("app", "proxy"))
    pod["status"]["containerStatuses"][1]["state"] = {"waiting": {"reason": "ContainerCreating"}}
    return pod


def test_checkpoint_without_c_takes_the_whole_pod(
        cluster: FakeCluster, helpers: FakeHelpers, kubeconfig: Path) -> None:
    """A pod of several containers (a native sidecar counts) and no -c: one Checkpoint of
    every container (spec.container left out); -c still picks one, the sidecar too."""
    pod = make_pod("web", containers=("app", "proxy"))
    pod["spec"]["initContainers"].append({"name": "mesh", "image": "busybox:1.36",
                                          "restartPolicy": "Always"})
    pod["status"]["initContainerStatuses"] = [{
        "name": "mesh", "containerID": "containerd://" + "c" * 64,
        "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}}}]
    cluster.add_pod(pod)
    result = run_cli(kubeconfig, "checkpoint", "web", "--no-wait")
    assert result.exit_code == 0, result.stderr
    result = run_cli(kubeconfig, "checkpoint", "web", "-c", "mesh", "--no-wait")
    assert result.exit_code == 0, result.stderr
    whole, one = cluster.created("checkpoints")
    assert "container" not in whole["spec"] and whole["spec"]["podName"] == "web"
    assert one["spec"]["container"] == "mesh"


@pytest.mark.parametrize("setup,args,code,fragment", [
    (lambda c: c.add_pod(_half_running("web")), ["web"], 4,
     'container "proxy" of pod "web" is not running'),
    (lambda c: None, ["ghost"], 3, 'pod "ghost" not found in namespace "default"'),
    (lambda c: c.add_pod(make_pod("counter")), ["counter", "-c", "nope"], 3,
     "containers: main"),
    (lambda c: c.add_pod(make_pod("counter", phase="Pending", running=False)), ["counter"], 4,
     "not running"),
    (lambda c: c.add_pod(make_pod("counter", node="node9")), ["counter"], 3,
     "no cedana helper pod on node node9 (run `kubectl cedana install`)"),
])
def test_checkpoint_refuses_before_creating_anything(cluster: FakeCluster, helpers: FakeHelpers,
                                                     kubeconfig: Path, setup: Any,
                                                     args: list[str], code: int,
                                                     fragment: str) -> None:
    setup(cluster)
    result = run_cli(kubeconfig, "checkpoint", *args)
    assert result.exit_code == code, result.stderr
    assert fragment in result.stderr and len(result.stderr.splitlines()) == 1
    assert result.stdout == "" and cluster.created("checkpoints") == []


@pytest.mark.parametrize("case", ["may not list helpers", "helper not ready yet"])
def test_checkpoint_goes_ahead_when_a_helper_may_take_it(
        cluster: FakeCluster, helpers: FakeHelpers, kubeconfig: Path, case: str) -> None:
    """A user of a namespace (edit) may not list cedana-system's pods, and a helper pod in a
    rollout is not ready yet: the object is made and the node's helper takes it."""
    cluster.add_pod(make_pod("counter"))
    if case == "may not list helpers":
        cluster.forbidden.append(("GET", rf"^/api/v1/namespaces/{HELPER_NS}/pods$"))
    else:
        cluster.add_helper("node1", ready=False)
    result = run_cli(kubeconfig, "checkpoint", "counter")
    assert result.exit_code == 0, result.stderr
    assert len(cluster.objects_of("checkpoints")) == 1


@pytest.mark.parametrize("code,exit_code", [
    ("container_not_found", 3), ("dump_failed", 5), ("operation_in_progress", 4),
    ("io_uring_unsupported", 5), ("invalid_request", 2), ("kubernetes_unavailable", 5)])
def test_a_failed_checkpoint_is_one_line_with_its_code(cluster: FakeCluster,
                                                      helpers: FakeHelpers, kubeconfig: Path,
                                                      code: str, exit_code: int) -> None:
    cluster.add_pod(make_pod("counter"))
    helpers.failures["checkpoints"] = (code, "it went wrong")
    result = run_cli(kubeconfig, "checkpoint", "counter")
    assert result.exit_code == exit_code
    (obj,) = cluster.objects_of("checkpoints")
    assert result.stderr == (f"error: checkpoint default/{obj['metadata']['name']} failed on "
                             f"node node1: it went wrong [{code}]\n")
    assert result.stdout == ""


def test_a_failed_status_is_shown_whole_with_debug(cluster: FakeCluster, helpers: FakeHelpers,
                                                   kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    helpers.failures["checkpoints"] = ("dump_failed", "criu dump: EPERM")
    result = run_cli(kubeconfig, "checkpoint", "counter", "--debug")
    assert result.exit_code == 5
    assert "debug: status {" in result.stderr and "'errorCode': 'dump_failed'" in result.stderr
    assert "Traceback" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].endswith("criu dump: EPERM [dump_failed]")


# -- restore ----------------------------------------------------------------------------------
def test_restore_by_id_into_a_sleeping_pod(cluster: FakeCluster, helpers: FakeHelpers,
                                           kubeconfig: Path) -> None:
    cluster.add_helper("node2")
    cluster.add_pod(make_pod("counter"))
    cluster.add_pod(make_pod("sleeper", node="node2", containers=("app", "side")))
    ident = _checkpoint(kubeconfig, "counter", "--storage", "remote")["status"]["checkpointID"]
    result = run_cli(kubeconfig, "restore", ident.upper(), "--into", "sleeper", "-c", "app")
    assert result.exit_code == 0, result.stderr
    (sent,) = cluster.created("restores")
    assert sent["metadata"] == {"namespace": "default", "generateName": "sleeper-",
                                "labels": {NODE_LABEL: "node2"},
                                "annotations": {REQUESTED_BY: "token-user"}}
    assert sent["spec"] == {"checkpointID": ident,
                            "target": {"podName": "sleeper", "container": "app"}}
    assert result.stdout == (f"restored checkpoint {ident} into pod default/sleeper (container "
                             "app, node node2, pid 4242) in 350 ms\n")


def test_restore_into_a_pod_of_several_containers_lets_the_helper_choose(
        cluster: FakeCluster, helpers: FakeHelpers, kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    cluster.add_pod(make_pod("sleeper", containers=("main", "side")))
    name = _checkpoint(kubeconfig)["metadata"]["name"]
    result = run_cli(kubeconfig, "restore", name, "--into", "sleeper", "-o", "json")
    assert result.exit_code == 0, result.stderr
    assert cluster.created("restores")[0]["spec"]["target"] == {"podName": "sleeper"}
    assert json.loads(result.stdout)["status"]["container"] == "main"  # the checkpoint's


def test_restore_by_name_into_a_new_pod_the_helper_makes(cluster: FakeCluster,
                                                         helpers: FakeHelpers,
                                                         kubeconfig: Path) -> None:
    cluster.add_helper("node2")
    cluster.add_pod(make_pod("counter", node="node2"))
    name = _checkpoint(kubeconfig)["metadata"]["name"]
    result = run_cli(kubeconfig, "restore", name, "--new-pod", "counter-copy", "-o", "json")
    assert result.exit_code == 0, result.stderr
    (sent,) = cluster.created("restores")
    assert sent["metadata"]["generateName"] == "counter-copy-"
    assert sent["metadata"]["labels"] == {NODE_LABEL: "node2"}  # the checkpoint's node
    assert sent["spec"] == {"checkpointName": name, "newPod": {"name": "counter-copy"}}
    assert not cluster.requests_matching("POST", r"^/api/v1/namespaces/default/pods$")
    assert ("default", "counter-copy") in cluster.pods  # made by the helper
    assert json.loads(result.stdout)["status"]["podName"] == "counter-copy"


def test_restore_by_id_into_a_new_pod_finds_the_checkpoints_node(
        cluster: FakeCluster, helpers: FakeHelpers, kubeconfig: Path) -> None:
    cluster.add_helper("node2")
    cluster.add_pod(make_pod("counter", node="node2"))
    ident = _checkpoint(kubeconfig)["status"]["checkpointID"]
    result = run_cli(kubeconfig, "restore", ident, "--new-pod", "copy")
    assert result.exit_code == 0, result.stderr
    lookup = cluster.requests_matching("GET", r"/namespaces/default/checkpoints$")
    assert [r.query["labelSelector"] for r in lookup if "labelSelector" in r.query] == [
        [f"cedana.io/checkpoint-id={ident}"]]
    assert cluster.created("restores")[0]["metadata"]["labels"] == {NODE_LABEL: "node2"}
    on_node = run_cli(kubeconfig, "restore", ident, "--new-pod", "copy2", "--node", "node1")
    assert on_node.exit_code == 0, on_node.stderr
    sent = cluster.created("restores")[1]
    assert sent["spec"]["newPod"] == {"name": "copy2", "node": "node1"}
    assert sent["metadata"]["labels"] == {NODE_LABEL: "node1"}


def test_restore_of_an_id_without_object_leaves_the_node_to_the_helpers(
        cluster: FakeCluster, helpers: FakeHelpers, kubeconfig: Path) -> None:
    """A checkpoint taken through the REST API has no Checkpoint object: no label, the
    helper of the right node claims the Restore (here none has it: checkpoint_not_found)."""
    result = run_cli(kubeconfig, "restore", ID, "--new-pod", "copy")
    assert result.exit_code == 3
    (sent,) = cluster.created("restores")
    assert "labels" not in sent["metadata"]
    assert result.stderr.endswith(f"no checkpoint {ID} [checkpoint_not_found]\n")


@pytest.mark.parametrize("phase,fragment", [
    ("Failed", 'checkpoint "old" failed, there is nothing to restore'),
    ("Running", 'checkpoint "old" is Running, not finished yet (wait for it: kubectl -n '
                "default get checkpoints.cedana.io old -w)")])
def test_restore_of_a_checkpoint_that_did_not_succeed(cluster: FakeCluster,
                                                     helpers: FakeHelpers, kubeconfig: Path,
                                                     phase: str, fragment: str) -> None:
    cluster.put("checkpoints", _stored("default", "old", phase=phase))
    result = run_cli(kubeconfig, "restore", "old", "--new-pod", "copy")
    assert result.exit_code == 4
    assert fragment in result.stderr
    assert cluster.created("restores") == []


def test_restore_of_another_namespaces_checkpoint(cluster: FakeCluster, helpers: FakeHelpers,
                                                  kubeconfig: Path) -> None:
    cluster.put("checkpoints", _stored("team-a", "nightly", ident=ID))
    cluster.add_pod(make_pod("sleeper", "team-b"))
    by_name = run_cli(kubeconfig, "-n", "team-b", "restore", "nightly",
                      "--checkpoint-namespace", "team-a", "--into", "sleeper")
    assert by_name.exit_code == 0, by_name.stderr
    by_id = run_cli(kubeconfig, "-n", "team-b", "restore", ID, "--checkpoint-namespace",
                    "team-a", "--into", "sleeper", "--name", "second")
    assert by_id.exit_code == 0, by_id.stderr
    # a name is only valid in the Restore's own namespace: the plugin sends the id
    first, second = cluster.created("restores")
    assert first["spec"] == second["spec"] == {
        "checkpointID": ID, "checkpointNamespace": "team-a",
        "target": {"podName": "sleeper", "container": "main"}}
    same = run_cli(kubeconfig, "-n", "team-a", "restore", "nightly", "--checkpoint-namespace",
                   "team-a", "--new-pod", "here")
    assert same.exit_code == 0, same.stderr
    assert cluster.created("restores")[2]["spec"] == {"checkpointName": "nightly",
                                                      "newPod": {"name": "here"}}


# -- migrate ----------------------------------------------------------------------------------
def test_migrate_creates_a_migration_and_prints_the_pause(cluster: FakeCluster,
                                                          helpers: FakeHelpers,
                                                          kubeconfig: Path) -> None:
    cluster.add_helper("node2")
    cluster.add_pod(make_pod("counter"))
    result = run_cli(kubeconfig, "migrate", "counter", "--to-node", "node2", "--delete-source",
                     "--new-pod", "moved")
    assert result.exit_code == 0, result.stderr
    (sent,) = cluster.created("migrations")
    assert sent["metadata"] == {"namespace": "default", "generateName": "counter-",
                                "labels": {NODE_LABEL: "node1"},
                                "annotations": {REQUESTED_BY: "token-user"}}
    assert sent["spec"] == {"podName": "counter", "container": "main", "deleteSource": True,
                            "targetNode": "node2", "newPodName": "moved"}
    (obj,) = cluster.objects_of("migrations")
    ident = obj["status"]["checkpointID"]
    assert result.stdout.splitlines() == [
        "migrated default/counter (container main) to pod moved on node node2",
        f"checkpoint {ident}: pause 480 ms (checkpoint 210 ms, transfer 12 ms direct, restore "
        "270 ms); deleted pod counter"]
    assert ("default", "counter") not in cluster.pods  # the helper deleted it
    assert not cluster.requests_matching("DELETE", r"/pods/counter$")  # not the plugin


def test_migrate_lazy_asks_for_post_copy_and_prints_the_memory_time(
        cluster: FakeCluster, helpers: FakeHelpers, kubeconfig: Path) -> None:
    cluster.add_helper("node2")
    cluster.add_pod(make_pod("counter"))
    result = run_cli(kubeconfig, "migrate", "counter", "--to-node", "node2", "--lazy")
    assert result.exit_code == 0, result.stderr
    (sent,) = cluster.created("migrations")
    assert sent["spec"]["lazy"] is True
    assert result.stdout.splitlines()[1].endswith(
        "restore 270 ms); post-copy: its memory followed in 2600 ms"), result.stdout
    # --no-lazy says so; neither leaves it to the helper (spec.lazy unset)
    assert run_cli(kubeconfig, "migrate", "counter", "--to-node", "node2", "--no-lazy",
                   "--name", "m2").exit_code == 0
    assert cluster.created("migrations")[1]["spec"]["lazy"] is False


def test_migrate_defaults_and_json(cluster: FakeCluster, helpers: FakeHelpers,
                                   kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    result = run_cli(kubeconfig, "migrate", "counter", "-o", "json")
    assert result.exit_code == 0, result.stderr
    assert cluster.created("migrations")[0]["spec"] == {"podName": "counter",
                                                         "container": "main",
                                                         "deleteSource": False}
    obj = json.loads(result.stdout)
    assert obj["kind"] == "Migration" and obj["status"]["pauseMs"] == 480
    assert obj["status"]["podName"] == "counter-migrated"
    assert ("default", "counter") in cluster.pods


def test_migrate_of_a_replicaset_pod_lets_the_helper_take_its_place(
        cluster: FakeCluster, helpers: FakeHelpers, kubeconfig: Path) -> None:
    pod = make_pod("counter-5d8f7-abcde")
    pod["metadata"]["ownerReferences"] = [{"kind": "ReplicaSet", "name": "counter-5d8f7",
                                           "controller": True}]
    cluster.add_pod(pod)
    result = run_cli(kubeconfig, "migrate", "counter-5d8f7-abcde", "--delete-source")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""  # no "a fresh replacement": the restored pod is the replica
    assert cluster.created("migrations")[0]["spec"]["deleteSource"] is True


def test_migrate_delete_source_of_a_statefulset_pod_is_refused_before_anything(
        cluster: FakeCluster, helpers: FakeHelpers, kubeconfig: Path) -> None:
    pod = make_pod("web-0")
    pod["metadata"]["ownerReferences"] = [{"kind": "StatefulSet", "name": "web",
                                           "controller": True}]
    cluster.add_pod(pod)
    result = run_cli(kubeconfig, "migrate", "web-0", "--delete-source")
    assert result.exit_code == 2, result.stderr
    assert "run by StatefulSet web, which would start it again" in result.stderr
    assert not cluster.created("migrations")
    assert run_cli(kubeconfig, "migrate", "web-0").exit_code == 0  # a copy is fine


def test_a_failed_migration_keeps_its_message(cluster: FakeCluster, helpers: FakeHelpers,
                                              kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    helpers.failures["migrations"] = ("restore_failed", "criu restore failed; checkpoint "
                                                        "c-1 is kept on node node1")
    result = run_cli(kubeconfig, "migrate", "counter")
    assert result.exit_code == 5
    assert result.stderr.endswith("failed on node node1: criu restore failed; checkpoint c-1 "
                                  "is kept on node node1 [restore_failed]\n")


# -- doctor POD (preflight) --------------------------------------------------------------------
def test_doctor_pod_asks_the_helper_and_removes_its_question(
        cluster: FakeCluster, helpers: FakeHelpers, kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    result = run_cli(kubeconfig, "doctor", "counter", "-o", "json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["kind"] == "PreflightReport" and report["checkpointable"] is True
    assert report["findings"] == helpers.preflight_findings
    (sent,) = [r.body for r in cluster.requests_matching("POST", r"/checkpoints$")
               if "dryRun" not in r.query]
    assert sent["spec"] == {"podName": "counter", "container": "main", "preflight": True}
    assert cluster.objects_of("checkpoints") == []  # the question is removed once answered
    assert [w for _, _, w in helpers.log if w == "preflight"] == ["preflight"]
    # one left behind (made with plain kubectl) is not a checkpoint to list
    cluster.add_pod(make_pod("other"))
    _checkpoint(kubeconfig, "other")
    cluster.put("checkpoints", {
        "apiVersion": "cedana.io/v1alpha1", "kind": "Checkpoint",
        "metadata": {"name": "question", "namespace": "default"},
        "spec": {"podName": "counter", "preflight": True},
        "status": {"phase": "Succeeded", "checkpointable": True}})
    listed = run_cli(kubeconfig, "checkpoints", "-o", "json")
    assert [o["spec"]["podName"] for o in json.loads(listed.stdout)["items"]] == ["other"]


def test_doctor_pod_names_what_stands_in_the_way(cluster: FakeCluster, helpers: FakeHelpers,
                                                kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    helpers.preflight_findings = [
        {"container": "main", "check": "io_uring", "ok": False, "message": "holds io_uring"},
        {"container": "main", "check": "gpu", "ok": True, "message": "no GPU"}]
    result = run_cli(kubeconfig, "doctor", "counter")
    assert result.exit_code == 1
    assert result.stderr == "error: pod counter cannot be checkpointed (main: io_uring)\n"
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["CONTAINER", "CHECK", "RESULT", "DETAIL"]
    assert lines[1].split()[:3] == ["main", "io_uring", "fail"]
    assert run_cli(kubeconfig, "doctor", "-c", "main").exit_code == 2  # -c needs a POD


def test_doctor_pod_never_becomes_a_checkpoint_on_an_older_crd(
        cluster: FakeCluster, helpers: FakeHelpers, kubeconfig: Path) -> None:
    """An older Checkpoint CRD drops spec.preflight: the helper would take a real checkpoint.
    The plugin asks the API server first (a server dry run) and creates nothing."""
    cluster.add_pod(make_pod("counter"))
    cluster.pruned_spec_fields.add("preflight")
    result = run_cli(kubeconfig, "doctor", "counter")
    assert result.exit_code != 0
    assert "run `kubectl cedana install`" in result.stderr
    assert cluster.objects_of("checkpoints") == [] and helpers.log == []


# -- checkpoints ls / inspect / rm / prune ----------------------------------------------------
def test_checkpoints_ls_table_wide_all_and_json(cluster: FakeCluster, helpers: FakeHelpers,
                                                kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    cluster.add_pod(make_pod("other", "elsewhere"))
    mine = _checkpoint(kubeconfig)
    run_cli(kubeconfig, "-n", "elsewhere", "checkpoint", "other")
    table = run_cli(kubeconfig, "checkpoints").stdout.splitlines()
    assert table[0].split() == ["NAME", "POD", "CONTAINER", "NODE", "PHASE", "SIZE", "ID",
                                "AGE"]
    assert len(table) == 2
    assert table[1].split()[:7] == [mine["metadata"]["name"], "counter", "main", "node1",
                                    "Succeeded", "120.6KiB", mine["status"]["checkpointID"]]
    wide = run_cli(kubeconfig, "checkpoints", "ls", "-o", "wide").stdout.splitlines()
    assert wide[0].split()[8:] == ["STORAGE", "COMPRESSION", "REQUESTED-BY", "REASON"]
    assert wide[1].split()[8:11] == ["local", "none", "token-user"]
    every = run_cli(kubeconfig, "checkpoints", "ls", "-A").stdout.splitlines()
    assert every[0].split()[0] == "NAMESPACE" and len(every) == 3
    doc = json.loads(run_cli(kubeconfig, "checkpoints", "ls", "-A", "-o", "json").stdout)
    assert (doc["apiVersion"], doc["kind"]) == ("cedana.io/v1alpha1", "CheckpointList")
    assert {i["kind"] for i in doc["items"]} == {"Checkpoint"} and len(doc["items"]) == 2


def test_checkpoints_ls_empty(cluster: FakeCluster, kubeconfig: Path) -> None:
    result = run_cli(kubeconfig, "checkpoints", "ls", "-n", "empty")
    assert result.exit_code == 0
    assert (result.stdout, result.stderr) == ("", "No checkpoints found in namespace empty.\n")


def test_checkpoints_inspect_by_name_and_by_id(cluster: FakeCluster, helpers: FakeHelpers,
                                               kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    made = _checkpoint(kubeconfig)
    by_name = yaml.safe_load(run_cli(kubeconfig, "checkpoints", "inspect",
                                     made["metadata"]["name"]).stdout)
    assert by_name["status"]["checkpointID"] == made["status"]["checkpointID"]
    by_id = run_cli(kubeconfig, "checkpoints", "inspect", made["status"]["checkpointID"],
                    "-o", "json")
    assert json.loads(by_id.stdout)["metadata"]["name"] == made["metadata"]["name"]
    missing = run_cli(kubeconfig, "checkpoints", "inspect", ID)
    assert missing.exit_code == 3
    assert missing.stderr == (f'error: no checkpoint with id {ID} in namespace "default" (see: '
                              "kubectl cedana checkpoints ls -A)\n")
    assert run_cli(kubeconfig, "checkpoints", "inspect", "nope").exit_code == 3


def test_checkpoints_rm_deletes_the_object_and_the_helper_the_data(
        cluster: FakeCluster, helpers: FakeHelpers, kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    first, second = _checkpoint(kubeconfig), _checkpoint(kubeconfig)
    waited = run_cli(kubeconfig, "checkpoints", "rm", first["metadata"]["name"], "--wait")
    assert waited.exit_code == 0, waited.stderr
    assert waited.stdout == (f'checkpoint "{first["metadata"]["name"]}" '
                             f'({first["status"]["checkpointID"]}) deleted\n')
    assert helpers.deleted_data == [first["status"]["checkpointID"]]
    ident = second["status"]["checkpointID"]
    at_once = run_cli(kubeconfig, "checkpoints", "rm", ident)
    assert at_once.exit_code == 0, at_once.stderr
    assert at_once.stdout == (f'checkpoint "{second["metadata"]["name"]}" ({ident}) marked '
                              "for deletion (the helper on node node1 deletes its data, then "
                              "the object goes)\n")
    deletes = cluster.requests_matching("DELETE", r"/checkpoints/")
    assert [r.path.rsplit("/", 1)[1] for r in deletes] == [first["metadata"]["name"],
                                                           second["metadata"]["name"]]
    assert helpers.log[-1][2] == "finalized" or helpers.deleted_data[-1] == ident
    again = run_cli(kubeconfig, "checkpoints", "rm", first["metadata"]["name"])
    assert again.exit_code == 3


def test_checkpoints_rm_dry_run_and_json(cluster: FakeCluster, helpers: FakeHelpers,
                                         kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    name = _checkpoint(kubeconfig)["metadata"]["name"]
    dry = run_cli(kubeconfig, "checkpoints", "rm", name, "--dry-run", "-o", "json")
    doc = json.loads(dry.stdout)
    assert doc["kind"] == "CheckpointDeletion" and doc["dry_run"] is True
    assert [i["name"] for i in doc["items"]] == [name] and doc["items"][0]["deleted"] is False
    assert len(cluster.objects_of("checkpoints")) == 1 and helpers.deleted_data == []


def test_checkpoints_rm_wait_says_when_the_helper_does_not_delete(
        cluster: FakeCluster, helpers: FakeHelpers, kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("counter"))
    name = _checkpoint(kubeconfig)["metadata"]["name"]
    helpers.keep_finalizers = True
    result = run_cli(kubeconfig, "checkpoints", "rm", name, "--wait", "--timeout", "1s")
    assert result.exit_code == 124
    assert result.stderr == (
        "error: still there after 1s, held by finalizer cedana.io/checkpoint-data: "
        f"default/{name} (the helper of node node1 deletes the data first; is it running? "
        "kubectl -n cedana-system get pods -o wide)\n")


def _prune_fixture(cluster: FakeCluster) -> None:
    for name, pod, container, size, day, phase in [
            ("a1", "a", "main", 100, "01", "Succeeded"), ("a2", "a", "main", 100, "02",
                                                           "Succeeded"),
            ("a3", "a", "main", 100, "03", "Succeeded"), ("a4", "a", "main", 100, "04",
                                                           "Running"),
            ("a0", "a", "main", 100, "00", "Failed"), ("b1", "b", "main", 500, "01",
                                                        "Succeeded"),
            ("b2", "b", "main", 500, "02", "Succeeded"), ("s1", "a", "side", 100, "01",
                                                           "Succeeded")]:
        cluster.put("checkpoints", _stored("default", name, pod=pod, container=container,
                                           size=size, phase=phase, ident=f"id-{name}",
                                           completed=f"2024-05-{day}T10:00:00Z"))
    cluster.put("checkpoints", _stored("other", "o1", completed="2024-01-01T00:00:00Z"))


def test_prune_keeps_the_newest_of_each_container(cluster: FakeCluster, helpers: FakeHelpers,
                                                  kubeconfig: Path) -> None:
    _prune_fixture(cluster)
    dry = run_cli(kubeconfig, "checkpoints", "prune", "--keep", "1", "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        'checkpoint "a1" (id-a1, a/main, 100B) would be deleted',
        'checkpoint "b1" (id-b1, b/main, 500B) would be deleted',
        'checkpoint "a2" (id-a2, a/main, 100B) would be deleted']
    assert not cluster.requests_matching("DELETE", r"/checkpoints/")
    done = run_cli(kubeconfig, "checkpoints", "prune", "--keep", "1", "-o", "json")
    doc = json.loads(done.stdout)
    assert doc["kind"] == "CheckpointPrune" and doc["dry_run"] is False
    deleted = sorted(r.path.rsplit("/", 1)[1] for r in
                     cluster.requests_matching("DELETE", r"/checkpoints/"))
    assert deleted == ["a1", "a2", "b1"]  # Running a4 and Failed a0 are never chosen


def test_prune_by_bytes_and_across_namespaces(cluster: FakeCluster, helpers: FakeHelpers,
                                              kubeconfig: Path) -> None:
    _prune_fixture(cluster)
    result = run_cli(kubeconfig, "checkpoints", "prune", "--max-bytes", "250", "-A",
                     "--dry-run", "-o", "json")
    chosen = [(i["namespace"], i["name"]) for i in json.loads(result.stdout)["items"]]
    # the newest first, within 250 bytes each: b's 500s go, and so does other's only one
    assert chosen == [("default", "a1"), ("default", "b1"), ("default", "b2"), ("other", "o1")]
    assert run_cli(kubeconfig, "checkpoints", "prune", "--keep", "0", "-A",
                   "--dry-run").stdout.count("would be deleted") == 7
    nothing = run_cli(kubeconfig, "checkpoints", "prune", "--keep", "5")
    assert nothing.stdout == "nothing to prune\n"


def test_prune_needs_a_limit(cluster: FakeCluster, kubeconfig: Path) -> None:
    result = run_cli(kubeconfig, "checkpoints", "prune")
    assert result.exit_code == 2
    assert result.stderr == "error: say what to keep: --keep N and/or --max-bytes BYTES\n"


# -- list, version, doctor --------------------------------------------------------------------
def test_list_reads_pods_only(cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("web", containers=("app", "proxy")))
    cluster.add_pod(make_pod("counter", node="node2"))
    result = run_cli(kubeconfig, "list")
    assert result.exit_code == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    assert rows == [["POD", "CONTAINER", "NODE", "STATUS"],
                    ["counter", "main", "node2", "running"],
                    ["web", "app", "node1", "running"], ["web", "proxy", "node1", "running"]]
    assert [(r.method, r.path) for r in cluster.requests] == [
        ("GET", "/api/v1/namespaces/default/pods")]
    wide = run_cli(kubeconfig, "list", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["POD", "CONTAINER", "NODE", "STATUS", "REASON", "RESTARTS",
                               "CONTAINER-ID", "IMAGE"]


def test_list_all_namespaces_and_json(cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("a", "one"))
    cluster.add_pod(make_pod("b", "two"))
    doc = yaml.safe_load(run_cli(kubeconfig, "list", "-A", "-o", "yaml").stdout)
    assert doc["kind"] == "ContainerList"
    pairs = {(i["namespace"], i["pod"]) for i in doc["items"]}
    assert {("one", "a"), ("two", "b"), (HELPER_NS, "cedana-helper-node1")} == pairs
    item = next(i for i in doc["items"] if i["pod"] == "a")
    assert set(item) >= {"namespace", "pod", "container", "node", "status", "container_id",
                         "runtime", "image"}
    table = run_cli(kubeconfig, "list", "-A").stdout.splitlines()
    assert table[0].split()[0] == "NAMESPACE"


def test_list_empty_namespace(cluster: FakeCluster, kubeconfig: Path) -> None:
    result = run_cli(kubeconfig, "list", "-n", "empty")
    assert (result.exit_code, result.stdout) == (0, "")
    assert result.stderr == "No containers found in namespace empty.\n"


def test_version_shows_each_nodes_helper_image(cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.add_helper("node2", ready=False)
    result = run_cli(kubeconfig, "version")
    assert result.exit_code == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    assert result.stdout.splitlines()[0] == "Client Version: kubectl-cedana 0.1.0"
    assert lines[1:] == [["NODE", "HELPER", "READY"], ["node1", "0.1.0", "yes"],
                         ["node2", "0.1.0", "no"]]
    doc = json.loads(run_cli(kubeconfig, "version", "-o", "json").stdout)
    assert doc["nodes"][0] == {"node": "node1", "pod": "cedana-helper-node1", "ready": True,
                               "image": "docker.io/cedana/helper:0.1.0", "helper": "0.1.0",
                               "image_id": doc["nodes"][0]["image_id"]}


def test_version_without_helpers_or_the_right_to_see_them(cluster: FakeCluster,
                                                          kubeconfig: Path) -> None:
    del cluster.pods[(HELPER_NS, "cedana-helper-node1")]
    missing = run_cli(kubeconfig, "version")
    assert missing.exit_code == 3
    assert missing.stdout == "Client Version: kubectl-cedana 0.1.0\n"
    assert "kubectl cedana install" in missing.stderr
    cluster.forbidden.append(("GET", rf"/namespaces/{HELPER_NS}/pods$"))
    denied = run_cli(kubeconfig, "version")
    assert denied.exit_code == 1 and denied.stdout == "Client Version: kubectl-cedana 0.1.0\n"
    assert 'you need "list pods in namespace cedana-system"' in denied.stderr


def _installed(cluster: FakeCluster, kubeconfig: Path) -> None:
    assert run_cli(kubeconfig, "install").exit_code == 0


def test_doctor_all_well(cluster: FakeCluster, kubeconfig: Path) -> None:
    _installed(cluster, kubeconfig)
    result = run_cli(kubeconfig, "doctor", "-o", "json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] is True
    rows = {(c["check"], c["scope"]): c for c in doc["checks"]}
    for plural in ("checkpoints", "restores", "migrations"):
        assert rows[("crd", f"crd/{plural}.cedana.io")]["detail"] == "established"
    assert rows[("admission", "validatingadmissionpolicy/cedana.io")]["result"] == "ok"
    assert rows[("admission", "validatingadmissionpolicybinding/cedana.io")]["result"] == "ok"
    assert rows[("daemonset", "cedana-system/cedana-helper")]["detail"].startswith(
        "ready on 1/1 nodes")
    assert rows[("helper", "node1")]["result"] == "ok"
    for verb, what in (("create", "checkpoints"), ("create", "restores"),
                       ("create", "migrations"), ("create", "pods")):
        group = "" if what == "pods" else ".cedana.io"
        assert rows[("rbac", f"{verb} {what}{group} in namespace default")]["result"] == "ok"


def test_doctor_names_each_problem_with_its_fix(cluster: FakeCluster, kubeconfig: Path) -> None:
    _installed(cluster, kubeconfig)
    cluster.denied_reviews.add(("create", "checkpoints", "", "default"))
    del cluster.objects["/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/"
                        "cedana.io"]
    cluster.nodes.append("node2")
    result = run_cli(kubeconfig, "doctor")
    assert result.exit_code == 1
    assert result.stderr == "error: 3 check(s) failed\n"
    lines = {tuple(line.split()[:3]): line for line in result.stdout.splitlines()[1:]}
    denied = lines[("rbac", "create", "checkpoints.cedana.io")]
    assert "fail" in denied and "kubectl -n default create rolebinding cedana " \
        "--clusterrole=cedana-checkpointer --user=token-user" in denied
    assert "run `kubectl cedana install`" in lines[("admission",
                                                    "validatingadmissionpolicy/cedana.io",
                                                    "fail")]
    assert "no helper pod" in lines[("helper", "node2", "fail")]


def test_doctor_for_a_user_who_may_not_read_cluster_objects(cluster: FakeCluster,
                                                            kubeconfig: Path) -> None:
    _installed(cluster, kubeconfig)
    cluster.forbidden += [("GET", r"/customresourcedefinitions/"),
                          ("GET", r"/validatingadmissionpolic"), ("GET", r"/daemonsets/"),
                          ("GET", r"^/api/v1/nodes$")]
    result = run_cli(kubeconfig, "doctor", "-o", "json")
    assert result.exit_code == 0, result.stdout
    rows = {(c["check"], c["scope"]): c for c in json.loads(result.stdout)["checks"]}
    assert rows[("crd", "crd/checkpoints.cedana.io")] == {
        "check": "crd", "scope": "crd/checkpoints.cedana.io", "result": "ok",
        "detail": "served (established)"}  # from discovery, which everyone may read
    assert rows[("daemonset", "cedana-system/cedana-helper")]["result"] == "warn"
    assert rows[("helper", "nodes")]["result"] == "warn"


def test_checkpoint_hold_connections_goes_into_the_spec_for_one_container(
        cluster: FakeCluster, helpers: FakeHelpers, kubeconfig: Path) -> None:
    cluster.add_pod(make_pod("web", containers=("app", "proxy")))
    result = run_cli(kubeconfig, "checkpoint", "web", "-c", "app", "--hold-connections")
    assert result.exit_code == 0, result.stderr
    (sent,) = cluster.created("checkpoints")
    assert sent["spec"] == {"podName": "web", "container": "app", "leaveRunning": False,
                            "withRootfs": True, "holdConnections": True}
    # not with --leave-running, and not for a whole pod: nothing is created
    both = run_cli(kubeconfig, "checkpoint", "web", "-c", "app", "--hold-connections",
                   "--leave-running")
    assert both.exit_code == 2 and "drop --leave-running" in both.stderr
    whole = run_cli(kubeconfig, "checkpoint", "web", "--hold-connections")
    assert whole.exit_code == 2 and "name it with -c" in whole.stderr
    assert len(cluster.created("checkpoints")) == 1


def test_checkpoints_import_makes_a_checkpoint_of_the_archives_pod_on_its_node(
        cluster: FakeCluster, helpers: FakeHelpers, kubeconfig: Path) -> None:
    cluster.add_helper("node2")
    name = "checkpoint-web_default-app-2026-11-30T10:00:00Z.tar"
    result = run_cli(kubeconfig, "checkpoints", "import", f"/var/lib/kubelet/checkpoints/{name}",
                     "--node", "node2", "--storage", "local", "--no-wait")
    assert result.exit_code == 0, result.stderr
    (sent,) = cluster.created("checkpoints")
    assert sent["metadata"]["labels"] == {NODE_LABEL: "node2"}
    assert sent["spec"] == {"podName": "web", "kubeletArchive": name, "storage": "local"}
    # another namespace's archive, and names that are not the kubelet's, create nothing
    for bad in ("checkpoint-web_shop-app-2026-11-30T10:00:00Z.tar", "../../etc/shadow",
                "/tmp/" + name):
        refused = run_cli(kubeconfig, "checkpoints", "import", bad, "--node", "node2")
        assert refused.exit_code == 2, (bad, refused.stderr)
    assert len(cluster.created("checkpoints")) == 1


def test_doctor_takes_containerd_and_crio_nodes_and_warns_of_other_runtimes(
        cluster: FakeCluster, kubeconfig: Path) -> None:
    _installed(cluster, kubeconfig)
    cluster.node_runtimes["node1"] = "cri-o://1.34.0"
    doc = json.loads(run_cli(kubeconfig, "doctor", "-o", "json").stdout)
    assert not [c for c in doc["checks"] if c["check"] == "runtime"], doc["checks"]
    cluster.node_runtimes["node1"] = "docker://28.2.2"
    doc = json.loads(run_cli(kubeconfig, "doctor", "-o", "json").stdout)
    (row,) = [c for c in doc["checks"] if c["check"] == "runtime"]
    assert row["result"] == "warn" and "docker://28.2.2" in row["detail"], row
