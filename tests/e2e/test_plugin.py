"""kubectl cedana through the real kubectl, the helper DaemonSet and the API server's pod proxy.
The tests of this file run in order on one worker: install first, uninstall last, holding the
helper DaemonSet lock throughout (test_krew_install.py installs it too, from another worker)."""
from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.e2e.lab import REPO, Lab, counter_pod, pod_manifest, helper_daemonset_lock

VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"


@pytest.fixture(scope="module", autouse=True)
def helper_daemonset_is_this_files() -> Iterator[None]:
    with helper_daemonset_lock():
        yield


def cedana(lab: Lab, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**lab.env(), "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    return subprocess.run(["kubectl", "cedana", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _counts(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"count=(\d+)", text)]


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
    pods = json.loads(lab.kubectl("-n", "cedana-system", "get", "pods", "-l",
                                  "app.kubernetes.io/name=cedana-helper", "-o", "json").stdout)
    assert sorted(p["spec"]["nodeName"] for p in pods["items"]) == [lab.node_name,
                                                                    lab.node2_name]

    lab.apply(counter_pod("counter", interval_ms=200), namespace)
    lab.wait_pod_running(namespace, "counter")
    lab.wait_log(namespace, "counter", r"count=\d\d")

    listed = cedana(lab, "-n", namespace, "list", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert "counter" in listed.stdout

    before = max(_counts(lab.logs(namespace, "counter")))
    ckpt = cedana(lab, "-n", namespace, "checkpoint", "counter", "--leave-running")
    assert ckpt.returncode == 0, ckpt.stderr
    checkpoint_id = ckpt.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"[0-9a-f-]{36}", checkpoint_id)

    restored = cedana(lab, "-n", namespace, "restore", checkpoint_id, "--new-pod", "restored")
    assert restored.returncode == 0, restored.stderr
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
    assert result["kind"] == "Migration" and result["source"]["pod"] == "counter"
    assert result["pause_ms"] > 0
    new_pod = result["target"]["pod"]
    lab.wait_log(namespace, new_pod, r"count=\d+")
    assert _counts(lab.logs(namespace, new_pod))[0] >= before_migrate


def test_rootfs_checkpoint_restore_and_migrate_with_files(lab: Lab, namespace: str) -> None:
    """The in-cluster helper commits a pod's files with the node's credentials; another pod
    gets them by rootfs restore; migrate carries a file and a counter together."""
    lab.apply(pod_manifest("writer", ["/bin/sh", "-c",
                                      "printf 'plugin-bytes' > /data/new.txt; rm /data/doomed.txt;"
                                      " while true; do sleep 1; done"]), namespace)
    lab.wait_pod_running(namespace, "writer")
    image = f"{lab.registry}/rootfs/{namespace}:plugin"
    for _ in range(60):  # the shell writes its files right after the pod starts
        if lab.kubectl("-n", namespace, "exec", "writer", "--", "test", "-f", "/data/new.txt",
                       check=False).returncode == 0:
            break
        time.sleep(0.5)
    pushed = cedana(lab, "-n", namespace, "rootfs", "checkpoint", "writer", "--image", image)
    assert pushed.returncode == 0, pushed.stderr
    assert re.fullmatch(rf"{re.escape(image)}@sha256:[0-9a-f]{{64}}", pushed.stdout.strip())

    lab.apply(pod_manifest("receiver", ["/bin/sh", "-c", "while true; do sleep 1; done"]),
              namespace)
    lab.wait_pod_running(namespace, "receiver")
    applied = cedana(lab, "-n", namespace, "rootfs", "restore", "--into", "receiver", "--image",
                     image, "-o", "json")
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout)["deleted"] == ["/data/doomed.txt"]
    shown = lab.kubectl("-n", namespace, "exec", "receiver", "--", "/bin/sh", "-c",
                        "cat /data/new.txt; ls /data").stdout
    assert shown.startswith("plugin-bytes") and "doomed.txt" not in shown

    missing = cedana(lab, "-n", namespace, "rootfs", "checkpoint", "writer", "--image",
                     f"{lab.registry}/rootfs/{namespace}:x", "--context", "no-such-context")
    assert missing.returncode != 0 and "no-such-context" in missing.stderr

    lab.apply(pod_manifest("appender", ["/bin/sh", "-c",
                                        "i=0; while true; do i=$((i+1)); echo $i >> /data/log; "
                                        "echo count=$i; usleep 20000; done"]), namespace)
    lab.wait_pod_running(namespace, "appender")
    lab.wait_log(namespace, "appender", r"count=\d\d\b")
    migrated = cedana(lab, "-n", namespace, "migrate", "appender", "--delete-source", "-o", "json")
    assert migrated.returncode == 0, migrated.stderr
    result = json.loads(migrated.stdout)
    assert result["with_rootfs"] is True and result["source_deleted"] is True
    new_pod = result["target"]["pod"]
    first = int(lab.wait_log(namespace, new_pod, r"count=(\d+)").group(1))
    lab.wait_log(namespace, new_pod, rf"count={first + 10}\b")
    numbers = [int(n) for n in lab.kubectl("-n", namespace, "exec", new_pod, "--", "cat",
                                           "/data/log").stdout.split()]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= first + 10


def test_remote_checkpoints_and_migration_to_the_second_node(lab: Lab, namespace: str) -> None:
    """With a checkpoint registry: migrate to node 2, restore a remote checkpoint there with
    --new-pod --node, list local and remote checkpoints, inspect, prune and rm."""
    repo = f"{lab.registry}/cedana/plugin-{namespace}"
    installed = cedana(lab, "install", "--checkpoint-repository", repo)
    assert installed.returncode == 0, installed.stderr
    node2 = lab.node2_name
    lab.apply(counter_pod("walker", interval_ms=200), namespace)
    lab.wait_pod_running(namespace, "walker")
    lab.wait_log(namespace, "walker", r"count=\d\d")
    before = max(_counts(lab.logs(namespace, "walker")))
    migrated = cedana(lab, "-n", namespace, "migrate", "walker", "--to-node", node2,
                      "--delete-source", "--compression", "lz4", "-o", "json")
    assert migrated.returncode == 0, migrated.stderr
    result = json.loads(migrated.stdout)
    assert result["target"]["node"] == node2 and result["source"]["node"] == lab.node_name
    assert result["bytes_moved"] > 0 and result["compression"] == "lz4"
    assert result["remote"].startswith(repo + ":") and result["source_deleted"] is True
    new_pod = result["target"]["pod"]
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
    assert "Restored" in described and result["checkpoint_id"] in described

    lab.apply(counter_pod("second", interval_ms=200), namespace)
    lab.wait_pod_running(namespace, "second")
    lab.wait_log(namespace, "second", r"count=\d\b")
    ckpt = cedana(lab, "-n", namespace, "checkpoint", "second", "--leave-running",
                  "--storage", "remote")
    assert ckpt.returncode == 0, ckpt.stderr
    ident = ckpt.stdout.strip()
    restored = cedana(lab, "-n", namespace, "restore", ident, "--new-pod", "second-on-2",
                      "--node", node2)
    assert restored.returncode == 0, restored.stderr
    assert lab.pod(namespace, "second-on-2")["spec"]["nodeName"] == node2
    lab.wait_log(namespace, "second-on-2", r"count=\d+")

    listed = json.loads(cedana(lab, "-n", namespace, "checkpoints", "ls", "-o", "json").stdout)
    rows = {r["id"]: r for r in listed["items"]}
    assert {result["checkpoint_id"], ident} <= set(rows)
    assert rows[ident]["where"] == "local+remote" and rows[ident]["compression"] == "zstd"
    assert rows[result["checkpoint_id"]]["compression"] == "lz4"
    table = cedana(lab, "-n", namespace, "checkpoints", "ls").stdout.splitlines()
    assert table[0].split()[-1] == "WHERE"
    inspected = json.loads(cedana(lab, "-n", namespace, "checkpoints", "inspect", ident,
                                  "-o", "json").stdout)
    assert inspected["processes"][0]["name"] == "counter"
    assert inspected["criu_stats"]["dump"]["pages_written"] > 0

    newer = cedana(lab, "-n", namespace, "checkpoint", "second", "--leave-running",
                   "--storage", "local")
    assert newer.returncode == 0, newer.stderr
    dry = cedana(lab, "checkpoints", "prune", "--keep", "1", "--dry-run", "-o", "json")
    assert dry.returncode == 0, dry.stderr
    doomed = {r["id"] for r in json.loads(dry.stdout)["items"]}
    assert ident in doomed and newer.stdout.strip() not in doomed
    removed = cedana(lab, "-n", namespace, "checkpoints", "rm", ident)
    assert removed.returncode == 0, removed.stderr
    assert "registry image" in removed.stdout
    # gone from node 1 (which took it), node 2 (which pulled it) and the registry
    gone = json.loads(cedana(lab, "-n", namespace, "checkpoints", "ls", "-o", "json").stdout)
    assert ident not in {r["id"] for r in gone["items"]}
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
    ambiguous = cedana(lab, "-n", namespace, "checkpoint", "two")
    assert ambiguous.returncode != 0
    assert "alpha" in ambiguous.stderr and "beta" in ambiguous.stderr

    relayed = cedana(lab, "-n", namespace, "restore", "00000000-0000-4000-8000-000000000000",
                     "--into", "two", "-c", "alpha")
    assert relayed.returncode != 0
    assert "checkpoint_not_found" in relayed.stderr or "not found" in relayed.stderr


def test_ctrl_c_during_restore_leaves_no_placeholder(lab: Lab, namespace: str) -> None:
    lab.apply(counter_pod("counter", interval_ms=200), namespace)
    lab.wait_pod_running(namespace, "counter")
    ckpt = cedana(lab, "-n", namespace, "checkpoint", "counter", "--leave-running")
    assert ckpt.returncode == 0, ckpt.stderr
    checkpoint_id = ckpt.stdout.strip().splitlines()[-1]
    env = {**lab.env(), "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    proc = subprocess.Popen(["kubectl", "cedana", "-n", namespace, "restore", checkpoint_id,
                             "--new-pod", "interrupted"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 60
    while lab.kubectl("-n", namespace, "get", "pod", "interrupted", check=False).returncode:
        assert time.monotonic() < end and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    end = time.monotonic() + 60
    while lab.kubectl("-n", namespace, "get", "pod", "interrupted", check=False).returncode == 0:
        assert time.monotonic() < end, "placeholder left behind after Ctrl-C"
        time.sleep(0.5)


def _service_account_kubeconfig(lab: Lab, namespace: str, name: str, path: Path) -> Path:
    """A kubeconfig for a new ServiceAccount (its token from the legacy token Secret)."""
    lab.kubectl("-n", namespace, "create", "serviceaccount", name)
    token = ""
    end = time.monotonic() + 60
    while not token:
        assert time.monotonic() < end, f"no token for the service account {name}"
        secrets = json.loads(lab.kubectl("-n", namespace, "get", "secrets", "-o",
                                         "json").stdout)["items"]
        for secret in secrets:
            ann = secret["metadata"].get("annotations", {})
            if ann.get("kubernetes.io/service-account.name") == name:
                token = base64.b64decode(secret["data"]["token"]).decode()
        time.sleep(0.5)
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "lab", "cluster": {"server": "https://127.0.0.1:6443",
                                                 "certificate-authority": lab.ca_cert}}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": name,
                                                 "namespace": namespace}}],
        "current-context": "lab"}))
    return path


def test_user_without_pods_proxy_is_told_what_is_missing(lab: Lab, namespace: str,
                                                        tmp_path: Path) -> None:
    """A ServiceAccount that may read pods but not create pods/proxy gets a clear message."""
    lab.apply(counter_pod("counter"), namespace)
    lab.wait_pod_running(namespace, "counter")
    role = f"cedana-e2e-read-pods-{namespace}"
    kubeconfig = _service_account_kubeconfig(lab, namespace, "limited",
                                             tmp_path / "limited.kubeconfig")
    lab.kubectl("create", "clusterrole", role, "--verb=get,list,watch", "--resource=pods,nodes")
    lab.kubectl("create", "clusterrolebinding", role, f"--clusterrole={role}",
                f"--serviceaccount={namespace}:limited")
    try:
        env = {**os.environ, "KUBECONFIG": str(kubeconfig),
               "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
        denied = subprocess.run(["kubectl", "cedana", "checkpoint", "counter"],
                                capture_output=True, text=True, env=env, timeout=120)
        assert denied.returncode != 0
        assert "pods/proxy" in denied.stderr, denied.stderr
        assert "Traceback" not in denied.stderr
        # nothing happened to the pod
        pod = lab.wait_pod_running(namespace, "counter")
        assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    finally:
        lab.kubectl("delete", "clusterrolebinding,clusterrole", role, check=False)


def test_helper_port_wants_proof_and_permission(lab: Lab, namespace: str,
                                                tmp_path: Path) -> None:
    """Straight to a helper's port without a proof: 401, from a pod and from the node. With a
    proof but without the cedana-checkpointer permission: 403 and nothing happens; with the
    shipped ClusterRole bound in the namespace: the checkpoint is taken."""
    import requests

    lab.apply(counter_pod("counter"), namespace)
    lab.apply(pod_manifest("prober", ["/bin/sh", "-c", "while true; do sleep 3600; done"]),
              namespace)
    lab.wait_pod_running(namespace, "counter")
    lab.wait_pod_running(namespace, "prober")
    helpers = json.loads(lab.kubectl("-n", "cedana-system", "get", "pods", "-l",
                                     "app.kubernetes.io/name=cedana-helper", "-o",
                                     "json").stdout)["items"]
    helper_ip = next(p["status"]["podIP"] for p in helpers
                     if p["spec"]["nodeName"] == lab.node_name)
    body = {"checkpoint_data": {"container_name": "main", "sandbox_name": "counter",
                                "namespace": namespace, "checkpoint_path": ""},
            "leave_running": True}
    from_pod = lab.kubectl("-n", namespace, "exec", "prober", "--", "wget", "-q", "-O-",
                           "--header", "Content-Type: application/json", "--post-data",
                           json.dumps(body), f"http://{helper_ip}:1324/checkpoint", check=False)
    assert from_pod.returncode != 0 and "401" in from_pod.stderr, from_pod.stderr
    direct = requests.post(f"http://{helper_ip}:1324/checkpoint", json=body, timeout=30)
    assert direct.status_code == 401 and direct.json()["code"] == "unauthenticated"
    forged = requests.post(f"http://{helper_ip}:1324/checkpoint", json=body, timeout=30,
                           headers={"X-Cedana-Caller": "cedana-caller-nope",
                                    "X-Cedana-Proof": "guess"})
    assert forged.status_code == 401, forged.text

    kubeconfig = _service_account_kubeconfig(lab, namespace, "prober-sa",
                                             tmp_path / "sa.kubeconfig")
    subject = f"--serviceaccount={namespace}:prober-sa"
    read = f"cedana-e2e-read-pods-{namespace}"
    lab.kubectl("create", "clusterrole", read, "--verb=get,list", "--resource=pods,nodes")
    bindings = [("clusterrolebinding", read, f"--clusterrole={read}", ""),
                ("clusterrolebinding", f"{read}-caller", "--clusterrole=cedana-caller", ""),
                ("rolebinding", f"{read}-client", "--role=cedana-helper-client",
                 "cedana-system")]
    try:
        for kind, name, role, ns in bindings:
            lab.kubectl(*(["-n", ns] if ns else []), "create", kind, name, role, subject)
        env = {**os.environ, "KUBECONFIG": str(kubeconfig),
               "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
        denied = subprocess.run(["kubectl", "cedana", "checkpoint", "counter",
                                 "--leave-running"], capture_output=True, text=True, env=env,
                                timeout=120)
        assert denied.returncode != 0
        assert "forbidden" in denied.stderr and "checkpoints" in denied.stderr, denied.stderr
        assert "Traceback" not in denied.stderr
        listed = json.loads(cedana(lab, "-n", namespace, "checkpoints", "ls", "-o",
                                   "json").stdout)
        assert listed["items"] == []
        lab.kubectl("-n", namespace, "create", "rolebinding", "prober-checkpointer",
                    "--clusterrole=cedana-checkpointer", subject)
        end = time.monotonic() + 60  # the helper trusts a review answer for 10 s
        while True:
            allowed = subprocess.run(["kubectl", "cedana", "checkpoint", "counter",
                                      "--leave-running"], capture_output=True, text=True,
                                     env=env, timeout=120)
            if allowed.returncode == 0 or time.monotonic() > end:
                break
            assert "forbidden" in allowed.stderr, allowed.stderr
            time.sleep(3)
        assert allowed.returncode == 0, allowed.stderr
        assert re.fullmatch(r"[0-9a-f-]{36}", allowed.stdout.strip())
    finally:
        lab.kubectl("delete", "clusterrolebinding", read, f"{read}-caller", check=False)
        lab.kubectl("-n", "cedana-system", "delete", "rolebinding", f"{read}-client",
                    check=False)
        lab.kubectl("delete", "clusterrole", read, check=False)
    pod = lab.wait_pod_running(namespace, "counter")
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0


def test_uninstall_then_no_helper(lab: Lab, namespace: str) -> None:
    removed = cedana(lab, "uninstall")
    assert removed.returncode == 0, removed.stderr
    left = lab.kubectl("get", "all,serviceaccounts,clusterroles,clusterrolebindings",
                       "-A", "-l", "app.kubernetes.io/part-of=kubectl-cedana", "-o", "name")
    assert left.stdout.strip() == ""
    lab.apply(counter_pod("counter"), namespace)
    lab.wait_pod_running(namespace, "counter")
    nohelper = cedana(lab, "-n", namespace, "checkpoint", "counter")
    assert nohelper.returncode != 0
    assert "kubectl cedana install" in nohelper.stderr
