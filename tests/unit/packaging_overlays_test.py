"""deploy/overlays: `kubectl kustomize` renders each, `kubectl cedana install --runtime R
--dry-run -o yaml` prints the same objects, and each runtime gets its runc root and paths."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubectl_cedana import install, kustomize
from tests.unit.plugin_fakeapi import run_cli

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
#: the runtime roots the helper looks in (every one a node has): containerd's runc root, CRI-O's
#: crun and runc roots; a cluster of CRI-O nodes only leaves containerd's out
CRIO_ROOTS = ["/run/crun", "/run/runc"]
RUNTIME_ROOTS = {"containerd": ["/run/containerd/runc/k8s.io", *CRIO_ROOTS],
                 "k3s": ["/run/containerd/runc/k8s.io", *CRIO_ROOTS], "crio": CRIO_ROOTS}
#: CRI-O's host paths: crun's and runc's state, bundles, containers/storage
CRIO_PATHS = {"/run/crun", "/run/runc", "/run/containers", "/var/lib/containers"}
#: host paths each runtime's helper must see, besides the runtime roots
RUNTIME_PATHS = {
    "containerd": {"/run/containerd", "/var/lib/containerd", "/etc/containerd", *CRIO_PATHS},
    "k3s": {"/run/containerd", "/run/k3s/containerd", "/var/lib/rancher/k3s/agent/containerd",
            "/var/lib/rancher/k3s/agent/etc/containerd"},
    "crio": CRIO_PATHS,
}
#: mounts of another runtime that must not be there
FOREIGN_PATHS = {
    "containerd": {"/run/k3s/containerd"},
    "k3s": {"/var/lib/containerd", "/etc/containerd"},
    "crio": {"/run/containerd", "/var/lib/containerd", "/etc/containerd",
             "/run/k3s/containerd"},
}
RUNTIME_VOLUMES = {"run-containerd", "var-lib-containerd", "etc-containerd",
                   "run-k3s-containerd", "run-runc", "run-crun", "run-containers",
                   "var-lib-containers"}


def by_identity(objects: list[dict[str, Any]]) -> dict[tuple[str, str, str, str], str]:
    """Objects keyed by (apiVersion, kind, namespace, name), as canonical JSON."""
    keyed = {}
    for obj in objects:
        meta = obj["metadata"]
        key = (obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"])
        assert key not in keyed, f"{key} twice"
        keyed[key] = json.dumps(obj, sort_keys=True)
    return keyed


def kubectl_kustomize(directory: Path, tmp_path: Path) -> list[dict[str, Any]]:
    proc = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True,
                          check=False,
                          text=True, timeout=60,
                          env=dict(os.environ, KUBECONFIG=str(tmp_path / "none")))
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def daemonset_pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (ds,) = install.helper_daemonsets(objects)
    return dict(ds["spec"]["template"]["spec"])


def read_deploy(path: str) -> str | None:
    file = DEPLOY / path
    return file.read_text() if file.is_file() else None


def test_the_runtimes_are_the_overlays() -> None:
    from kubectl_cedana.cli import main

    overlays = sorted(p.name for p in (DEPLOY / "overlays").iterdir() if p.is_dir())
    assert overlays == sorted(install.RUNTIMES)
    option = next(p for p in main.commands["install"].params if p.name == "runtime")
    assert list(option.type.choices) == list(install.RUNTIMES)  # type: ignore[attr-defined]
    assert option.default == install.DEFAULT_RUNTIME == "containerd"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl")
@pytest.mark.parametrize("runtime", ["containerd", "k3s", "crio"])
def test_kubectl_kustomize_equals_install_dry_run(runtime: str, tmp_path: Path) -> None:
    rendered = kubectl_kustomize(DEPLOY / "overlays" / runtime, tmp_path)
    printed = run_cli(None, "install", "--runtime", runtime, "--dry-run", "-o", "yaml")
    assert printed.exit_code == 0, printed.stderr
    objects = [d for d in yaml.safe_load_all(printed.stdout) if d]
    assert by_identity(objects) == by_identity(rendered)
    assert len(objects) == len(rendered) == 15
    assert [o["kind"] for o in objects][:3] == ["CustomResourceDefinition"] * 3


def test_containerd_is_the_base_unchanged() -> None:
    assert install.render_manifests(runtime="containerd") == kustomize.build(read_deploy, "base")
    assert install.render_manifests() == install.render_manifests(runtime="containerd")


@pytest.mark.parametrize("runtime", ["containerd", "k3s", "crio"])
def test_each_runtime_gets_its_runc_root_and_paths(runtime: str) -> None:
    pod = daemonset_pod(install.render_manifests(runtime=runtime))
    (container,) = pod["containers"]
    command = container["command"]
    roots = [command[i + 1] for i, arg in enumerate(command) if arg == "--runtime-root"]
    assert roots == RUNTIME_ROOTS[runtime]
    hosts = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    mounts = {m["name"]: m for m in container["volumeMounts"] if m["name"] in hosts}
    assert set(hosts) == set(mounts)
    # besides host paths: the signing key Secret only
    assert [v["name"] for v in pod["volumes"] if "hostPath" not in v] == ["signing-key", "run"]
    assert len(hosts) + 2 == len(pod["volumes"])
    assert len(mounts) + 2 == len(container["volumeMounts"])
    assert RUNTIME_PATHS[runtime] <= set(hosts.values())
    assert not FOREIGN_PATHS[runtime] & set(hosts.values())
    # the helper sees each runtime's state where it wrote it, with mounts below propagating
    for root in roots:
        holder = [m for m in mounts.values()
                  if f"{root}/".startswith(m["mountPath"].rstrip("/") + "/")]
        assert holder and holder[0]["mountPropagation"] == "HostToContainer", root
        assert hosts[holder[0]["name"]] == holder[0]["mountPath"]
    for name, mount in mounts.items():
        if runtime == "k3s" and name == "etc-containerd":
            # k3s's generated containerd config, where the helper reads containerd's config
            assert (hosts[name], mount["mountPath"]) == \
                ("/var/lib/rancher/k3s/agent/etc/containerd", "/etc/containerd")
            assert mount["readOnly"] is True
        else:
            assert mount["mountPath"] == hosts[name], name  # same path inside and out


@pytest.mark.parametrize("runtime", ["k3s", "crio"])
def test_overlays_change_only_the_runtime_parts(runtime: str) -> None:
    base = install.render_manifests()
    overlay = install.render_manifests(runtime=runtime)
    assert [o for o in overlay if o["kind"] != "DaemonSet"] == \
        [o for o in base if o["kind"] != "DaemonSet"]
    base_pod, pod = daemonset_pod(base), daemonset_pod(overlay)
    # every mount of the base that is not about the runtime is there, unchanged
    for key in ("volumes",):
        kept = [v for v in base_pod[key] if v["name"] not in RUNTIME_VOLUMES]
        assert [v for v in pod[key] if v["name"] in {k["name"] for k in kept}] == kept
    base_mounts = base_pod["containers"][0]["volumeMounts"]
    kept_mounts = [m for m in base_mounts if m["name"] not in RUNTIME_VOLUMES]
    mounts = pod["containers"][0]["volumeMounts"]
    assert [m for m in mounts if m["name"] in {k["name"] for k in kept_mounts}] == kept_mounts
    strip = ("volumes", "containers")
    assert {k: v for k, v in pod.items() if k not in strip} == \
        {k: v for k, v in base_pod.items() if k not in strip}
    container = {k: v for k, v in pod["containers"][0].items()
                 if k not in ("command", "volumeMounts")}
    assert container == {k: v for k, v in base_pod["containers"][0].items()
                         if k not in ("command", "volumeMounts")}


def test_install_runtime_and_image_together() -> None:
    objects = install.render_manifests("registry.local/helper:dev", runtime="crio")
    (container,) = daemonset_pod(objects)["containers"]
    assert container["image"] == "registry.local/helper:dev"
    command = container["command"]
    assert [command[i + 1] for i, arg in enumerate(command) if arg == "--runtime-root"] == \
        CRIO_ROOTS


@pytest.mark.parametrize("runtime", ["containerd", "k3s", "crio"])
def test_every_runtime_mounts_the_signing_key_where_the_helper_reads_it(runtime: str) -> None:
    pod = daemonset_pod(install.render_manifests(runtime=runtime))
    (container,) = pod["containers"]
    command = container["command"]
    key_file = command[command.index("--signing-key") + 1]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "signing-key"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "signing-key"]
    assert volume["secret"] == {"secretName": install.SIGNING_SECRET, "defaultMode": 0o400,
                                "items": [{"key": install.SIGNING_SECRET_ITEM,
                                           "path": "key"}]}
    assert "optional" not in volume["secret"]  # no key, no helper: never a key of its own
    assert mount["readOnly"] is True and key_file == f"{mount['mountPath']}/key"


def test_an_unknown_runtime_is_a_usage_error() -> None:
    result = run_cli(None, "install", "--runtime", "docker", "--dry-run")
    assert result.exit_code == 2
    assert "docker" in result.stderr and "crio" in result.stderr


# -- the renderer refuses what it does not do ----------------------------------------------------
def write_tree(root: Path, files: dict[str, str]) -> kustomize.ReadFn:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)

    def read(path: str) -> str | None:
        file = root / path
        return file.read_text() if file.is_file() else None
    return read


BASE_FILES = {
    "base/kustomization.yaml": "resources: [cm.yaml]\n",
    "base/cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n"
                    "data: {k: v, list: '1'}\n",
}


def test_a_kustomization_field_it_does_not_render_is_refused(tmp_path: Path) -> None:
    read = write_tree(tmp_path, {**BASE_FILES, "o/kustomization.yaml":
                                 "resources: [../base]\nnamePrefix: x-\n"})
    with pytest.raises(kustomize.KustomizeError, match="namePrefix"):
        kustomize.build(read, "o")


def test_a_failed_test_operation_stops_the_build(tmp_path: Path) -> None:
    read = write_tree(tmp_path, {
        **BASE_FILES,
        "o/kustomization.yaml": ("resources: [../base]\npatches:\n- path: p.yaml\n"
                                 "  target: {kind: ConfigMap, name: a}\n"),
        "o/p.yaml": "- {op: test, path: /data/k, value: w}\n"
                    "- {op: replace, path: /data/k, value: z}\n"})
    with pytest.raises(kustomize.KustomizeError, match="expected 'w'"):
        kustomize.build(read, "o")


def test_json_patch_operations(tmp_path: Path) -> None:
    read = write_tree(tmp_path, {
        **BASE_FILES,
        "o/kustomization.yaml": ("resources: [../base]\npatches:\n- path: p.yaml\n"
                                 "  target: {version: v1, kind: ConfigMap}\n"),
        "o/p.yaml": "- {op: add, path: /data/new, value: n}\n"
                    "- {op: remove, path: /data/list}\n"
                    "- {op: add, path: /metadata/labels, value: {a~b/c: d}}\n"
                    "- {op: test, path: /metadata/labels/a~0b~1c, value: d}\n"
                    "- {op: add, path: /items, value: [1, 3]}\n"
                    "- {op: add, path: /items/1, value: 2}\n"
                    "- {op: add, path: /items/-, value: 4}\n"
                    "- {op: replace, path: /items/0, value: 0}\n"})
    (obj,) = kustomize.build(read, "o")
    assert obj["data"] == {"k": "v", "new": "n"}
    assert obj["metadata"]["labels"] == {"a~b/c": "d"}
    assert obj["items"] == [0, 2, 3, 4]
    for bad, message in (("- {op: replace, path: /data/missing, value: 1}", "nothing there"),
                         ("- {op: move, from: /data/k, path: /data/j}", "not supported"),
                         ("- {op: add, path: /items/9, value: 1}", "nothing at"),
                         ("- {op: remove, path: /data/k/x}", "nothing")):
        (tmp_path / "o" / "p.yaml").write_text(bad + "\n")
        with pytest.raises(kustomize.KustomizeError, match=message):
            kustomize.build(read, "o")


def test_a_patch_that_matches_nothing_is_refused(tmp_path: Path) -> None:
    read = write_tree(tmp_path, {
        **BASE_FILES,
        "o/kustomization.yaml": ("resources: [../base]\npatches:\n- path: p.yaml\n"
                                 "  target: {kind: DaemonSet, name: a}\n"),
        "o/p.yaml": "- {op: add, path: /data/x, value: y}\n"})
    with pytest.raises(kustomize.KustomizeError, match="no resource matches"):
        kustomize.build(read, "o")
