"""kubectl cedana through the real kubectl, the API server (the cedana.io objects: CRDs, RBAC,
admission) and the helper DaemonSet that reconciles them.
The tests of this file run in order on one worker: install first, uninstall last, holding the
helper DaemonSet lock throughout (test_krew_install.py installs it too, from another worker)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from tests.e2e.lab import (
    LAB_DIR,
    REPO,
    Lab,
    counter_pod,
    create_namespace,
    delete_namespace,
    helper_daemonset_lock,
    pod_manifest,
    wait_final,
)

VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"


@pytest.fixture(scope="module", autouse=True)
def helper_daemonset_is_this_files() -> Iterator[None]:
    with helper_daemonset_lock():
        yield


def cedana(lab: Lab, *args: str, timeout: float = 240,
           kubeconfig: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**lab.env(), "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    if kubeconfig:
        env["KUBECONFIG"] = kubeconfig
    return subprocess.run(["kubectl", "cedana", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _counts(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"count=(\d+)", text)]


def objects(lab: Lab, namespace: str, plural: str) -> list[dict[str, Any]]:
    out = lab.kubectl("-n", namespace, "get", f"{plural}.cedana.io", "-o", "json").stdout
    return list(json.loads(out)["items"])


def _registry_has(lab: Lab, reference: str) -> bool:
    repository, tag = reference.split("/", 1)[1].rsplit(":", 1)
    answer = requests.get(f"https://{lab.registry}/v2/{repository}/manifests/{tag}",
                          auth=(lab.registry_user, lab.registry_password),
                          verify=lab.ca_cert, timeout=60,
                          headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    return answer.status_code == 200


def test_kubectl_finds_the_plugin(lab: Lab) -> None:
    env = {**lab.env(), "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    listed = subprocess.run(["kubectl", "plugin", "list"], capture_output=True, text=True,
                            env=env, timeout=60)
    assert str(VENV_BIN / "kubectl-cedana") in listed.stdout
    helptext = cedana(lab, "--help")
    assert helptext.returncode == 0 and "kubectl cedana" in helptext.stdout


def test_install_checkpoint_restore_migrate(lab: Lab, namespace: str) -> None:
    installed = cedana(lab, "install")
    assert installed.returncode == 0, installed.stderr
    for plural in ("checkpoints", "restores", "migrations"):
        crd = json.loads(lab.kubectl("get", "crd", f"{plural}.cedana.io", "-o", "json").stdout)
        assert {"type": "Established", "status": "True"}.items() <= next(
            c for c in crd["status"]["conditions"] if c["type"] == "Established").items()
    lab.kubectl("get", "validatingadmissionpolicy,validatingadmissionpolicybinding", "cedana.io")
    pods = json.loads(lab.kubectl("-n", "cedana-system", "get", "pods", "-l",
                                  "app.kubernetes.io/name=cedana-helper", "-o", "json").stdout)
    assert sorted(p["spec"]["nodeName"] for p in pods["items"]) == lab.node_names()
    doctor = cedana(lab, "-n", namespace, "doctor", "-o", "json")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr

    lab.apply(counter_pod("counter", interval_ms=200), namespace)
    lab.wait_pod_running(namespace, "counter")
    lab.wait_log(namespace, "counter", r"count=\d\d")

    listed = cedana(lab, "-n", namespace, "list", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert [i["pod"] for i in json.loads(listed.stdout)["items"]] == ["counter"]

    before = max(_counts(lab.logs(namespace, "counter")))
    ckpt = cedana(lab, "-n", namespace, "checkpoint", "counter", "--leave-running")
    assert ckpt.returncode == 0, ckpt.stderr
    assert ckpt.stderr == ""  # piped: no progress line
    checkpoint_id = ckpt.stdout.strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", checkpoint_id)
    (obj,) = objects(lab, namespace, "checkpoints")
    assert obj["status"]["phase"] == "Succeeded" and obj["status"]["checkpointID"] == checkpoint_id
    assert obj["metadata"]["labels"]["cedana.io/node"] == lab.node_name
    assert obj["metadata"]["labels"]["cedana.io/checkpoint-id"] == checkpoint_id
    assert obj["metadata"]["finalizers"] == ["cedana.io/checkpoint-data"]
    user = obj["metadata"]["annotations"]["cedana.io/requested-by"]
    assert user and obj["status"]["requestedBy"] == user
    assert obj["spec"] == {"podName": "counter", "container": "main", "leaveRunning": True,
                           "withRootfs": True}

    restored = cedana(lab, "-n", namespace, "restore", checkpoint_id, "--new-pod", "restored")
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout.startswith(f"restored checkpoint {checkpoint_id} into pod "
                                      f"{namespace}/restored (container main, node "
                                      f"{lab.node_name}, pid ")
    lab.wait_log(namespace, "restored", r"count=\d+")
    first = _counts(lab.logs(namespace, "restored"))[0]
    assert first >= before
    lab.wait_log(namespace, "restored", rf"count={first + 3}\b")
    meta = lab.pod(namespace, "restored")["metadata"]
    assert checkpoint_id in json.dumps(meta.get("annotations", {})) + json.dumps(meta.get("labels", {}))

    before_migrate = max(_counts(lab.logs(namespace, "counter")))
    migrated = cedana(lab, "-n", namespace, "migrate", "counter", "-o", "json")
    assert migrated.returncode == 0, migrated.stderr
    result = json.loads(migrated.stdout)
    assert result["kind"] == "Migration" and result["spec"]["podName"] == "counter"
    assert result["status"]["phase"] == "Succeeded" and result["status"]["pauseMs"] > 0
    new_pod = result["status"]["podName"]
    assert new_pod == "counter-migrated"
    lab.wait_log(namespace, new_pod, r"count=\d+")
    assert _counts(lab.logs(namespace, new_pod))[0] >= before_migrate
    # on the same node the source's helper restores itself: no Restore object in between
    assert "restoreName" not in result["status"]
    assert result["status"]["targetNode"] == result["status"]["node"] == lab.node_name


def test_checkpoint_with_kubectl_alone(lab: Lab, namespace: str) -> None:
    """The objects need no plugin: kubectl create, kubectl get -w, kubectl delete."""
    lab.apply(counter_pod("counter", interval_ms=200), namespace)
    lab.wait_pod_running(namespace, "counter")
    manifest = {"apiVersion": "cedana.io/v1alpha1", "kind": "Checkpoint",
                "metadata": {"name": "by-hand"}, "spec": {"podName": "counter"}}
    lab.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(manifest))
    watched = subprocess.Popen(["kubectl", "--kubeconfig", lab.kubeconfig, "get",
                                "checkpoints", "-A", "-w", "--no-headers"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        obj = wait_final(lab, namespace, "checkpoints", "by-hand")
    finally:
        watched.terminate()
    out, _err = watched.communicate(timeout=30)
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    assert obj["spec"]["leaveRunning"] is True  # the CRD's default
    assert "Succeeded" in out and "by-hand" in out
    # the short name and the printer columns read well; kubectl explain knows the schema
    table = lab.kubectl("-n", namespace, "get", "ckpt").stdout
    assert table.split()[:4] == ["NAME", "POD", "CONTAINER", "NODE"], table
    assert "by-hand" in table and "Succeeded" in table
    explained = lab.kubectl("explain", "checkpoints.spec.podName").stdout
    assert "podName" in explained and "pod" in explained.lower()
    # the plugin sees and deletes it; its helper deletes the data first
    shown = cedana(lab, "-n", namespace, "checkpoints", "inspect", "by-hand", "-o", "json")
    assert json.loads(shown.stdout)["status"]["checkpointID"] == obj["status"]["checkpointID"]
    lab.kubectl("-n", namespace, "delete", "checkpoint", "by-hand", "--timeout=120s",
                timeout=150)
    assert objects(lab, namespace, "checkpoints") == []
    bad = {"apiVersion": "cedana.io/v1alpha1", "kind": "Checkpoint",
           "metadata": {"name": "bad"}, "spec": {"container": "main", "storage": "tape"}}
    refused = lab.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(bad),
                          check=False)
    assert refused.returncode != 0
    assert "spec.podName" in refused.stderr and "spec.storage" in refused.stderr


def test_migrate_carries_files_with_memory(lab: Lab, namespace: str) -> None:
    """A file the program appends to and its counter move together (the checkpoint's rootfs
    diff, the helper's default)."""
    missing = cedana(lab, "-n", namespace, "checkpoint", "appender", "--context",
                     "no-such-context")
    assert missing.returncode != 0 and "no-such-context" in missing.stderr

    lab.apply(pod_manifest("appender", ["/bin/sh", "-c",
                                        "i=0; while true; do i=$((i+1)); echo $i >> /data/log; "
                                        "echo count=$i; usleep 20000; done"]), namespace)
    lab.wait_pod_running(namespace, "appender")
    lab.wait_log(namespace, "appender", r"count=\d\d\b")
    migrated = cedana(lab, "-n", namespace, "migrate", "appender", "--delete-source", "-o", "json")
    assert migrated.returncode == 0, migrated.stderr
    result = json.loads(migrated.stdout)
    assert result["spec"]["deleteSource"] is True
    new_pod = result["status"]["podName"]
    first = int(lab.wait_log(namespace, new_pod, r"count=(\d+)").group(1))
    lab.wait_log(namespace, new_pod, rf"count={first + 10}\b")
    numbers = [int(n) for n in lab.kubectl("-n", namespace, "exec", new_pod, "--", "cat",
                                           "/data/log").stdout.split()]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= first + 10


def test_remote_checkpoints_and_migration_to_the_second_node(lab: Lab, namespace: str) -> None:
    """With a checkpoint registry: migrate to node 2, restore a remote checkpoint there with
    --new-pod --node, list, inspect, prune and rm (the data goes from the node and the
    registry with the object)."""
    repo = f"{lab.registry}/cedana/plugin-{namespace}"
    installed = cedana(lab, "install", "--checkpoint-repository", repo)
    assert installed.returncode == 0, installed.stderr
    node2 = lab.node2_name
    lab.apply(counter_pod("walker", interval_ms=200), namespace)
    lab.wait_pod_running(namespace, "walker")
    lab.wait_log(namespace, "walker", r"count=\d\d")
    before = max(_counts(lab.logs(namespace, "walker")))
    migrated = cedana(lab, "-n", namespace, "migrate", "walker", "--to-node", node2,
                      "--delete-source", "-o", "json")
    assert migrated.returncode == 0, migrated.stderr
    status = json.loads(migrated.stdout)["status"]
    assert status["targetNode"] == node2 and status["node"] == lab.node_name
    # straight to node 2's helper in the pause; the registry's copy written after it
    assert status["transfer"] == "direct", status
    assert status["imageRef"].startswith(repo + ":"), status
    assert status["storage"] == "remote" and _registry_has(lab, status["imageRef"])
    # to another node: a Restore object for that node's helper, owned by the Migration
    handed = lab.kubectl("-n", namespace, "get", "restores.cedana.io", status["restoreName"],
                         "-o", "json").stdout
    restore = json.loads(handed)
    assert restore["status"]["phase"] == "Succeeded" and restore["status"]["node"] == node2
    assert restore["metadata"]["ownerReferences"][0]["kind"] == "Migration"
    new_pod = status["podName"]
    assert lab.pod(namespace, new_pod)["spec"]["nodeName"] == node2
    first = int(lab.wait_log(namespace, new_pod, r"count=(\d+)").group(1))
    assert first >= before
    lab.wait_log(namespace, new_pod, rf"count={first + 3}\b")
    # --delete-source: the source pod is deleted (it may take a moment to go)
    for _ in range(120):
        gone = lab.kubectl("-n", namespace, "get", "pod", "walker", "-o", "json", check=False)
        if gone.returncode != 0 or json.loads(gone.stdout)["metadata"].get("deletionTimestamp"):
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the source pod walker was not deleted")
    described = lab.kubectl("-n", namespace, "describe", "pod", new_pod).stdout
    assert "Restored" in described and status["checkpointID"] in described

    lab.apply(counter_pod("second", interval_ms=200), namespace)
    lab.wait_pod_running(namespace, "second")
    lab.wait_log(namespace, "second", r"count=\d\b")
    ckpt = cedana(lab, "-n", namespace, "checkpoint", "second", "--leave-running",
                  "--storage", "remote", "-o", "json")
    assert ckpt.returncode == 0, ckpt.stderr
    made = json.loads(ckpt.stdout)
    ident, name = made["status"]["checkpointID"], made["metadata"]["name"]
    assert made["status"]["storage"] == "remote" and made["status"]["compression"] == "zstd"
    reference = made["status"]["imageRef"]
    assert _registry_has(lab, reference)
    restored = cedana(lab, "-n", namespace, "restore", ident, "--new-pod", "second-on-2",
                      "--node", node2)
    assert restored.returncode == 0, restored.stderr
    assert lab.pod(namespace, "second-on-2")["spec"]["nodeName"] == node2
    lab.wait_log(namespace, "second-on-2", r"count=\d+")

    listed = json.loads(cedana(lab, "-n", namespace, "checkpoints", "ls", "-o", "json").stdout)
    assert listed["kind"] == "CheckpointList"
    assert ident in [o["status"]["checkpointID"] for o in listed["items"]]
    table = cedana(lab, "-n", namespace, "checkpoints", "ls").stdout.splitlines()
    assert table[0].split() == ["NAME", "POD", "CONTAINER", "NODE", "PHASE", "SIZE", "ID", "AGE"]
    inspected = json.loads(cedana(lab, "-n", namespace, "checkpoints", "inspect", ident,
                                  "-o", "json").stdout)
    assert inspected["metadata"]["name"] == name

    newer = cedana(lab, "-n", namespace, "checkpoint", "second", "--leave-running",
                   "--storage", "local")
    assert newer.returncode == 0, newer.stderr
    dry = cedana(lab, "-n", namespace, "checkpoints", "prune", "--keep", "1", "--dry-run",
                 "-o", "json")
    assert dry.returncode == 0, dry.stderr
    doomed = {r["checkpoint_id"] for r in json.loads(dry.stdout)["items"]}
    assert ident in doomed and newer.stdout.strip() not in doomed
    removed = cedana(lab, "-n", namespace, "checkpoints", "rm", ident, "--wait")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout == f'checkpoint "{name}" ({ident}) deleted\n'
    # gone: the object, the registry image (and the files on node 1, which took it)
    assert ident not in [o.get("status", {}).get("checkpointID")
                         for o in objects(lab, namespace, "checkpoints")]
    assert not _registry_has(lab, reference)
    assert cedana(lab, "-n", namespace, "checkpoints", "rm", ident).returncode == 3


def test_error_paths(lab: Lab, namespace: str) -> None:
    missing = cedana(lab, "-n", namespace, "checkpoint", "no-such-pod")
    assert missing.returncode == 3, missing.stderr
    assert "no-such-pod" in missing.stderr and missing.stderr.count("\n") == 1
    assert "Traceback" not in missing.stderr

    two = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "two"},
           "spec": {"terminationGracePeriodSeconds": 1, "containers": [
               {"name": n, "image": lab.workload_image, "imagePullPolicy": "IfNotPresent",
                "command": ["/bin/sh", "-c", "while true; do sleep 3600; done"]}
               for n in ("alpha", "beta")]}}
    lab.apply(two, namespace)
    lab.wait_pod_running(namespace, "two")
    # no -c on a pod of two: the whole pod (no spec.container); a dry run creates nothing
    whole = cedana(lab, "-n", namespace, "checkpoint", "two", "--dry-run=server", "-o", "json")
    assert whole.returncode == 0, whole.stderr
    assert "container" not in json.loads(whole.stdout)["spec"]
    unknown = cedana(lab, "-n", namespace, "checkpoint", "two", "-c", "gamma")
    assert unknown.returncode == 3
    assert "alpha" in unknown.stderr and "beta" in unknown.stderr
    assert objects(lab, namespace, "checkpoints") == []

    relayed = cedana(lab, "-n", namespace, "restore", "00000000-0000-4000-8000-000000000000",
                     "--into", "two", "-c", "alpha")
    assert relayed.returncode == 3, relayed.stderr
    assert relayed.stderr.rstrip().endswith("[checkpoint_not_found]")
    (failed,) = objects(lab, namespace, "restores")
    assert failed["status"]["phase"] == "Failed"
    assert failed["status"]["errorCode"] == "checkpoint_not_found"


def test_ctrl_c_leaves_the_restore_to_its_helper(lab: Lab, namespace: str) -> None:
    lab.apply(counter_pod("counter", interval_ms=200), namespace)
    lab.wait_pod_running(namespace, "counter")
    ckpt = cedana(lab, "-n", namespace, "checkpoint", "counter", "--leave-running")
    assert ckpt.returncode == 0, ckpt.stderr
    checkpoint_id = ckpt.stdout.strip()
    env = {**lab.env(), "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    proc = subprocess.Popen(["kubectl", "cedana", "-n", namespace, "restore", checkpoint_id,
                             "--new-pod", "interrupted"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            # as a terminal's Ctrl-C finds it (a CI shell's background job
                            # inherits SIGINT ignored)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    end = time.monotonic() + 60
    while not objects(lab, namespace, "restores"):
        assert time.monotonic() < end and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    (obj,) = objects(lab, namespace, "restores")
    name = obj["metadata"]["name"]
    assert err == (f"error: interrupted; restore {namespace}/{name} goes on (follow it: "
                   f"kubectl -n {namespace} get restores.cedana.io {name} -w)\n")
    assert wait_final(lab, namespace, "restores", name)["status"]["phase"] == "Succeeded"
    lab.wait_log(namespace, "interrupted", r"count=\d+")


def _service_account_kubeconfig(lab: Lab, namespace: str, name: str, path: Path) -> Path:
    """A kubeconfig for a new ServiceAccount, with a token from the TokenRequest API (no token
    Secrets are made for service accounts since Kubernetes 1.24)."""
    lab.kubectl("-n", namespace, "create", "serviceaccount", name)
    token = lab.kubectl("-n", namespace, "create", "token", name, "--duration=1h").stdout.strip()
    assert token.count(".") == 2, f"no token for the service account {name}: {token!r}"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "lab", "cluster": {"server": "https://127.0.0.1:6443",
                                                 "certificate-authority": lab.ca_cert}}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": name,
                                                 "namespace": namespace}}],
        "current-context": "lab"}))
    return path


def test_user_without_the_role_gets_403_and_nothing_happens(lab: Lab, namespace: str,
                                                           tmp_path: Path) -> None:
    """A ServiceAccount that may read pods but has no cedana.io role: the API server refuses
    the Checkpoint, the plugin names the permission, no object and nothing on any node."""
    lab.apply(counter_pod("counter"), namespace)
    lab.wait_pod_running(namespace, "counter")
    kubeconfig = _service_account_kubeconfig(lab, namespace, "limited",
                                             tmp_path / "limited.kubeconfig")
    lab.kubectl("-n", namespace, "create", "role", "read-pods", "--verb=get,list,watch",
                "--resource=pods")
    lab.kubectl("-n", namespace, "create", "rolebinding", "read-pods", "--role=read-pods",
                f"--serviceaccount={namespace}:limited")
    denied = cedana(lab, "checkpoint", "counter", kubeconfig=str(kubeconfig))
    assert denied.returncode == 1, denied.stderr
    assert f'you need "create checkpoints.cedana.io in namespace {namespace}"' in denied.stderr
    assert f'User "system:serviceaccount:{namespace}:limited" cannot create resource ' \
           '"checkpoints" in API group "cedana.io"' in denied.stderr
    assert denied.stderr.count("\n") == 1 and "Traceback" not in denied.stderr
    assert objects(lab, namespace, "checkpoints") == []
    pod = lab.wait_pod_running(namespace, "counter")
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0


def test_rbac_and_admission_on_the_resources(lab: Lab, namespace: str, tmp_path: Path) -> None:
    """cedana-checkpointer bound in a namespace is enough; edit has the resources through
    aggregation and view sees them; the creator is recorded unforgeably (and in the audit
    log); a restore of another namespace's checkpoint needs get on its checkpoints there."""
    lab.apply(counter_pod("counter", interval_ms=200), namespace)
    lab.wait_pod_running(namespace, "counter")
    bound = _service_account_kubeconfig(lab, namespace, "bound", tmp_path / "bound.kc")
    lab.kubectl("-n", namespace, "create", "rolebinding", "bound-cedana",
                "--clusterrole=cedana-checkpointer", f"--serviceaccount={namespace}:bound")
    user = f"system:serviceaccount:{namespace}:bound"
    made = cedana(lab, "checkpoint", "counter", "--leave-running", "-o", "json",
                  kubeconfig=str(bound))
    assert made.returncode == 0, made.stderr
    obj = json.loads(made.stdout)
    assert obj["metadata"]["annotations"]["cedana.io/requested-by"] == user
    assert obj["status"]["requestedBy"] == user
    audit = (LAB_DIR / "logs" / "audit.log").read_text(errors="replace")
    # (a create by generateName may have no name in objectRef: match the namespace)
    assert any('"resource":"checkpoints"' in line and f'"namespace":"{namespace}"' in line
               and f'"username":"{user}"' in line and '"verb":"create"' in line
               for line in audit.splitlines())

    forged = {"apiVersion": "cedana.io/v1alpha1", "kind": "Checkpoint",
              "metadata": {"name": "forged", "namespace": namespace,
                           "annotations": {"cedana.io/requested-by": "someone-else"}},
              "spec": {"podName": "counter"}}
    refused = subprocess.run(["kubectl", "--kubeconfig", str(bound), "apply", "-f", "-"],
                             input=json.dumps(forged), capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode != 0
    assert "cedana.io/requested-by must be your own user name" in refused.stderr

    editor = _service_account_kubeconfig(lab, namespace, "editor", tmp_path / "editor.kc")
    lab.kubectl("-n", namespace, "create", "rolebinding", "editor-edit", "--clusterrole=edit",
                f"--serviceaccount={namespace}:editor")
    viewer = _service_account_kubeconfig(lab, namespace, "viewer", tmp_path / "viewer.kc")
    lab.kubectl("-n", namespace, "create", "rolebinding", "viewer-view", "--clusterrole=view",
                f"--serviceaccount={namespace}:viewer")
    end = time.monotonic() + 30  # the aggregation controller fills edit/view in
    while True:
        by_editor = cedana(lab, "checkpoint", "counter", "--leave-running",
                           kubeconfig=str(editor))
        if by_editor.returncode == 0 or time.monotonic() > end:
            break
        time.sleep(1)
    assert by_editor.returncode == 0, by_editor.stderr
    seen = cedana(lab, "checkpoints", "ls", "-o", "json", kubeconfig=str(viewer))
    assert seen.returncode == 0 and len(json.loads(seen.stdout)["items"]) == 2, seen.stderr
    not_viewers = cedana(lab, "checkpoint", "counter", kubeconfig=str(viewer))
    assert not_viewers.returncode == 1 and "create checkpoints.cedana.io" in not_viewers.stderr

    other = create_namespace(lab, "rbac-other")
    try:
        lab.apply(pod_manifest("sleeper", ["/bin/sh", "-c", "while true; do sleep 3600; done"]),
                  other)
        lab.wait_pod_running(other, "sleeper")
        lab.kubectl("-n", other, "create", "rolebinding", "bound-cedana",
                    "--clusterrole=cedana-checkpointer", f"--serviceaccount={namespace}:bound")
        # bound may restore in `other` and read checkpoints of `namespace`: admitted
        ident = obj["status"]["checkpointID"]
        across = cedana(lab, "-n", other, "restore", ident, "--checkpoint-namespace", namespace,
                        "--into", "sleeper", kubeconfig=str(bound))
        assert across.returncode == 0, across.stderr
        # a user of `other` alone may create Restores there, but not read `namespace`'s
        # checkpoints: admission refuses, with the stranger's own identity
        stranger = _service_account_kubeconfig(lab, other, "stranger", tmp_path / "s.kc")
        lab.kubectl("-n", other, "create", "rolebinding", "stranger-cedana",
                    "--clusterrole=cedana-checkpointer", f"--serviceaccount={other}:stranger")
        refused = cedana(lab, "-n", other, "restore", ident, "--checkpoint-namespace",
                         namespace, "--into", "sleeper", kubeconfig=str(stranger))
        assert refused.returncode == 1, refused.stderr
        assert refused.stderr.startswith("error: refused by admission: ")
        assert f"restoring a checkpoint of namespace {namespace} needs get on " \
               "checkpoints.cedana.io there" in refused.stderr
    finally:
        delete_namespace(lab, other)


def test_uninstall_keeps_the_api_then_purge_removes_it(lab: Lab, namespace: str) -> None:
    lab.apply(counter_pod("counter"), namespace)
    lab.wait_pod_running(namespace, "counter")
    ckpt = cedana(lab, "-n", namespace, "checkpoint", "counter", "--leave-running")
    assert ckpt.returncode == 0, ckpt.stderr

    removed = cedana(lab, "uninstall")
    assert removed.returncode == 0, removed.stderr
    assert "customresourcedefinition.apiextensions.k8s.io/checkpoints.cedana.io kept" \
        in removed.stdout
    left = lab.kubectl("get", "all,serviceaccounts,clusterroles,clusterrolebindings",
                       "-A", "-l", "app.kubernetes.io/part-of=kubectl-cedana", "-o", "name")
    assert sorted(left.stdout.split()) == [
        "clusterrole.rbac.authorization.k8s.io/cedana-checkpointer",
        "clusterrole.rbac.authorization.k8s.io/cedana-edit",
        "clusterrole.rbac.authorization.k8s.io/cedana-view"]
    assert len(objects(lab, namespace, "checkpoints")) == 1  # and its data on the node
    nohelper = cedana(lab, "-n", namespace, "checkpoint", "counter")
    assert nohelper.returncode == 3
    assert "kubectl cedana install" in nohelper.stderr
    assert len(objects(lab, namespace, "checkpoints")) == 1  # nothing was created

    assert cedana(lab, "install").returncode == 0  # helpers back: they delete the data
    purged = cedana(lab, "uninstall", "--purge", timeout=400)
    assert purged.returncode == 0, purged.stderr
    assert lab.kubectl("get", "crd", "checkpoints.cedana.io", check=False).returncode != 0
    left = lab.kubectl("get", "all,serviceaccounts,clusterroles,clusterrolebindings,"
                       "validatingadmissionpolicies,validatingadmissionpolicybindings",
                       "-A", "-l", "app.kubernetes.io/part-of=kubectl-cedana", "-o", "name")
    assert left.stdout.strip() == ""
    gone = cedana(lab, "-n", namespace, "checkpoint", "counter")
    assert gone.returncode == 3 and "kubectl cedana install" in gone.stderr
