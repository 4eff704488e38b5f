"""install / uninstall apply exactly deploy/base, idempotently: the CRDs first (and established
before the rest), the users' RBAC, the admission policy, the helper; uninstall keeps the
cedana.io API and its objects unless --purge."""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubectl_cedana import install
from kubectl_cedana.errors import CedanaError, OperationTimeout
from kubectl_cedana.kube import KubeClient
from kubectl_cedana.settings import Settings
from kubectl_cedana.version import __version__
from tests.unit.plugin_fakeapi import (
    HELPER_NS,
    FakeCluster,
    helper_pod,
    make_pod,
    run_cli,
)
from tests.unit.plugin_fakehelpers import FakeHelpers

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "deploy" / "base"
IMAGE = f"docker.io/cedana/helper:{__version__}"
LABELS = {"app.kubernetes.io/name": "cedana-helper", "app.kubernetes.io/part-of": "kubectl-cedana"}


def base_objects() -> list[dict[str, Any]]:
    """deploy/base read straight from the checkout, in kustomization order."""
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    objects = []
    for name in kustomization["resources"]:
        objects += [d for d in yaml.safe_load_all((BASE / name).read_text()) if d]
    return objects


def daemonset(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == "DaemonSet")


# -- the manifests themselves -----------------------------------------------------------------
def test_kustomizations_are_plain_resource_lists() -> None:
    top = yaml.safe_load((REPO / "deploy" / "kustomization.yaml").read_text())
    assert top == {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                   "resources": ["base"]}
    base = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert set(base) == {"apiVersion", "kind", "resources"}  # no transformers to miss


def test_package_manifests_are_deploy_base() -> None:
    packaged = REPO / "kubectl_cedana" / "manifests"
    assert packaged.resolve() == BASE.resolve()
    assert install.load_manifests() == base_objects()


OBJECTS = [
    ("CustomResourceDefinition", "checkpoints.cedana.io"),
    ("CustomResourceDefinition", "restores.cedana.io"),
    ("CustomResourceDefinition", "migrations.cedana.io"),
    ("Namespace", "cedana-system"), ("ServiceAccount", "cedana-helper"),
    ("ClusterRole", "cedana-edit"), ("ClusterRole", "cedana-view"),
    ("ClusterRole", "cedana-checkpointer"), ("ClusterRole", "cedana-helper"),
    ("ClusterRoleBinding", "cedana-helper"), ("ValidatingAdmissionPolicy", "cedana.io"),
    ("ValidatingAdmissionPolicyBinding", "cedana.io"),
    ("ValidatingAdmissionPolicy", "cedana.io-helper-pods"),
    ("ValidatingAdmissionPolicyBinding", "cedana.io-helper-pods"), ("DaemonSet", "cedana-helper")]
DISPLAYED = [
    "customresourcedefinition.apiextensions.k8s.io/checkpoints.cedana.io",
    "customresourcedefinition.apiextensions.k8s.io/restores.cedana.io",
    "customresourcedefinition.apiextensions.k8s.io/migrations.cedana.io",
    "namespace/cedana-system", "serviceaccount/cedana-helper",
    "clusterrole.rbac.authorization.k8s.io/cedana-edit",
    "clusterrole.rbac.authorization.k8s.io/cedana-view",
    "clusterrole.rbac.authorization.k8s.io/cedana-checkpointer",
    "clusterrole.rbac.authorization.k8s.io/cedana-helper",
    "clusterrolebinding.rbac.authorization.k8s.io/cedana-helper",
    "validatingadmissionpolicy.admissionregistration.k8s.io/cedana.io",
    "validatingadmissionpolicybinding.admissionregistration.k8s.io/cedana.io",
    "validatingadmissionpolicy.admissionregistration.k8s.io/cedana.io-helper-pods",
    "validatingadmissionpolicybinding.admissionregistration.k8s.io/cedana.io-helper-pods",
    "daemonset.apps/cedana-helper"]


def test_objects_kinds_and_labels() -> None:
    objects = base_objects()
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == OBJECTS
    assert [install.display_name(o) for o in objects] == DISPLAYED
    for obj in objects:
        assert (obj["apiVersion"], obj["kind"]) in install.KINDS
        assert obj["metadata"]["labels"].items() >= LABELS.items(), obj["kind"]
    template = daemonset(objects)["spec"]["template"]
    assert template["metadata"]["labels"] == LABELS
    namespace = next(o for o in objects if o["kind"] == "Namespace")["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert namespace[f"pod-security.kubernetes.io/{mode}"] == "privileged"


def _grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
            for r in rule["resources"] for v in rule["verbs"]}


def _role(name: str) -> dict[str, Any]:
    return next(o for o in base_objects()
                if o["kind"] == "ClusterRole" and o["metadata"]["name"] == name)


FULL = {"create", "get", "list", "watch", "delete", "patch", "update"}
CEDANA = ("checkpoints", "restores", "migrations")


def test_users_get_the_resources_through_the_built_in_roles() -> None:
    """edit and admin (like pods/exec) get everything on the three resources, view reads
    them; none of them reaches status (the helpers' own) or anything else."""
    edit, view = _role("cedana-edit"), _role("cedana-view")
    labels = edit["metadata"]["labels"]
    assert labels["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert labels["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert "rbac.authorization.k8s.io/aggregate-to-view" not in labels
    assert _grants(edit) == {("cedana.io", r, v) for r in CEDANA for v in FULL}
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert _grants(view) == {("cedana.io", r, v) for r in CEDANA
                             for v in ("get", "list", "watch")}


def test_the_standalone_role_is_what_the_plugin_needs_in_a_namespace() -> None:
    role = _role("cedana-checkpointer")
    assert not any(k.startswith("rbac.authorization.k8s.io/aggregate")
                   for k in role["metadata"]["labels"])
    assert _grants(role) == {("cedana.io", r, v) for r in CEDANA for v in FULL} | {
        ("", "pods", v) for v in ("get", "list", "watch", "create", "delete")}


def test_the_caller_proof_roles_are_gone() -> None:
    names = {o["metadata"]["name"] for o in base_objects()}
    assert not names & {"cedana-caller", "cedana-helper-client"}
    for obj in base_objects():
        if obj["kind"] in ("Role", "ClusterRole") and obj["metadata"]["name"] != "cedana-helper":
            granted = _grants(obj)
            assert not {g for g in granted if g[0] == "certificates.k8s.io"
                        or g[1] == "pods/proxy"}, obj["metadata"]["name"]


def test_rbac_of_the_helper() -> None:
    role = next(o for o in base_objects()
                if o["kind"] == "ClusterRole" and o["metadata"]["name"] == "cedana-helper")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    # exactly this, nothing more: no secrets, no nodes, no update of pods; patch of pods only
    # as admission (cedana.io-helper-pods) allows: labels and owners of the pods it made, a
    # pod-deletion-cost on others
    kinds = ("checkpoints", "restores", "migrations")
    assert granted == (
        {("cedana.io", r, v) for r in kinds for v in ("get", "list", "watch", "patch")}
        | {("cedana.io", f"{r}/status", v) for r in kinds for v in ("get", "patch")}
        | {("cedana.io", "restores", "create")}
        | {("", "pods", v) for v in ("get", "list", "watch", "create", "delete", "patch")}
        | {(g, "events", v) for g in ("", "events.k8s.io") for v in ("create", "patch")}
        | {("authentication.k8s.io", "tokenreviews", "create"),
           ("authorization.k8s.io", "subjectaccessreviews", "create")})
    binding = next(o for o in base_objects() if o["kind"] == "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "cedana-helper",
                                    "namespace": "cedana-system"}]


def test_daemonset_spec() -> None:
    ds = daemonset(base_objects())
    pod = ds["spec"]["template"]["spec"]
    assert ds["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "cedana-helper"}
    assert (pod["hostPID"], pod["hostNetwork"], pod["dnsPolicy"]) == \
        (True, True, "ClusterFirstWithHostNet")
    assert pod["serviceAccountName"] == "cedana-helper"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["securityContext"] == {"privileged": True}
    assert container["command"] == [
        "cedana-helper", "serve", "--host", "127.0.0.1", "--port", "1324", "--checkpoint-dir",
        "/var/lib/cedana/checkpoints", "--runtime-root", "/run/containerd/runc/k8s.io",
        "--runtime-root", "/run/crun", "--runtime-root", "/run/runc",
        "--signing-key", "/etc/cedana/signing-key/key",
        "--peer-port", "1325", "--peer-address", "$(POD_IP)"]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"NODE_NAME": "spec.nodeName", "POD_NAMESPACE": "metadata.namespace",
                   "POD_NAME": "metadata.name", "POD_IP": "status.podIP"}
    # other helpers send checkpoints to the node's address (sealed with the cluster's key)
    assert container["ports"] == [{"name": "peer", "containerPort": 1325, "protocol": "TCP"}]
    # the REST API on the node's loopback only: no pod reaches the port; kubelet probes it there
    assert container["readinessProbe"]["httpGet"] == {"host": "127.0.0.1", "path": "/healthz",
                                                      "port": 1324}
    assert container["resources"]["limits"] == {"memory": "4Gi"}
    secrets = [v for v in pod["volumes"] if "hostPath" not in v]
    # the signing key, and a tmpfs at /run where CRIU keeps its kernel probe (criu.kdat)
    assert secrets == [{"name": "signing-key", "secret": {
        "secretName": "cedana-signing-key", "defaultMode": 0o400,
        "items": [{"key": "key", "path": "key"}]}},
        {"name": "run", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}]
    assert {"name": "signing-key", "mountPath": "/etc/cedana/signing-key",
            "readOnly": True} in container["volumeMounts"]
    assert {"name": "run", "mountPath": "/run"} in container["volumeMounts"]
    volumes = {v["name"]: v["hostPath"] for v in pod["volumes"] if "hostPath" in v}
    mounts = {m["name"]: m for m in container["volumeMounts"] if m["name"] in volumes}
    assert set(volumes) == set(mounts)
    for name, host in volumes.items():
        assert mounts[name]["mountPath"] == host["path"], name  # same path inside and out
    by_path = {m["mountPath"]: (m, volumes[m["name"]]) for m in mounts.values()}
    expected = {
        "/run/containerd": ("HostToContainer", None, False),
        "/var/lib/kubelet": ("HostToContainer", None, False),
        "/var/lib/containerd": (None, None, False),
        "/sys/fs/cgroup": (None, None, False),
        "/var/lib/cedana/checkpoints": (None, "DirectoryOrCreate", False),
        "/root/.docker": (None, "DirectoryOrCreate", True),
        "/etc/containerd": (None, None, True),
        "/etc/docker/certs.d": (None, "DirectoryOrCreate", True),
        "/etc/containers": (None, "DirectoryOrCreate", True),
        "/run/netns": ("HostToContainer", "DirectoryOrCreate", False),
        # CRI-O's: crun's and runc's state, bundles, containers/storage
        "/run/crun": ("HostToContainer", "DirectoryOrCreate", False),
        "/run/runc": ("HostToContainer", "DirectoryOrCreate", False),
        "/run/containers": ("HostToContainer", "DirectoryOrCreate", False),
        "/var/lib/containers": ("HostToContainer", "DirectoryOrCreate", False),
    }
    assert set(by_path) == set(expected)
    for path, (propagation, kind, read_only) in expected.items():
        mount, host = by_path[path]
        assert mount.get("mountPropagation") == propagation, path
        assert host.get("type") == kind, path
        assert bool(mount.get("readOnly")) == read_only, path


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl (offline use)")
def test_kubectl_kustomize_gives_the_same_objects_as_install(tmp_path: Path) -> None:
    """`kubectl apply -k deploy/` and `kubectl cedana install` apply the same objects."""
    rendered = subprocess.run(["kubectl", "kustomize", str(REPO / "deploy")], check=True,
                              capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, KUBECONFIG=str(tmp_path / "none"))).stdout
    def identity(obj: dict[str, Any]) -> tuple[str, str]:
        return obj["kind"], obj["metadata"]["name"]

    # kubectl sorts kinds its own way (Namespace first); the plugin applies the CRDs first
    assert sorted((d for d in yaml.safe_load_all(rendered) if d), key=identity) == \
        sorted(install.render_manifests(), key=identity)


def test_image_tag_is_the_plugin_version() -> None:
    assert install.default_image() == IMAGE


# -- install --dry-run ------------------------------------------------------------------------
def test_dry_run_yaml_is_deploy_base() -> None:
    result = run_cli(None, "install", "--dry-run", "-o", "yaml")
    assert result.exit_code == 0, result.stderr
    assert [d for d in yaml.safe_load_all(result.stdout) if d] == base_objects()
    assert result.stderr == ""


def test_dry_run_with_image_replaces_only_the_image() -> None:
    result = run_cli(None, "-o", "yaml", "install", "--image", "registry.local/helper:dev",
                     "--dry-run=client")
    assert result.exit_code == 0, result.stderr
    printed = [d for d in yaml.safe_load_all(result.stdout) if d]
    expected = base_objects()
    daemonset(expected)["spec"]["template"]["spec"]["containers"][0]["image"] = \
        "registry.local/helper:dev"
    assert printed == expected


def test_install_passes_the_helpers_limits_only_when_given() -> None:
    result = run_cli(None, "-o", "yaml", "install", "--dry-run", "--max-operations", "3",
                     "--max-operations-per-namespace", "2", "--max-checkpoint-dir-bytes", "0",
                     "--max-total-bytes", "1000")
    assert result.exit_code == 0, result.stderr
    printed = [d for d in yaml.safe_load_all(result.stdout) if d]
    (container,) = daemonset(printed)["spec"]["template"]["spec"]["containers"]
    (base,) = daemonset(base_objects())["spec"]["template"]["spec"]["containers"]
    assert container["command"] == [*base["command"], "--max-total-bytes", "1000",
                                    "--max-operations", "3",
                                    "--max-operations-per-namespace", "2",
                                    "--max-checkpoint-dir-bytes", "0"]
    refused = run_cli(None, "install", "--dry-run", "--max-operations", "-1")
    assert refused.exit_code == 2


def test_dry_run_json_is_a_list_and_table_names_objects() -> None:
    doc = json.loads(run_cli(None, "install", "--dry-run", "-o", "json").stdout)
    assert doc["kind"] == "List" and doc["items"] == base_objects()
    table = run_cli(None, "install", "--dry-run").stdout.splitlines()
    assert table == [f"{name} created (dry run)" for name in DISPLAYED] + [
        "secret/cedana-signing-key created unless it exists (dry run; random bytes, made by "
        "install only, never printed)"]


def with_secret(names: list[str]) -> list[str]:
    """The helper's objects as uninstall deletes them: the signing key right after the
    DaemonSet that mounts it."""
    out = list(names)
    out.insert(out.index("daemonset.apps/cedana-helper") + 1, "secret/cedana-signing-key")
    return out


def test_empty_image_is_refused() -> None:
    result = run_cli(None, "install", "--image", " ", "--dry-run")
    assert result.exit_code == 2
    assert result.stderr == "error: --image must not be empty\n"


# -- install / uninstall against the fake API server ------------------------------------------
def stored(cluster: FakeCluster) -> list[dict[str, Any]]:
    """What install applied from the manifests (the signing key Secret is not one of them)."""
    out = []
    for obj in cluster.objects.values():
        if obj.get("kind") == "Secret":
            continue
        clean = json.loads(json.dumps(obj))
        clean.pop("status", None)
        for key in ("resourceVersion", "generation"):
            clean["metadata"].pop(key, None)
        out.append(clean)
    return out


def test_install_applies_exactly_the_manifests_idempotently(cluster: FakeCluster,
                                                            kubeconfig: Path) -> None:
    first = run_cli(kubeconfig, "install")
    assert first.exit_code == 0, first.stderr
    created = [f"{name} created" for name in DISPLAYED]
    created.insert(created.index("daemonset.apps/cedana-helper created"),
                   "secret/cedana-signing-key created")
    assert first.stdout.splitlines() == created + ["helper ready on 1/1 nodes"]
    key = signing_key(cluster)
    assert sorted(map(json.dumps, stored(cluster))) == sorted(map(json.dumps, base_objects()))
    applies = [r for r in cluster.requests if r.method == "PATCH"]
    assert all(r.query["fieldManager"] == ["kubectl-cedana"] and r.query["force"] == ["true"]
               and r.headers["content-type"] == "application/apply-patch+yaml" for r in applies)
    second = run_cli(kubeconfig, "install", "-o", "json")
    doc = json.loads(second.stdout)
    assert doc["kind"] == "Install" and doc["image"] == IMAGE
    assert [o["action"] for o in doc["objects"]] == ["unchanged"] * (len(DISPLAYED) + 1)
    assert doc["ready"] == {"ready": 1, "desired": 1}
    assert signing_key(cluster) == key  # never replaced, never printed
    assert base64.b64encode(key).decode() not in first.stdout + second.stdout + first.stderr
    third = run_cli(kubeconfig, "install", "--image", "other/helper:2", "--no-wait")
    assert "daemonset.apps/cedana-helper configured" in third.stdout.splitlines()
    ds = cluster.objects["/apis/apps/v1/namespaces/cedana-system/daemonsets/cedana-helper"]
    assert ds["spec"]["template"]["spec"]["containers"][0]["image"] == "other/helper:2"


CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def test_install_waits_until_the_crds_are_established_before_the_rest(
        cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.crd_unestablished_gets = 4  # the API server takes a moment to serve them
    result = run_cli(kubeconfig, "install", "--no-wait")
    assert result.exit_code == 0, result.stderr
    writes = [(r.method, r.path) for r in cluster.requests
              if r.method == "PATCH" or (r.method == "GET" and r.path.startswith(CRDS))]
    first_other = next(i for i, (m, p) in enumerate(writes)
                       if m == "PATCH" and not p.startswith(CRDS))
    crd_patches = [i for i, (m, p) in enumerate(writes) if m == "PATCH" and p.startswith(CRDS)]
    assert len(crd_patches) == 3 and max(crd_patches) < first_other
    # established: read after the three were applied, until each says so, before the rest
    waits = [p for m, p in writes[max(crd_patches) + 1:first_other] if m == "GET"]
    assert len(waits) >= 4 + 3 and waits[-1] == f"{CRDS}/migrations.cedana.io"
    assert cluster.crd_unestablished_gets == 0


def test_install_gives_up_on_a_crd_that_is_never_established(cluster: FakeCluster,
                                                             kubeconfig: Path) -> None:
    cluster.crd_unestablished_gets = 10 ** 6
    result = run_cli(kubeconfig, "install", "--timeout", "1s")
    assert result.exit_code == 124
    assert result.stderr.startswith("error: customresourcedefinition.apiextensions.k8s.io/"
                                    "checkpoints.cedana.io not established after 1s "
                                    "(Installing)")
    assert not [r for r in cluster.requests if r.method == "PATCH"
                and not r.path.startswith(CRDS)]  # nothing else was applied


def test_server_dry_run_persists_nothing(cluster: FakeCluster, kubeconfig: Path) -> None:
    result = run_cli(kubeconfig, "install", "--dry-run=server")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:4] == [f"{name} created (server dry run)" for name in DISPLAYED[:4]]
    assert lines[4] == ("serviceaccount/cedana-helper created (server dry run; not validated: "
                        "its namespace does not exist yet)")
    assert cluster.objects == {}
    assert all(r.query.get("dryRun") == ["All"] for r in cluster.requests if r.method == "PATCH")
    reads = [r.path for r in cluster.requests if r.method == "GET" and r.path.startswith(CRDS)]
    assert sorted(reads) == sorted(f"{CRDS}/{n.rsplit('/', 1)[1]}" for n in DISPLAYED[:3])
    # (each read once, before its apply: nothing to wait for, nothing was stored)


KEPT = ["clusterrole.rbac.authorization.k8s.io/cedana-checkpointer",
        "clusterrole.rbac.authorization.k8s.io/cedana-edit",
        "clusterrole.rbac.authorization.k8s.io/cedana-view",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/cedana.io",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/cedana.io-helper-pods",
        "validatingadmissionpolicy.admissionregistration.k8s.io/cedana.io",
        "validatingadmissionpolicy.admissionregistration.k8s.io/cedana.io-helper-pods",
        "customresourcedefinition.apiextensions.k8s.io/checkpoints.cedana.io",
        "customresourcedefinition.apiextensions.k8s.io/migrations.cedana.io",
        "customresourcedefinition.apiextensions.k8s.io/restores.cedana.io"]
HELPER_PART = ["daemonset.apps/cedana-helper",
               "clusterrolebinding.rbac.authorization.k8s.io/cedana-helper",
               "clusterrole.rbac.authorization.k8s.io/cedana-helper",
               "serviceaccount/cedana-helper", "namespace/cedana-system"]


def _checkpoints(cluster: FakeCluster, helpers: FakeHelpers, kubeconfig: Path,
                 count: int) -> list[str]:
    cluster.add_pod(make_pod("counter"))
    names = []
    for _ in range(count):
        made = run_cli(kubeconfig, "checkpoint", "counter", "--leave-running", "-o", "json")
        assert made.exit_code == 0, made.stderr
        names.append(json.loads(made.stdout)["metadata"]["name"])
    return names


def test_uninstall_keeps_the_api_and_its_objects(cluster: FakeCluster, helpers: FakeHelpers,
                                                 kubeconfig: Path) -> None:
    assert run_cli(kubeconfig, "install").exit_code == 0
    _checkpoints(cluster, helpers, kubeconfig, 2)
    dry = run_cli(kubeconfig, "uninstall", "--dry-run")
    assert dry.exit_code == 0 and len(cluster.objects) == len(DISPLAYED) + 1  # and the key
    result = run_cli(kubeconfig, "uninstall")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == [f"{name} kept" + (" (2 object(s); --purge deletes them)"
                                       if name.endswith("/checkpoints.cedana.io") else "")
                     for name in KEPT] + [f"{name} deleted" for name in with_secret(HELPER_PART)]
    assert sorted(install.display_name(o) for o in cluster.objects.values()) == sorted(KEPT)
    assert len(cluster.objects_of("checkpoints")) == 2  # and their data, on the nodes
    assert not [k for k in cluster.pods if k[0] == HELPER_NS]
    selectors = {r.query.get("labelSelector", [""])[0] for r in cluster.requests
                 if r.method == "GET" and "labelSelector" in r.query}
    assert "app.kubernetes.io/part-of=kubectl-cedana" in selectors
    again = run_cli(kubeconfig, "uninstall")
    assert again.exit_code == 0
    assert again.stdout.splitlines() == [f"{name} kept" + (
        " (2 object(s); --purge deletes them)" if name.endswith("/checkpoints.cedana.io")
        else "") for name in KEPT]


def test_uninstall_purge_deletes_the_objects_first_then_everything(
        cluster: FakeCluster, helpers: FakeHelpers, kubeconfig: Path) -> None:
    assert run_cli(kubeconfig, "install").exit_code == 0
    names = _checkpoints(cluster, helpers, kubeconfig, 2)
    ids = [cluster.get("checkpoints", "default", n)["status"]["checkpointID"] for n in names]
    result = run_cli(kubeconfig, "uninstall", "--purge")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sorted(lines[:2]) == sorted(f"checkpoint.cedana.io/{n} deleted" for n in names)
    role = "clusterrole.rbac.authorization.k8s.io/cedana-"
    assert lines[2:] == [f"{name} deleted" for name in with_secret([
        HELPER_PART[0], HELPER_PART[1], f"{role}checkpointer", f"{role}edit", f"{role}helper",
        f"{role}view", *HELPER_PART[3:], *KEPT[3:]])]
    assert cluster.objects == {} and cluster.objects_of("checkpoints") == []
    assert sorted(helpers.deleted_data) == sorted(ids)  # the helpers removed the data
    # the objects went (finalizers cleared) before the first object of the install did
    gone = max(i for i, r in enumerate(cluster.requests) if r.method == "DELETE"
               and "/cedana.io/" in r.path)
    first = min(i for i, r in enumerate(cluster.requests) if r.method == "DELETE"
                and "/cedana.io/" not in r.path)
    assert gone < first
    assert [r for r in cluster.requests[gone:first] if r.method == "GET"
            and r.path == "/apis/cedana.io/v1alpha1/checkpoints"]


def test_uninstall_purge_stops_when_the_helpers_do_not_delete_the_data(
        cluster: FakeCluster, helpers: FakeHelpers, kubeconfig: Path) -> None:
    assert run_cli(kubeconfig, "install").exit_code == 0
    names = _checkpoints(cluster, helpers, kubeconfig, 1)
    helpers.keep_finalizers = True  # as when no helper runs
    result = run_cli(kubeconfig, "uninstall", "--purge", "--timeout", "1s")
    assert result.exit_code == 124
    line = result.stderr.strip()
    assert len(result.stderr.splitlines()) == 1
    assert line.startswith(f"error: 1 cedana.io object(s) still there after 1s (checkpoint "
                           f"default/{names[0]}); nothing else was uninstalled (1 held by "
                           "finalizer cedana.io/checkpoint-data")
    assert "kubectl patch checkpoint NAME" in line
    # the helper (and its signing key) and the API are still there
    assert len(cluster.objects) == len(DISPLAYED) + 1


SECRET_PATH = "/api/v1/namespaces/cedana-system/secrets/cedana-signing-key"


def signing_key(cluster: FakeCluster) -> bytes:
    """The key install stored, after checking the Secret is the one the helpers mount."""
    secret = cluster.objects[SECRET_PATH]
    assert secret["metadata"]["labels"] == LABELS and secret["type"] == "Opaque"
    key = base64.b64decode(secret["data"]["key"])
    assert len(key) == 32 and len(set(key)) > 8
    return key


def test_install_makes_the_signing_key_only_when_it_is_missing(cluster: FakeCluster,
                                                               kubeconfig: Path) -> None:
    # made by an administrator before install (e.g. restored from a backup): kept as it is
    cluster.objects[SECRET_PATH] = {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "cedana-signing-key", "namespace": "cedana-system",
                     "labels": LABELS},
        "data": {"key": base64.b64encode(b"k" * 40).decode()}}
    first = run_cli(kubeconfig, "install", "-o", "json")
    assert first.exit_code == 0, first.stderr
    entry = next(o for o in json.loads(first.stdout)["objects"] if o["kind"] == "Secret")
    assert (entry["action"], entry["note"]) == \
        ("unchanged", "kept: a signing key is never replaced")
    assert base64.b64decode(cluster.objects[SECRET_PATH]["data"]["key"]) == b"k" * 40
    assert not [r for r in cluster.requests if "/secrets" in r.path and r.method != "GET"]
    # one that holds no usable key stops install before the DaemonSet: pods would not start
    cluster.objects[SECRET_PATH]["data"] = {"key": base64.b64encode(b"short").decode()}
    del cluster.objects["/apis/apps/v1/namespaces/cedana-system/daemonsets/cedana-helper"]
    broken = run_cli(kubeconfig, "install")
    assert broken.exit_code != 0 and "holds no usable signing key" in broken.stderr
    assert "/apis/apps/v1/namespaces/cedana-system/daemonsets/cedana-helper" not in \
        cluster.objects


def test_a_server_dry_run_makes_no_key(cluster: FakeCluster, kubeconfig: Path) -> None:
    cluster.objects["/api/v1/namespaces/cedana-system"] = {
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "cedana-system"}}
    result = run_cli(kubeconfig, "install", "--dry-run=server")
    assert result.exit_code == 0, result.stderr
    assert "secret/cedana-signing-key created (server dry run)" in result.stdout.splitlines()
    assert SECRET_PATH not in cluster.objects
    (post,) = [r for r in cluster.requests if r.method == "POST" and "/secrets" in r.path]
    assert post.query["dryRun"] == ["All"]


def _client(kubeconfig: Path) -> KubeClient:
    return KubeClient(Settings(kubeconfig=str(kubeconfig)))


def test_wait_fails_fast_when_the_helper_image_cannot_be_pulled(cluster: FakeCluster,
                                                                kubeconfig: Path) -> None:
    assert run_cli(kubeconfig, "install", "--no-wait").exit_code == 0
    path = "/apis/apps/v1/namespaces/cedana-system/daemonsets/cedana-helper"
    cluster.objects[path]["status"]["numberReady"] = 0
    stuck = helper_pod("node1", ready=False)
    stuck["spec"]["containers"][0]["image"] = IMAGE
    stuck["status"]["containerStatuses"][0]["state"] = {
        "waiting": {"reason": "ImagePullBackOff", "message": "no registry"}}
    cluster.add_pod(stuck)
    with pytest.raises(CedanaError, match="ImagePullBackOff: no registry"):
        install.wait_daemonset_ready(_client(kubeconfig), "cedana-system", "cedana-helper", 30)


def test_wait_times_out(cluster: FakeCluster, kubeconfig: Path) -> None:
    assert run_cli(kubeconfig, "install", "--no-wait").exit_code == 0
    path = "/apis/apps/v1/namespaces/cedana-system/daemonsets/cedana-helper"
    cluster.objects[path]["status"]["numberReady"] = 0
    with pytest.raises(OperationTimeout, match="0/1 pods ready"):
        install.wait_daemonset_ready(_client(kubeconfig), "cedana-system", "cedana-helper", 0.5)


def test_daemonset_progress() -> None:
    ds = {"metadata": {"generation": 2},
          "status": {"desiredNumberScheduled": 2, "numberReady": 2, "updatedNumberScheduled": 2,
                     "observedGeneration": 1}}
    assert install.daemonset_progress(ds) == (False, 2, 2)  # the controller has not seen it
    ds["status"]["observedGeneration"] = 2
    assert install.daemonset_progress(ds) == (True, 2, 2)
    ds["status"]["updatedNumberScheduled"] = 1
    assert install.daemonset_progress(ds)[0] is False
