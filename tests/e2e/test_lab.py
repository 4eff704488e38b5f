"""The lab is a real cluster: pods run on a real kubelet, logs and exec work through the API
server, the registry enforces its credentials, and CRIU can dump a pod's container."""
from __future__ import annotations

import json
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import requests

from tests.e2e.lab import Lab, counter_file, counter_pod, pod_manifest, run

CACHE_IMAGES = Path("/var/cache/kubectl-cedana/images")


def test_pod_runs_and_logs_come_through_the_api(lab: Lab, namespace: str) -> None:
    lab.apply(counter_pod("counter"), namespace)
    pod = lab.wait_pod_running(namespace, "counter")
    assert pod["spec"]["nodeName"] == lab.node_name
    match = lab.wait_log(namespace, "counter", r"count=(\d+)")
    first = int(match.group(1))
    later = lab.wait_log(namespace, "counter", rf"count=({first + 2})")
    assert int(later.group(1)) == first + 2


def test_kubectl_exec_returns_command_output(lab: Lab, namespace: str) -> None:
    lab.apply(counter_pod("counter"), namespace)
    lab.wait_pod_running(namespace, "counter")
    token = uuid.uuid4().hex
    out = lab.kubectl("-n", namespace, "exec", "counter", "--", "/bin/echo", token).stdout
    assert out.strip() == token
    assert counter_file(lab, namespace, "counter", "/tmp/counter") >= 0


def _push(lab: Lab, ref: str, creds: str) -> subprocess.CompletedProcess[str]:
    return run(["skopeo", "copy", "--quiet", "--dest-creds", creds,
                "--dest-cert-dir", f"/etc/containers/certs.d/{lab.registry}",
                f"docker-archive:{CACHE_IMAGES / 'workload.tar'}", f"docker://{ref}"],
               check=False, timeout=180)


def _tag_exists(lab: Lab, repo: str, tag: str) -> bool:
    resp = requests.get(f"https://{lab.registry}/v2/{repo}/manifests/{tag}",
                        auth=(lab.registry_user, lab.registry_password), verify=lab.ca_cert,
                        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
                        timeout=30)
    return resp.status_code == 200


def test_pushed_image_runs_and_wrong_credentials_are_refused(lab: Lab, namespace: str) -> None:
    tag = uuid.uuid4().hex[:10]
    repo = f"lab/pushed-{namespace}"
    ref = f"{lab.registry}/{repo}:{tag}"

    refused = _push(lab, ref, f"{lab.registry_user}:wrong-password")
    assert refused.returncode != 0
    assert "unauthorized" in (refused.stderr + refused.stdout).lower()
    assert not _tag_exists(lab, repo, tag)

    # anonymous reads are refused too
    anon = requests.get(f"https://{lab.registry}/v2/", verify=lab.ca_cert, timeout=30)
    assert anon.status_code == 401

    pushed = _push(lab, ref, f"{lab.registry_user}:{lab.registry_password}")
    assert pushed.returncode == 0, pushed.stderr
    assert _tag_exists(lab, repo, tag)

    # kubelet pulls it through containerd with the node's credentials
    lab.apply(pod_manifest("pulled", ["/bin/sh", "-c", "echo pulled-$((6*7)); sleep 3600"],
                           image=ref, pull_policy="Always"), namespace)
    pod = lab.wait_pod_running(namespace, "pulled", timeout=180)
    # the running container's image is the manifest the registry holds under that tag (the
    # status may name another tag of the same content, so compare digests)
    digest = requests.head(f"https://{lab.registry}/v2/{repo}/manifests/{tag}",
                           auth=(lab.registry_user, lab.registry_password), verify=lab.ca_cert,
                           headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
                           timeout=30).headers["Docker-Content-Digest"]
    assert pod["status"]["containerStatuses"][0]["imageID"].endswith(digest)
    lab.wait_log(namespace, "pulled", r"pulled-42")


def test_criu_check_passes() -> None:
    proc = run(["criu", "check"], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Looks good" in proc.stdout + proc.stderr
    version = run(["criu", "--version"]).stdout
    major, minor = (int(x) for x in version.split("Version:")[1].split()[0].split(".")[:2])
    assert (major, minor) >= (4, 2)


def test_raw_runc_checkpoint_leaves_pod_running(lab: Lab, namespace: str) -> None:
    lab.apply(counter_pod("counter", interval_ms=200), namespace)
    lab.wait_pod_running(namespace, "counter")
    lab.wait_log(namespace, "counter", r"count=5")
    cid = lab.container_id(namespace, "counter")
    with tempfile.TemporaryDirectory(prefix="raw-runc-") as tmp:
        images, work = Path(tmp, "images"), Path(tmp, "work")
        images.mkdir()
        work.mkdir()
        proc = run(["runc", "--root", lab.runc_root, "checkpoint", "--leave-running",
                    "--manage-cgroups-mode", "soft", "--image-path", str(images),
                    "--work-path", str(work), cid], check=False, timeout=120)
        log = (work / "dump.log").read_text(errors="replace") if (work / "dump.log").exists() else ""
        assert proc.returncode == 0, proc.stderr + log[-3000:]
        assert (images / "inventory.img").exists()
        assert any(p.name.startswith("pages-") for p in images.iterdir())
        descriptors = json.loads((images / "descriptors.json").read_text())
        assert len(descriptors) == 3
    before = int(lab.wait_log(namespace, "counter", r"count=(\d+)").group(1))
    time.sleep(1)
    pod = lab.wait_pod_running(namespace, "counter")
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    after = int(lab.wait_log(namespace, "counter", rf"count=({before + 3})").group(1))
    assert after > before
