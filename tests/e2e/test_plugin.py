"""kubectl cedana through the real kubectl, the helper DaemonSet and the API server's pod proxy.
The tests of this file run in order on one worker: install first, uninstall last."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from tests.e2e.lab import REPO, Lab, counter_pod

VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"


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
    assert [p["spec"]["nodeName"] for p in pods["items"]] == [lab.node_name]

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
