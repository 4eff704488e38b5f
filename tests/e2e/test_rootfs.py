"""Rootfs checkpoint and restore on the lab: a container's changed files committed as one layer,
pushed to the lab's TLS registry with the node's credentials, run by the kubelet, applied onto a
sleeping pod; memory and files checkpointed in one freeze; the CRI-O route on a container in
containers/storage."""
from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import tarfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from tests.e2e.helper import HelperProcess, start_helper, stop_helper
from tests.e2e.lab import (CONTAINERD_CONFIG, CONTAINERD_SOCK, KUBELET_CREDENTIALS, Lab,
                          pod_manifest, run, sleeper_pod)

pytestmark = pytest.mark.e2e

MANIFEST_ACCEPT = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
])
# what the source container does to its files: new, modified, deleted, a new directory tree
CHANGE_FILES = (
    "printf 'new-bytes\\n' > /data/new.txt; printf 'appended\\n' >> /data/original.txt; "
    "rm /data/doomed.txt; mkdir -p /data/made/sub; printf 'inner-bytes' > /data/made/sub/inner.txt; "
    "touch /tmp/ready; while true; do sleep 1; done"
)
# every path under /data with its type and, for files, its bytes (base64 keeps them exact)
VIEW_DATA = ("cd /data && for p in $(find . | sort); do if [ -f $p ]; then "
             "echo \"F $p $(base64 < $p | tr -d '\\n')\"; else echo \"D $p\"; fi; done")
IMAGES_CACHE = Path(os.environ.get("CEDANA_CACHE", "/var/cache/kubectl-cedana")) / "images"


def _registry(lab: Lab, method: str, path: str, **kw: Any) -> requests.Response:
    return requests.request(method, f"https://{lab.registry}/v2/{path}",
                            auth=(lab.registry_user, lab.registry_password),
                            verify=lab.ca_cert, timeout=60, **kw)


def _view(lab: Lab, namespace: str, pod: str) -> dict[str, str]:
    out = lab.kubectl("-n", namespace, "exec", pod, "--", "/bin/sh", "-c", VIEW_DATA).stdout
    entries = {}
    for line in out.splitlines():
        kind, path, *data = line.split(" ")
        entries[path] = kind + (":" + data[0] if data else "")
    return entries


def _wait_exec(lab: Lab, namespace: str, pod: str, test: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while lab.kubectl("-n", namespace, "exec", pod, "--", "/bin/sh", "-c", test,
                      check=False).returncode != 0:
        if time.monotonic() > end:
            raise AssertionError(f"{test!r} never held in {namespace}/{pod}")
        time.sleep(0.5)


def _files_pod(lab: Lab, namespace: str, name: str) -> None:
    lab.apply(pod_manifest(name, ["/bin/sh", "-c", CHANGE_FILES]), namespace)
    lab.wait_pod_running(namespace, name)
    _wait_exec(lab, namespace, name, "test -f /tmp/ready")


def _ref(lab: Lab, namespace: str, tag: str) -> str:
    return f"{lab.registry}/rootfs/{namespace}:{tag}"


def _containerd_image(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(manifest, config) of an image as the lab's containerd holds it."""
    listing = run(["ctr", "-a", CONTAINERD_SOCK, "-n", "k8s.io", "images", "ls",
                   f"name=={name}"]).stdout.splitlines()[1]
    digest = listing.split()[2]
    manifest = json.loads(run(["ctr", "-a", CONTAINERD_SOCK, "-n", "k8s.io", "content", "get",
                               digest]).stdout)
    config = json.loads(run(["ctr", "-a", CONTAINERD_SOCK, "-n", "k8s.io", "content", "get",
                             manifest["config"]["digest"]]).stdout)
    return manifest, config


def _check_pushed(lab: Lab, ref: str, answer: dict[str, Any], base_manifest: dict[str, Any],
                  base_config: dict[str, Any]) -> list[str]:
    """The registry holds the base layers plus exactly one new layer that checks out; returns
    the new layer's member names."""
    repo, tag = ref.split("/", 1)[1].rsplit(":", 1)
    got = _registry(lab, "GET", f"{repo}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT})
    assert got.status_code == 200, got.text
    assert "sha256:" + hashlib.sha256(got.content).hexdigest() == answer["digest"]
    manifest = got.json()
    layers = manifest["layers"]
    assert [layer["digest"] for layer in layers[:-1]] == [
        layer["digest"] for layer in base_manifest["layers"]]
    new = layers[-1]
    blob = _registry(lab, "GET", f"{repo}/blobs/{new['digest']}").content
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == new["digest"] == answer["layer"]["digest"]
    assert len(blob) == new["size"]
    plain = gzip.decompress(blob)
    diff_id = "sha256:" + hashlib.sha256(plain).hexdigest()
    assert diff_id == answer["layer"]["diff_id"]
    config = _registry(lab, "GET", f"{repo}/blobs/{manifest['config']['digest']}").json()
    assert config["rootfs"]["diff_ids"] == base_config["rootfs"]["diff_ids"] + [diff_id]
    assert config.get("config") == base_config.get("config")  # env, cmd... carried over
    with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
        return tar.getnames()


def _run_image(lab: Lab, namespace: str, name: str, image: str) -> dict[str, str]:
    lab.apply(pod_manifest(name, ["/bin/sh", "-c", "while true; do sleep 3600; done"],
                           image=image, pull_policy="Always"), namespace)
    lab.wait_pod_running(namespace, name, timeout=180)
    return _view(lab, namespace, name)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _assert_changed_view(view: dict[str, str], original: dict[str, str]) -> None:
    b64 = _b64
    assert view["./new.txt"] == "F:" + b64("new-bytes\n")
    orig_bytes = base64.b64decode(original["./original.txt"][2:]).decode()
    assert view["./original.txt"] == "F:" + b64(orig_bytes + "appended\n")
    assert "./doomed.txt" not in view and "./doomed.txt" in original
    assert view["./made"] == "D" and view["./made/sub"] == "D"
    assert view["./made/sub/inner.txt"] == "F:" + b64("inner-bytes")


def test_rootfs_commit_pushes_one_layer_the_kubelet_runs_and_restore_applies(
        lab: Lab, namespace: str, helper: HelperProcess) -> None:
    lab.apply(sleeper_pod("pristine"), namespace)
    lab.wait_pod_running(namespace, "pristine")
    original = _view(lab, namespace, "pristine")
    _files_pod(lab, namespace, "source")
    ref = _ref(lab, namespace, "snap1")

    answer = helper.post("/checkpoint/rootfs", {
        "container_name": "main", "sandbox_name": "source", "namespace": namespace,
        "address": CONTAINERD_SOCK, "image_ref": ref})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["image_ref"] == ref and body["frozen"] is True
    assert body["pushed"] == f"{ref}@{body['digest']}"

    base_manifest, base_config = _containerd_image(lab.workload_image)
    names = _check_pushed(lab, ref, body, base_manifest, base_config)
    assert {"data/new.txt", "data/.wh.doomed.txt", "data/made/sub/inner.txt",
            "data/original.txt"} <= set(names)

    # the source keeps running, untouched by the freeze
    source = lab.pod(namespace, "source")["status"]["containerStatuses"][0]
    assert "running" in source["state"] and source["restartCount"] == 0

    # a new pod from the pushed image, pulled by the kubelet from the lab registry
    from_image = _run_image(lab, namespace, "from-image", ref)
    _assert_changed_view(from_image, original)

    # the same layer applied onto a sleeping pod of the base image gives the same view
    lab.apply(sleeper_pod("target"), namespace)
    lab.wait_pod_running(namespace, "target")
    applied = helper.post("/restore/rootfs", {
        "container_name": "main", "sandbox_name": "target", "namespace": namespace,
        "address": CONTAINERD_SOCK, "image_ref": ref})
    assert applied.status_code == 200, applied.text
    assert applied.json()["applied_layers"] == [body["layer"]["digest"]]
    assert "/data/doomed.txt" in applied.json()["deleted"]
    assert _view(lab, namespace, "target") == from_image

    # an image the node has but no registry prefix of this namespace covers (another tenant's,
    # say) is refused before anything is read, the target untouched
    refused = helper.post("/restore/rootfs", {
        "container_name": "main", "sandbox_name": "target", "namespace": namespace,
        "address": CONTAINERD_SOCK, "image_ref": "docker.io/cedana-lab/pause:3.2"})
    assert refused.status_code == 403, refused.text
    assert refused.json()["code"] == "registry_not_allowed"
    assert _view(lab, namespace, "target") == from_image


APPENDER = ("i=0; while true; do i=$((i+1)); echo $i >> /data/log; echo count=$i; "
            "usleep 20000; done")


def test_checkpoint_with_files_resumes_file_and_counter_together(
        lab: Lab, namespace: str, helper: HelperProcess) -> None:
    """Files and memory from one freeze: the log file's lines stay consecutive across the
    restore (a diff taken after the thaw would hold lines the memory has not written yet)."""
    lab.apply(pod_manifest("appender", ["/bin/sh", "-c", APPENDER]), namespace)
    lab.wait_pod_running(namespace, "appender")
    lab.wait_log(namespace, "appender", r"count=\d{3}\b")
    lab.apply(sleeper_pod("copy"), namespace)
    lab.wait_pod_running(namespace, "copy")

    dumped = helper.checkpoint(namespace, "appender", leave_running=True, with_rootfs=True)
    assert dumped.status_code == 200, dumped.text
    checkpoint_id = dumped.json()["checkpoint_id"]
    files = set(os.listdir(helper.checkpoint_dir / checkpoint_id))
    assert {"rootfs-diff.tar", "deleted.files"} <= files
    restored = helper.restore(namespace, "copy", checkpoint_id=checkpoint_id)
    assert restored.status_code == 200, restored.text

    first = int(lab.wait_log(namespace, "copy", r"count=(\d+)").group(1))
    lab.wait_log(namespace, "copy", rf"count={first + 20}\b")
    lines = lab.kubectl("-n", namespace, "exec", "copy", "--", "cat", "/data/log").stdout.split()
    numbers = [int(n) for n in lines]
    # the file continues exactly where the memory does: no gap, no repeat
    assert numbers == list(range(1, len(numbers) + 1))
    assert numbers[first - 1] == first and len(numbers) >= first + 20


def test_checkpoint_without_rootfs_stores_no_files(
        lab: Lab, namespace: str, helper: HelperProcess) -> None:
    lab.apply(pod_manifest("plain", ["/bin/sh", "-c", "while true; do sleep 1; done"]), namespace)
    lab.wait_pod_running(namespace, "plain")
    dumped = helper.checkpoint(namespace, "plain", leave_running=True, with_rootfs=False)
    assert dumped.status_code == 200, dumped.text
    files = set(os.listdir(helper.checkpoint_dir / dumped.json()["checkpoint_id"]))
    assert "checkpoint" in files and "rootfs-diff.tar" not in files


@pytest.fixture()
def helper_with(tmp_path: Path) -> Iterator[Any]:
    started: list[HelperProcess] = []

    def start(name: str, extra_args: list[str], env: dict[str, str] | None = None
              ) -> HelperProcess:
        helper = start_helper(f"{name}-{uuid.uuid4().hex[:6]}", tmp_path / name,
                              extra_args=extra_args, env=env)
        started.append(helper)
        return helper

    yield start
    for helper in started:
        stop_helper(helper)


def _counting(lab: Lab, namespace: str, pod: str) -> int:
    return int(lab.wait_log(namespace, pod, r"count=(\d+)").group(1))


def test_push_without_or_with_wrong_node_credentials_is_refused_and_loses_nothing(
        lab: Lab, namespace: str, helper_with: Any, tmp_path: Path) -> None:
    lab.apply(pod_manifest("busy", ["/bin/sh", "-c", APPENDER]), namespace)
    lab.wait_pod_running(namespace, "busy")
    body = {"container_name": "main", "sandbox_name": "busy", "namespace": namespace,
            "address": CONTAINERD_SOCK, "image_ref": _ref(lab, namespace, "nocreds")}
    wrong = tmp_path / "wrong" / "config.json"
    wrong.parent.mkdir()
    wrong.write_text(json.dumps({"auths": {lab.registry: {
        "auth": _b64(f"{lab.registry_user}:nope")}}}))
    cases = [
        ("nocreds", ["--docker-config", str(tmp_path / "none.json"),
                     "--containerd-config", str(tmp_path / "none.toml")], "has none"),
        ("wrongcreds", ["--docker-config", str(wrong),
                        "--containerd-config", str(tmp_path / "none.toml")], "refused"),
    ]
    for name, args, words in cases:
        helper = helper_with(name, args)
        before = _counting(lab, namespace, "busy")
        answer = helper.post("/checkpoint/rootfs", body)
        assert answer.status_code == 403, answer.text
        error = answer.json()
        assert error["code"] == "registry_auth_failed" and error["registry"] == lab.registry
        assert lab.registry in error["message"] and words in error["message"]
        assert "Traceback" not in answer.text
        # nothing pushed, the container still running and counting
        assert _registry(lab, "GET", f"rootfs/{namespace}/manifests/nocreds",
                         headers={"Accept": MANIFEST_ACCEPT}).status_code == 404
        status = lab.pod(namespace, "busy")["status"]["containerStatuses"][0]
        assert "running" in status["state"] and status["restartCount"] == 0
        lab.wait_log(namespace, "busy", rf"count={before + 10}\b")
        assert helper.alive()
    # the kubelet's own pull credentials are the node's too; containerd 2.x's configuration
    # (version 3, certs.d/HOST/hosts.toml) gives the registry's CA
    from_kubelet = helper_with("kubeletcreds", [
        "--docker-config", KUBELET_CREDENTIALS, "--containerd-config", CONTAINERD_CONFIG,
        "--certs-dir", str(tmp_path / "no-certs")])
    answer = from_kubelet.post("/checkpoint/rootfs", body)
    assert answer.status_code == 200, answer.text
    assert _registry(lab, "HEAD", f"rootfs/{namespace}/manifests/nocreds",
                     headers={"Accept": MANIFEST_ACCEPT}).status_code == 200


def test_push_with_a_docker_credential_helper(lab: Lab, namespace: str, helper_with: Any,
                                              tmp_path: Path) -> None:
    """credsStore: the helper runs docker-credential-NAME as the docker CLI would."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    store = bindir / "docker-credential-cedanalab"
    store.write_text("#!/bin/sh\n"
                     f"[ \"$1\" = get ] || exit 1\nread server\n"
                     f"[ \"$server\" = {lab.registry} ] || {{ echo 'credentials not found'; exit 1; }}\n"
                     f"printf '{{\"ServerURL\":\"%s\",\"Username\":\"{lab.registry_user}\","
                     f"\"Secret\":\"{lab.registry_password}\"}}' \"$server\"\n")
    store.chmod(0o755)
    config = tmp_path / "store" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps({"credsStore": "cedanalab"}))
    helper = helper_with("credstore", ["--docker-config", str(config),
                                       "--containerd-config", str(tmp_path / "none.toml")],
                         env={"PATH": f"{bindir}:{os.environ['PATH']}"})
    _files_pod(lab, namespace, "src")
    ref = _ref(lab, namespace, "credstore")
    answer = helper.post("/checkpoint/rootfs", {
        "container_name": "main", "sandbox_name": "src", "namespace": namespace,
        "address": CONTAINERD_SOCK, "image_ref": ref})
    assert answer.status_code == 200, answer.text
    got = _registry(lab, "HEAD", f"rootfs/{namespace}/manifests/credstore",
                    headers={"Accept": MANIFEST_ACCEPT})
    assert got.status_code == 200 and got.headers["Docker-Content-Digest"] == answer.json()["digest"]


# -- CRI-O: a container in containers/storage, run by runc under /run/runc -------------------
PODMAN = ["podman", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
CRIO_RUNC_ROOT = "/run/runc"


def _push_base_to_registry(lab: Lab, repo: str) -> str:
    ref = f"{lab.registry}/{repo}:1"
    run(["skopeo", "copy", "-q", "--dest-creds", f"{lab.registry_user}:{lab.registry_password}",
         "--dest-cert-dir", f"/etc/containers/certs.d/{lab.registry}",
         f"docker-archive:{IMAGES_CACHE / 'workload.tar'}", f"docker://{ref}"], timeout=300)
    return ref


@pytest.fixture()
def crio_container(lab: Lab) -> Iterator[dict[str, str]]:
    """A container created in containers/storage with the annotations CRI-O leaves."""
    base = _push_base_to_registry(lab, "lab/workload-crio")
    run([*PODMAN, "pull", "-q", "--creds", f"{lab.registry_user}:{lab.registry_password}",
         "--cert-dir", f"/etc/containers/certs.d/{lab.registry}", base], timeout=300)
    image_id = run([*PODMAN, "image", "inspect", "--format", "{{.Id}}", base]).stdout.strip()
    suffix = uuid.uuid4().hex[:6]
    pod, ns, name = f"crio-pod-{suffix}", f"crio-ns-{suffix}", f"cedana-crio-{suffix}"
    annotations = {
        "io.kubernetes.pod.name": pod, "io.kubernetes.pod.namespace": ns,
        "io.kubernetes.container.name": "main", "io.kubernetes.cri-o.ContainerType": "container",
        "io.kubernetes.cri-o.ImageName": base, "io.kubernetes.cri-o.ImageRef": image_id,
        "io.kubernetes.cri-o.SandboxID": uuid.uuid4().hex * 2,
    }
    args = [*PODMAN, "run", "-d", "--name", name, "--runtime", "runc", "--network", "none",
            "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
    for key, value in annotations.items():
        args += ["--annotation", f"{key}={value}"]
    run([*args, base, "/bin/sh", "-c", CHANGE_FILES], timeout=120)
    try:
        end = time.monotonic() + 30
        while run([*PODMAN, "exec", name, "test", "-f", "/tmp/ready"],
                  check=False).returncode != 0:
            assert time.monotonic() < end, "the CRI-O style container never got ready"
            time.sleep(0.3)
        yield {"pod": pod, "namespace": ns, "name": name, "base": base, "image_id": image_id}
    finally:
        run([*PODMAN, "rm", "-f", "-t", "0", name], check=False, timeout=120)


def test_crio_route_commits_a_containers_storage_container(
        lab: Lab, namespace: str, helper: HelperProcess, crio_container: dict[str, str]) -> None:
    listed = helper.get(f"/list/{crio_container['namespace']}", params={"root": CRIO_RUNC_ROOT})
    assert [c["runtime"] for c in listed.json()] == ["cri-o"], listed.text
    crio_ns = crio_container["namespace"]  # the registry prefix is per pod namespace
    ref = _ref(lab, crio_ns, "crio")
    answer = helper.post("/checkpoint/rootfs/crio", {
        "container_name": "main", "sandbox_name": crio_container["pod"],
        "namespace": crio_container["namespace"], "root": CRIO_RUNC_ROOT,
        "image_ref": crio_container["base"], "new_image_ref": ref})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["base_image"] == crio_container["base"] and body["frozen"] is True

    repo = crio_container["base"].split("/", 1)[1].rsplit(":", 1)[0]
    base_manifest = _registry(lab, "GET", f"{repo}/manifests/1",
                              headers={"Accept": MANIFEST_ACCEPT}).json()
    base_config = _registry(lab, "GET", f"{repo}/blobs/{base_manifest['config']['digest']}").json()
    names = _check_pushed(lab, ref, body, base_manifest, base_config)
    assert {"data/new.txt", "data/.wh.doomed.txt", "data/made/sub/inner.txt"} <= set(names)
    # the container's files are those containers/storage keeps in the layer's diff directory
    diff_dirs = [line for line in Path(f"/proc/{_podman_pid(crio_container['name'])}/mountinfo")
                 .read_text().splitlines() if " / / " in line and "upperdir=" in line]
    assert "/var/lib/containers/storage/overlay/" in diff_dirs[0]

    # the kubelet runs the pushed image from the lab registry
    lab.apply(sleeper_pod("pristine"), namespace)
    lab.wait_pod_running(namespace, "pristine")
    _assert_changed_view(_run_image(lab, namespace, "from-crio", ref),
                         _view(lab, namespace, "pristine"))

    # the wrong original image is refused before anything is pushed
    mismatch = helper.post("/checkpoint/rootfs/crio", {
        "container_name": "main", "sandbox_name": crio_container["pod"],
        "namespace": crio_container["namespace"], "root": CRIO_RUNC_ROOT,
        "image_ref": ref, "new_image_ref": _ref(lab, crio_ns, "crio-wrong")})
    assert mismatch.status_code == 409 and mismatch.json()["code"] == "image_mismatch", \
        mismatch.text
    assert _registry(lab, "GET", f"rootfs/{crio_ns}/manifests/crio-wrong",
                     headers={"Accept": MANIFEST_ACCEPT}).status_code == 404


def _podman_pid(name: str) -> int:
    return int(run([*PODMAN, "inspect", "--format", "{{.State.Pid}}", name]).stdout.strip())
