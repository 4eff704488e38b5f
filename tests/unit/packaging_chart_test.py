"""The Helm chart (deploy/chart/) and `kubectl cedana install` apply the same objects: the chart
is generated from deploy/ by hack/chart.py and must be what it writes now, and real helm's
`helm template` gives, for each set of values, the objects install renders for the same flags
(the only differences: `helm.sh/resource-policy: keep` on what uninstall keeps, and the
signing key Secret, which install makes through the API)."""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubectl_cedana import install
from kubectl_cedana.version import __version__

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "hack"))

import chart  # noqa: E402

CASES = [
    ([], [], "containerd"),
    (["--set", "runtime=k3s", "--set", "checkpointRepository=reg.example:5000/ckpt",
      "--set", "compression=lz4", "--set", "image=reg.example/helper:9"],
     ["--runtime", "k3s", "--checkpoint-repository", "reg.example:5000/ckpt",
      "--compression", "lz4", "--image", "reg.example/helper:9"], "k3s"),
    (["--set", "runtime=crio", "--set", "maxOperations=0", "--set", "maxTotalBytes=10737418240",
      "--set", "maxCheckpointsPerContainer=3", "--set", "maxOperationsPerNamespace=2",
      "--set", "maxCheckpointDirBytes=1000000",
      "--set-json", 'registryPrefixes=["a.example/x","b.example/{namespace}"]'],
     ["--runtime", "crio", "--max-operations", "0", "--max-total-bytes", "10737418240",
      "--max-checkpoints-per-container", "3", "--max-operations-per-namespace", "2",
      "--max-checkpoint-dir-bytes", "1000000", "--registry-prefix", "a.example/x",
      "--registry-prefix", "b.example/{namespace}"], "crio"),
]


def test_the_chart_is_what_hack_chart_writes_from_deploy() -> None:
    wanted = chart.chart_files()
    present = {str(p.relative_to(chart.CHART_DIR)): p.read_text(encoding="utf-8")
               for p in chart.CHART_DIR.rglob("*") if p.is_file()}
    assert present == wanted, "deploy/chart/ is stale: run python3 hack/chart.py"
    meta = yaml.safe_load(wanted["Chart.yaml"])
    assert meta["version"] == meta["appVersion"] == __version__


def _helm_objects(values: list[str]) -> list[dict[str, Any]]:
    helm = shutil.which("helm")
    assert helm, "helm is not installed: `make install` (hack/install-deps.sh) puts it on PATH"
    out = subprocess.run([helm, "template", "cedana", str(chart.CHART_DIR), *values],
                         check=True, capture_output=True, text=True).stdout
    return [o for o in yaml.safe_load_all(out) if o]


def _install_objects(cli_args: list[str]) -> list[dict[str, Any]]:
    out = subprocess.run([sys.executable, "-m", "kubectl_cedana", "install", "--dry-run=client",
                          "-o", "json", *cli_args], check=True, capture_output=True,
                         text=True, cwd=REPO).stdout
    return list(json.loads(out)["items"])


def _without_keep(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    annotations = dict(meta.get("annotations") or {})
    if annotations.pop("helm.sh/resource-policy", None) is not None:
        assert install.is_api_object(obj), f"{obj['kind']} {meta['name']} is kept by helm only"
        meta = {k: v for k, v in meta.items() if k != "annotations"}
        if annotations:
            meta["annotations"] = annotations
    return {**obj, "metadata": meta}


@pytest.mark.parametrize(("values", "flags", "runtime"), CASES, ids=[c[2] for c in CASES])
def test_helm_template_gives_the_objects_install_applies(
        values: list[str], flags: list[str], runtime: str) -> None:
    rendered = _helm_objects(values)
    secrets = [o for o in rendered if o["kind"] == "Secret"]
    others = [_without_keep(o) for o in rendered if o["kind"] != "Secret"]
    applied = _install_objects(flags)

    def key(o: dict[str, Any]) -> tuple[str, str]:
        return (o["kind"], o["metadata"]["name"])
    assert sorted(others, key=key) == sorted(applied, key=key)
    # what uninstall keeps, helm uninstall keeps
    kept = {key(o) for o in rendered
            if (o["metadata"].get("annotations") or {}).get("helm.sh/resource-policy") == "keep"}
    assert kept == {key(o) for o in applied if install.is_api_object(o)} and kept
    # the signing key: install's Secret with SIGNING_KEY_BYTES random bytes
    (secret,) = secrets
    assert secret["metadata"] == install.signing_secret()["metadata"]
    assert len(base64.b64decode(secret["data"][install.SIGNING_SECRET_ITEM])) \
        == install.SIGNING_KEY_BYTES
    (again,) = [o for o in _helm_objects(values) if o["kind"] == "Secret"]
    assert again["data"] != secret["data"]  # random, not a constant


def test_an_unknown_runtime_is_refused_by_the_chart() -> None:
    helm = shutil.which("helm")
    assert helm
    refused = subprocess.run([helm, "template", "cedana", str(chart.CHART_DIR), "--set",
                              "runtime=docker"], capture_output=True, text=True, check=False)
    assert refused.returncode != 0
    assert "runtime must be one of containerd, k3s, crio, not docker" in refused.stderr
