"""The Helm chart (deploy/chart/, issue 20 point 5) installed, upgraded and uninstalled by real
helm on the lab, from the chart directory and from an OCI chart pushed to the lab registry, as
Cedana itself is installed. The helpers it installs checkpoint and restore; an upgrade keeps the
signing key (a checkpoint taken before it is restored after it); uninstall keeps the cedana.io
API, as `kubectl cedana uninstall` does. (That the chart's objects are install's:
tests/unit/packaging_chart_test.py.)"""
from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.lab import (
    REPO,
    Lab,
    cedana,
    counter_pod,
    goes_on,
    helper_daemonset_lock,
    install_helpers,
    run,
)

RELEASE = "cedana"
CHART = REPO / "deploy" / "chart"
HELPERS = "cedana-system"


@pytest.fixture(scope="module", autouse=True)
def helm_owns_the_helpers(lab: Lab) -> Iterator[None]:
    """The plugin's install made way for helm's, and back afterwards for the other files."""
    with helper_daemonset_lock():
        removed = cedana(lab, "uninstall", timeout=300)
        assert removed.returncode == 0, removed.stderr
        yield
        _helm(lab, "uninstall", RELEASE, "--wait", check=False)
        install_helpers(lab)


@pytest.fixture
def registry_config(lab: Lab) -> Iterator[str]:
    with tempfile.TemporaryDirectory() as home:
        config = str(Path(home) / "registry.json")
        run(["helm", "registry", "login", lab.registry, "--registry-config", config,
             "--ca-file", lab.ca_cert, "-u", lab.registry_user, "--password-stdin"],
            input=lab.registry_password)
        yield config


def _helm(lab: Lab, *args: str, check: bool = True, timeout: float = 400
          ) -> subprocess.CompletedProcess[str]:
    return run(["helm", "--kubeconfig", lab.kubeconfig, *args], check=check, timeout=timeout)


def _daemonset(lab: Lab) -> dict[str, Any]:
    return dict(json.loads(lab.kubectl("-n", HELPERS, "get", "daemonset", "cedana-helper",
                                       "-o", "json").stdout))


def _helpers_ready(lab: Lab) -> None:
    """Every node's helper runs the release's spec and is ready (helm's --wait lets a
    DaemonSet's maxUnavailable, one, lag behind)."""
    lab.kubectl("-n", HELPERS, "rollout", "status", "daemonset/cedana-helper", "--timeout=240s",
                timeout=260)
    status = _daemonset(lab)["status"]
    nodes = len(lab.node_names())
    assert status["desiredNumberScheduled"] == nodes, status
    assert status["numberReady"] == status["updatedNumberScheduled"] == nodes, status


def _checkpoint_and_restore(lab: Lab, namespace: str, pod: str) -> str:
    lab.apply(counter_pod(pod), namespace)
    lab.wait_pod_running(namespace, pod)
    lab.wait_log(namespace, pod, r"count=3\b")
    taken = cedana(lab, "-n", namespace, "checkpoint", pod, "--storage", "local",
                   "--name", f"{pod}-ckpt")
    assert taken.returncode == 0, taken.stderr
    restored = cedana(lab, "-n", namespace, "restore", f"{pod}-ckpt", "--new-pod", f"{pod}-r1")
    assert restored.returncode == 0, restored.stderr
    goes_on(lab, namespace, f"{pod}-r1", 3)
    return f"{pod}-ckpt"


def test_helm_installs_upgrades_and_uninstalls_the_helpers(lab: Lab, namespace: str) -> None:
    # the API objects `kubectl cedana uninstall` kept are taken over by the release
    _helm(lab, "install", RELEASE, str(CHART), "--take-ownership", "--wait", "--timeout", "5m")
    _helpers_ready(lab)
    daemonset = _daemonset(lab)
    assert daemonset["metadata"]["annotations"]["meta.helm.sh/release-name"] == RELEASE
    crd = json.loads(lab.kubectl("get", "crd", "checkpoints.cedana.io", "-o", "json").stdout)
    assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == RELEASE
    # the helpers it installed do their work
    checkpoint = _checkpoint_and_restore(lab, namespace, "counter")

    _helm(lab, "upgrade", RELEASE, str(CHART), "--reuse-values", "--set", "maxOperations=3",
          "--wait", "--timeout", "5m")
    command = _daemonset(lab)["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[-2:] == ["--max-operations", "3"], command
    _helpers_ready(lab)
    pods = json.loads(lab.kubectl("-n", HELPERS, "get", "pods", "-o", "json").stdout)["items"]
    assert all(p["spec"]["containers"][0]["command"][-1] == "3" for p in pods) and pods
    # the upgrade kept the signing key: the checkpoint taken before it is trusted after it
    again = cedana(lab, "-n", namespace, "restore", checkpoint, "--new-pod", "counter-r2")
    assert again.returncode == 0, again.stderr
    goes_on(lab, namespace, "counter-r2", 3)
    history = yaml.safe_load(_helm(lab, "history", RELEASE, "-o", "yaml").stdout)
    assert [h["revision"] for h in history] == [1, 2]

    removed = cedana(lab, "-n", namespace, "checkpoints", "rm", checkpoint, "--wait")
    assert removed.returncode == 0, removed.stderr
    _helm(lab, "uninstall", RELEASE, "--wait")
    gone = lab.kubectl("-n", HELPERS, "get", "daemonset", "cedana-helper", check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr
    # as `kubectl cedana uninstall`: the cedana.io API stays
    for kept in ("crd/checkpoints.cedana.io", "crd/restores.cedana.io", "crd/migrations.cedana.io",
                 "validatingadmissionpolicy/cedana.io", "clusterrole/cedana-edit"):
        lab.kubectl("get", kept)


def test_helm_installs_the_chart_from_the_lab_registry_over_oci(
        lab: Lab, namespace: str, registry_config: str, tmp_path: Path) -> None:
    packaged = _helm(lab, "package", str(CHART), "-d", str(tmp_path)).stdout
    archive = packaged.strip().rsplit(" ", 1)[-1]
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
    assert Path(archive).name == f"kubectl-cedana-{version}.tgz"
    reference = f"oci://{lab.registry}/charts"
    pushed = _helm(lab, "push", archive, reference, "--registry-config", registry_config,
                   "--ca-file", lab.ca_cert)
    assert "Digest: sha256:" in pushed.stdout + pushed.stderr
    shown = yaml.safe_load(_helm(lab, "show", "chart", f"{reference}/kubectl-cedana", "--version",
                                 version, "--registry-config", registry_config,
                                 "--ca-file", lab.ca_cert).stdout)
    assert shown["name"] == "kubectl-cedana" and shown["version"] == version
    _helm(lab, "install", RELEASE, f"{reference}/kubectl-cedana", "--version", version,
          "--registry-config", registry_config, "--ca-file", lab.ca_cert, "--take-ownership",
          "--set", f"checkpointRepository={lab.registry}/cedana/helm",
          "--wait", "--timeout", "5m")
    _helpers_ready(lab)
    command = _daemonset(lab)["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[-2:] == ["--checkpoint-repository", f"{lab.registry}/cedana/helm"]
    _checkpoint_and_restore(lab, namespace, "oci")
    removed = cedana(lab, "-n", namespace, "checkpoints", "rm", "oci-ckpt", "--wait")
    assert removed.returncode == 0, removed.stderr
    _helm(lab, "uninstall", RELEASE, "--wait")
