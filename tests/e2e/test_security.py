"""The adversarial suite (issue 16, docs/security.md "Attacks and the tests that try them").

A tenant holds the checkpoint rights of one namespace, A (the cedana-checkpointer role, bound
there to its ServiceAccount), and tries every finding of the security review against the live
lab: through the REST port of a helper that checks callers as the DaemonSet's do (TokenReview
and SubjectAccessReview, run under a ServiceAccount bound to nothing but the shipped
cedana-helper ClusterRole), through the DaemonSet's helpers themselves (reachability from pods,
a token replayed on node 2), and through the resources. Every attempt must be refused, and each
test checks what it aimed at afterwards: host paths, the other namespace's container, the
registries, the placeholder, the API server's audit log."""
from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.e2e.helper import HelperProcess, start_helper, stop_helper
from tests.e2e.lab import (
    CONTAINERD_SOCK,
    KUBECONFIG,
    LAB_DIR,
    PKI,
    REPO,
    RUNC_ROOT,
    Lab,
    counter_pod,
    create_namespace,
    delete_namespace,
    helper_daemonset_lock,
    install_helpers,
    pod_manifest,
    port_forward,
    run,
    service_account_token,
    sleeper_pod,
)

pytestmark = pytest.mark.e2e

AUDIT_LOG = LAB_DIR / "logs" / "audit.log"
HELPER_NS = "cedana-system"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"
#: the helper's cap on a layer's unpacked size in this suite (the bomb unpacks to 4x this)
MAX_LAYER_BYTES = 16 << 20


# -- registries --------------------------------------------------------------------------------
@dataclass
class Registry:
    """The v2 API of a registry, with the node's credentials (what an attacker who may push
    has too)."""

    host: str
    auth: tuple[str, str]
    ca: str

    def call(self, method: str, path: str, **kw: Any) -> requests.Response:
        url = path if path.startswith("https://") else f"https://{self.host}/v2/{path}"
        return requests.request(method, url, auth=self.auth, verify=self.ca, timeout=60, **kw)

    def manifest(self, repo: str, ref: str) -> dict[str, Any]:
        got = self.call("GET", f"{repo}/manifests/{ref}",
                        headers={"Accept": f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"})
        assert got.status_code == 200, got.text
        return dict(got.json())

    def blob(self, repo: str, digest: str) -> bytes:
        got = self.call("GET", f"{repo}/blobs/{digest}")
        assert got.status_code == 200, got.text
        return got.content

    def push_blob(self, repo: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if self.call("HEAD", f"{repo}/blobs/{digest}").status_code == 200:
            return digest
        started = self.call("POST", f"{repo}/blobs/uploads/")
        assert started.status_code == 202, started.text
        location = started.headers["Location"]
        if not location.startswith("https://"):
            location = f"https://{self.host}{location}"
        put = self.call("PUT", location + ("&" if "?" in location else "?") + f"digest={digest}",
                        data=data, headers={"Content-Type": "application/octet-stream"})
        assert put.status_code == 201, put.text
        return digest

    def push_manifest(self, repo: str, tag: str, manifest: dict[str, Any]) -> str:
        body = json.dumps(manifest).encode()
        put = self.call("PUT", f"{repo}/manifests/{tag}", data=body,
                        headers={"Content-Type": manifest.get("mediaType", OCI_MANIFEST)})
        assert put.status_code == 201, put.text
        return "sha256:" + hashlib.sha256(body).hexdigest()

    def tags(self, repo: str) -> list[str]:
        got = self.call("GET", f"{repo}/tags/list")
        if got.status_code == 404:
            return []
        assert got.status_code == 200, got.text
        return sorted(got.json().get("tags") or [])

    def copy(self, src: Registry, repo: str, tag: str, dest_repo: str, dest_tag: str) -> None:
        """An image of `src` pushed here (its blobs copied)."""
        manifest = src.manifest(repo, tag)
        for descriptor in [manifest["config"], *manifest["layers"]]:
            self.push_blob(dest_repo, src.blob(repo, descriptor["digest"]))
        self.push_manifest(dest_repo, dest_tag, manifest)


@dataclass
class SecondRegistry:
    """Another registry on the node's loopback (distribution, TLS, the same htpasswd), for which
    the node holds credentials too: an internal registry the administrator did not allow."""

    registry: Registry
    proc: subprocess.Popen[bytes]
    log_path: Path

    def requests_since(self, offset: int) -> list[str]:
        """The request lines distribution logged after byte `offset` of its log."""
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            lines = log.read().decode(errors="replace").splitlines()
        return [line for line in lines if "http.request.uri=" in line]

    def log_size(self) -> int:
        return self.log_path.stat().st_size


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_second_registry(lab: Lab, home: Path) -> SecondRegistry:
    port = _free_port()
    (home / "storage").mkdir(parents=True)
    config = {
        "version": 0.1, "log": {"level": "info", "formatter": "text"},
        "storage": {"filesystem": {"rootdirectory": str(home / "storage")},
                    "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}",
                 "tls": {"certificate": str(PKI / "registry.crt"),
                         "key": str(PKI / "registry.key")}},
        "auth": {"htpasswd": {"realm": "second", "path": str(LAB_DIR / "registry.htpasswd")}},
    }
    (home / "registry.yml").write_text(yaml.safe_dump(config))
    log_path = home / "registry.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["docker-registry", "serve", str(home / "registry.yml")],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    registry = Registry(f"127.0.0.1:{port}", (lab.registry_user, lab.registry_password),
                        lab.ca_cert)
    end = time.monotonic() + 30
    while True:
        try:
            if registry.call("GET", "").status_code == 200:
                break
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > end:
            raise AssertionError(f"the second registry did not start: {log_path.read_text()}")
        time.sleep(0.2)
    return SecondRegistry(registry, proc, log_path)


# -- layers ------------------------------------------------------------------------------------
Entry = tuple[tarfile.TarInfo, bytes | None]


def _file(name: str, data: bytes, mode: int = 0o644) -> Entry:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    return info, data


def _dir(name: str, mode: int = 0o755) -> Entry:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, mode
    return info, None


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> Entry:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def _device(name: str, major: int, minor: int) -> Entry:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor, info.mode = tarfile.CHRTYPE, major, minor, 0o666
    return info, None


def _layer(entries: list[Entry]) -> tuple[bytes, str]:
    """A gzip layer of `entries` and its diff_id."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    plain = raw.getvalue()
    return gzip.compress(plain, 6), "sha256:" + hashlib.sha256(plain).hexdigest()


def _bomb(unpacked: int) -> tuple[bytes, str]:
    """A layer of one file of zeros, `unpacked` bytes, streamed through gzip (~1000:1)."""
    out = io.BytesIO()
    plain_hash = hashlib.sha256()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as gz:
        info = tarfile.TarInfo("data/zeros")
        info.size = unpacked
        header = info.tobuf(tarfile.PAX_FORMAT)
        chunk = bytes(1 << 20)
        pad = (512 - unpacked % 512) % 512
        for piece in [header, *[chunk] * (unpacked >> 20), bytes(pad + 1024)]:
            gz.write(piece)
            plain_hash.update(piece)
    return out.getvalue(), "sha256:" + plain_hash.hexdigest()


# -- the world the tenant lives in -------------------------------------------------------------
@dataclass
class World:
    lab: Lab
    a: str  # the tenant's namespace: checkpoint rights here only
    b: str  # another tenant's namespace: the victim
    token: str  # the tenant's ServiceAccount token (cedana-checkpointer in A)
    owner_b: str  # B's own checkpointer: makes B's checkpoints
    helper: HelperProcess  # checks callers like the DaemonSet, as cedana-helper's RBAC
    helper_user: str  # the ServiceAccount the helper runs as (what the audit log names)
    peer: HelperProcess  # another helper of the cluster (the shared key), no caller checks
    rogue: HelperProcess  # a helper with a key of its own: not of this cluster
    registry: Registry  # the lab's
    second: SecondRegistry
    checkpoints: str  # the checkpoint repository, under an allowed prefix
    canary: Path  # a host directory the attacks aim at
    legit: str  # a rootfs image the tenant made properly, in its own repository
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    @property
    def a_repo(self) -> str:
        return f"rootfs/{self.a}"

    def call(self, method: str, route: str, body: Any = None, token: str | None = "",
             helper: HelperProcess | None = None, timeout: float = 300) -> requests.Response:
        """A request to the helper's REST port with the tenant's token (or `token`)."""
        headers = {}
        bearer = self.token if token == "" else token
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        return requests.request(method, (helper or self.helper).url + route, json=body,
                                headers=headers, timeout=timeout)

    def canary_state(self) -> dict[str, tuple[int, bytes]]:
        return {p.name: (p.lstat().st_mode, p.read_bytes() if p.is_file() else b"")
                for p in self.canary.iterdir()}


def _as(lab: Lab, token: str) -> list[str]:
    """kubectl's arguments to act with `token` alone (no client certificate of the admin's)."""
    admin = yaml.safe_load(Path(lab.kubeconfig).read_text())
    server = admin["clusters"][0]["cluster"]["server"]
    return ["--kubeconfig", "/dev/null", "--server", server,
            "--certificate-authority", str(PKI / "ca.crt"), "--token", token]


def _helper_kubeconfig(lab: Lab, namespace: str, name: str, path: Path) -> str:
    """A kubeconfig for a new ServiceAccount bound (cluster-wide) to nothing but the rules of
    the shipped cedana-helper ClusterRole (deploy/base/rbac.yaml), under a name of this test's
    own: other tests install and uninstall the shipped one."""
    role = next(o for o in yaml.safe_load_all((REPO / "deploy/base/rbac.yaml").read_text())
                if o and o["kind"] == "ClusterRole" and o["metadata"]["name"] == "cedana-helper")
    role["metadata"] = {"name": f"{namespace}-{name}"}
    lab.kubectl("apply", "-f", "-", input=json.dumps(role))
    lab.kubectl("-n", namespace, "create", "serviceaccount", name)
    lab.kubectl("create", "clusterrolebinding", f"{namespace}-{name}",
                f"--clusterrole={namespace}-{name}", f"--serviceaccount={namespace}:{name}")
    token = lab.kubectl("-n", namespace, "create", "token", name, "--duration=2h").stdout.strip()
    admin = yaml.safe_load(Path(lab.kubeconfig).read_text())
    cluster = admin["clusters"][0]["cluster"]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "helper",
        "clusters": [{"name": "lab", "cluster": cluster}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": "helper", "context": {"cluster": "lab", "user": name}}]}))
    path.chmod(0o600)
    return f"system:serviceaccount:{namespace}:{name}"


def _docker_config(path: Path, lab: Lab, hosts: list[str]) -> None:
    auth = base64.b64encode(f"{lab.registry_user}:{lab.registry_password}".encode()).decode()
    path.write_text(json.dumps({"auths": {h: {"auth": auth} for h in hosts}}))
    path.chmod(0o600)


@pytest.fixture(scope="module")
def installed(lab: Lab) -> Iterator[None]:
    """The cedana.io API, the users' roles and the helper DaemonSet, as `kubectl cedana install`
    makes them, for the whole module: no other test uninstalls them meanwhile."""
    with helper_daemonset_lock():
        install_helpers(lab, "--registry-prefix", f"{lab.registry}/rootfs/{{namespace}}")
        yield


@pytest.fixture(scope="module")
def world(lab: Lab, installed: None) -> Iterator[World]:
    tag = uuid.uuid4().hex[:6]
    home = LAB_DIR / "test-helpers" / f"security-{tag}"
    home.mkdir(parents=True)
    cleanups: list[Callable[[], None]] = []
    started: list[HelperProcess] = []
    second: SecondRegistry | None = None
    a, b = create_namespace(lab, "sec-tenant-a"), create_namespace(lab, "sec-victim-b")
    try:
        token = service_account_token(lab, a, "tenant", "cedana-checkpointer")
        owner_b = service_account_token(lab, b, "owner", "cedana-checkpointer")
        second = _start_second_registry(lab, home / "second")
        registry = Registry(lab.registry, (lab.registry_user, lab.registry_password), lab.ca_cert)
        # the node's credentials reach both registries
        certs = home / "certs.d" / second.registry.host
        certs.mkdir(parents=True)
        shutil.copy(lab.ca_cert, certs / "ca.crt")
        _docker_config(home / "docker.json", lab, [lab.registry, second.registry.host])
        helper_user = _helper_kubeconfig(lab, a, "sec-helper", home / "helper.kubeconfig")
        checkpoints = f"{lab.registry}/shared-{tag}/checkpoints"
        sec = start_helper(f"security-{tag}", home / "checkpoints", extra_args=[
            "--authorization", "kubernetes", "--kubeconfig", str(home / "helper.kubeconfig"),
            "--docker-config", str(home / "docker.json"),
            "--certs-dir", "/etc/containerd/certs.d", "--certs-dir", str(home / "certs.d"),
            "--checkpoint-repository", checkpoints,
            # each namespace its own rootfs repository, on both registries; and one shared
            # project on the lab's registry that also holds the checkpoint repository
            "--registry-prefix", f"{lab.registry}/rootfs/{{namespace}}",
            "--registry-prefix", f"{second.registry.host}/open/{{namespace}}",
            "--registry-prefix", f"{lab.registry}/shared-{tag}",
            "--max-layer-bytes", str(MAX_LAYER_BYTES)])
        started.append(sec)
        peer = start_helper(f"security-peer-{tag}", home / "peer", extra_args=[
            "--checkpoint-repository", checkpoints, "--kubeconfig", str(KUBECONFIG)])
        started.append(peer)
        rogue_key = home / "rogue.key"
        rogue_key.write_bytes(os.urandom(32))
        rogue_key.chmod(0o600)
        rogue = start_helper(f"security-rogue-{tag}", home / "rogue", extra_args=[
            "--checkpoint-repository", checkpoints, "--kubeconfig", str(KUBECONFIG),
            "--signing-key", str(rogue_key)])
        started.append(rogue)

        canary = Path(f"/tmp/cedana-security-{tag}")
        canary.mkdir()
        (canary / "canary").write_bytes(b"host bytes\n")
        cleanups.append(lambda: shutil.rmtree(canary, ignore_errors=True))

        # the victim's pods in B, the tenant's in A
        lab.apply([counter_pod("victim", interval_ms=200),
                   pod_manifest("victim-writer", ["/bin/sh", "-c",
                                                  "echo b-secret > /data/b.txt; "
                                                  "while true; do sleep 1; done"])], b)
        lab.apply(pod_manifest("tenant", ["/bin/sh", "-c", "echo mine > /data/a.txt; "
                                                           "while true; do sleep 1; done"]), a)
        for ns, pod in ((b, "victim"), (b, "victim-writer"), (a, "tenant")):
            lab.wait_pod_running(ns, pod)
        lab.wait_log(b, "victim", r"count=\d")
        world = World(lab, a, b, token, owner_b, sec, helper_user, peer, rogue, registry,
                      second, checkpoints, canary, "", cleanups)
        # the tenant's legitimate rootfs image: the base of the crafted ones
        legit = f"{lab.registry}/rootfs/{a}:legit"
        made = world.call("POST", "/checkpoint/rootfs", {
            "container_name": "main", "sandbox_name": "tenant", "namespace": a,
            "address": CONTAINERD_SOCK, "image_ref": legit})
        assert made.status_code == 200, made.text
        world.legit = legit
        yield world
    finally:
        for helper in started:
            stop_helper(helper)
        if second is not None and second.proc.poll() is None:
            os.killpg(second.proc.pid, signal.SIGTERM)
            second.proc.wait(10)
        for cleanup in cleanups:
            cleanup()
        lab.kubectl("delete", "clusterrolebinding", f"{a}-sec-helper", check=False)
        lab.kubectl("delete", "clusterrole", f"{a}-sec-helper", check=False)
        for ns in (a, b):
            delete_namespace(lab, ns)
        shutil.rmtree(home, ignore_errors=True)


def _target(world: World, name: str, command: str | None = None) -> str:
    """A sleeping pod of the workload image in A (a placeholder, a rootfs target)."""
    manifest = sleeper_pod(name) if command is None else \
        pod_manifest(name, ["/bin/sh", "-c", command])
    world.lab.apply(manifest, world.a)
    world.lab.wait_pod_running(world.a, name)
    return name


def _crafted(world: World, name: str, layer: tuple[bytes, str]) -> str:
    """The tenant's legit image with its last layer replaced by `layer`, pushed to A's own
    repository (where the tenant may push): what a tenant controls completely."""
    registry, repo = world.registry, world.a_repo
    manifest = registry.manifest(repo, "legit")
    config = json.loads(registry.blob(repo, manifest["config"]["digest"]))
    blob, diff_id = layer
    config["rootfs"]["diff_ids"][-1] = diff_id
    config_bytes = json.dumps(config).encode()
    manifest["config"] = {**manifest["config"], "digest": registry.push_blob(repo, config_bytes),
                          "size": len(config_bytes)}
    manifest["layers"][-1] = {"mediaType": GZIP_LAYER, "digest": registry.push_blob(repo, blob),
                              "size": len(blob)}
    registry.push_manifest(repo, name, manifest)
    return f"{world.lab.registry}/{repo}:{name}"


def _apply(world: World, target: str, image_ref: str, token: str | None = "") -> requests.Response:
    return world.call("POST", "/restore/rootfs", {
        "container_name": "main", "sandbox_name": target, "namespace": world.a,
        "address": CONTAINERD_SOCK, "image_ref": image_ref}, token=token)


def _exec(world: World, namespace: str, pod: str, script: str) -> str:
    return world.lab.kubectl("-n", namespace, "exec", pod, "--", "/bin/sh", "-c",
                             script).stdout


def _victim_untouched(world: World, since_count: int) -> None:
    """B's counter never stopped or restarted, and goes on counting."""
    lab = world.lab
    status = lab.pod(world.b, "victim")["status"]["containerStatuses"][0]
    assert status["restartCount"] == 0 and "running" in status["state"], status
    lab.wait_log(world.b, "victim", rf"count={since_count + 3}\b")


def _last_count(world: World) -> int:
    return int(world.lab.wait_log(world.b, "victim", r"count=(\d+)").group(1))


def _code(answer: requests.Response) -> tuple[int, str]:
    try:
        return answer.status_code, str(answer.json().get("code"))
    except ValueError:
        return answer.status_code, answer.text[:200]


# -- 1. caller-described containers -------------------------------------------------------------
FORGER = r"""
set -e
mkdir -p /state/forged
cat > /state/forged/state.json <<EOF
{"id": "forged", "init_process_pid": 1, "init_process_start": 1, "status": "running",
 "created": "2026-01-01T00:00:00Z", "config": {"rootfs": "/proc/1/root/etc",
 "labels": ["bundle=/state/forged"]}}
EOF
cat > /state/forged/config.json <<EOF
{"ociVersion": "1.0.0", "root": {"path": "/proc/1/root/etc"}, "process": {"args": ["sh"]},
 "annotations": {"io.kubernetes.cri.container-type": "container",
   "io.kubernetes.cri.container-name": "main",
   "io.kubernetes.cri.sandbox-name": "tenant",
   "io.kubernetes.cri.sandbox-namespace": "NAMESPACE",
   "io.kubernetes.cri.image-name": "docker.io/cedana-lab/workload:1"}}
EOF
while true; do sleep 1; done
"""


def test_a_forged_runtime_root_in_an_emptydir_is_refused(world: World) -> None:
    """The tenant writes a runc state naming pid 1 and the host's /etc into its emptyDir and
    names that directory (as the node sees it) as `root`: every route refuses it (400), the
    host's /etc and the victim are untouched."""
    lab, a = world.lab, world.a
    manifest = pod_manifest("forger", ["/bin/sh", "-c", FORGER.replace("NAMESPACE", a)])
    manifest["spec"]["volumes"] = [{"name": "state", "emptyDir": {}}]
    manifest["spec"]["containers"][0]["volumeMounts"] = [{"name": "state",
                                                         "mountPath": "/state"}]
    lab.apply(manifest, a)
    pod = lab.wait_pod_running(a, "forger")
    forged = Path(f"/var/lib/kubelet/pods/{pod['metadata']['uid']}/volumes/"
                  "kubernetes.io~empty-dir/state")
    end = time.monotonic() + 30
    while not (forged / "forged" / "config.json").exists():
        assert time.monotonic() < end, f"the forged state is not at {forged} on the node"
        time.sleep(0.3)
    etc_before = sorted(os.listdir("/etc"))
    count = _last_count(world)
    # the same directory by other names: climbing out of an allowed root, a /proc magic link
    for root in (str(forged), f"{RUNC_ROOT}/../../../..{forged}", f"/proc/self/root{forged}",
                 "/"):
        body = {"container_name": "main", "sandbox_name": "tenant", "namespace": a,
                "root": root}
        answers = {
            "list": world.call("GET", f"/list/{a}", {"root": root}),
            "checkpoint": world.call("POST", "/checkpoint", {"checkpoint_data": body,
                                                             "leave_running": True}),
            "rootfs checkpoint": world.call("POST", "/checkpoint/rootfs", {
                **body, "address": CONTAINERD_SOCK,
                "image_ref": f"{lab.registry}/rootfs/{a}:forged"}),
            "rootfs restore": world.call("POST", "/restore/rootfs", {
                **body, "address": CONTAINERD_SOCK, "image_ref": world.legit}),
            "restore": world.call("POST", "/restore", {"checkpoint_data": {
                **body, "checkpoint_path": "/tmp/whatever"}}),
        }
        for route, answer in answers.items():
            assert _code(answer) == (400, "invalid_request"), (route, root, answer.text)
            assert "is not a runtime root of this helper" in answer.json()["message"]
    assert sorted(os.listdir("/etc")) == etc_before
    assert not Path("/etc/data").exists()
    assert "forged" not in world.registry.tags(world.a_repo)
    _victim_untouched(world, count)


# -- 2. rootfs restore aimed at host paths -------------------------------------------------------
def test_rootfs_layers_cannot_write_outside_the_container(world: World) -> None:
    """Crafted layers in the tenant's own repository, each with one way out of the container's
    root filesystem: refused, and the host directory they aim at keeps its bytes."""
    canary = str(world.canary)
    up = "../" * 12
    ways_out: dict[str, list[Entry]] = {
        "absolute symlinked directory": [_dir("data/"), _link("data/esc", canary),
                                         _file("data/esc/owned", b"pwned")],
        "relative symlink climbing out": [_dir("data/"), _link("data/up", up + canary[1:]),
                                          _file("data/up/owned", b"pwned")],
        "symlink through /proc's magic link": [
            _dir("data/"), _link("data/proc", f"/proc/1/root{canary}"),
            _file("data/proc/owned", b"pwned")],
        "member named with ..": [_file(f"data/{up}{canary[1:]}/owned", b"pwned")],
        "absolute member name": [_file(f"{canary}/owned", b"pwned")],
        "hardlink to a host file": [_dir("data/"),
                                    _link("data/hard", f"{up}{canary[1:]}/canary",
                                          tarfile.LNKTYPE),
                                    _file("data/hard", b"pwned")],
        "a file over a symlink to a host file": [_dir("data/"),
                                                 _link("data/c", f"{canary}/canary"),
                                                 _file("data/c", b"pwned")],
        "a hardlink of a symlink to a host file": [_dir("data/"),
                                                   _link("data/s", f"{canary}/canary"),
                                                   _link("data/h", "data/s", tarfile.LNKTYPE),
                                                   _file("data/h", b"pwned")],
    }
    #: replacing a symlink by a file is fine: the name is the container's, the file its own
    harmless = {"a file over a symlink to a host file", "a hardlink of a symlink to a host file"}
    target = _target(world, "target-escape")
    before = world.canary_state()
    for what, entries in ways_out.items():
        ref = _crafted(world, "escape-" + uuid.uuid4().hex[:6], _layer(entries))
        answer = _apply(world, target, ref)
        assert world.canary_state() == before, what
        if what in harmless:
            assert answer.status_code == 200, (what, answer.text)
            name = "/data/c" if "file over" in what else "/data/h"
            assert _exec(world, world.a, target, f"cat {name}") == "pwned", what
            continue
        assert _code(answer) == (500, "restore_failed"), (what, answer.text)
        assert "outside" in answer.json()["message"] or \
            "absolute" in answer.json()["message"] or ".." in answer.json()["message"], \
            (what, answer.text)
    assert not os.path.exists(f"{canary}/owned")
    assert (world.canary / "canary").read_bytes() == b"host bytes\n"


RACER = ("while true; do rm -rf /data/race; ln -s CANARY /data/race; rm -f /data/race; "
         "mkdir -p /data/race; done")


def test_a_container_racing_symlinks_cannot_redirect_the_writes(world: World) -> None:
    """While the layer is applied, the target swaps /data/race between a directory and a symlink
    to a host directory as fast as it can: whatever the outcome, nothing lands on the host."""
    target = _target(world, "racer", RACER.replace("CANARY", str(world.canary)))
    entries: list[Entry] = [_dir("data/"), _dir("data/race/")]
    entries += [_file(f"data/race/f-{i}", b"raced") for i in range(3000)]
    ref = _crafted(world, "race", _layer(entries))
    before = world.canary_state()
    outcomes = []
    for _ in range(3):
        answer = _apply(world, target, ref)
        outcomes.append(_code(answer))
        assert answer.status_code in (200, 500), answer.text
        assert world.canary_state() == before
    assert not [n for n in os.listdir(world.canary) if n.startswith("f-")]
    print("race outcomes:", outcomes)


def test_setuid_bits_are_dropped_and_device_nodes_refused(world: World) -> None:
    target = _target(world, "target-bits")
    ref = _crafted(world, "bits", _layer([
        _dir("data/"), _file("data/suid", b"#!/bin/sh\nid\n", 0o4755),
        _file("data/sgid", b"#!/bin/sh\nid\n", 0o2755), _dir("data/shared/", 0o2775)]))
    answer = _apply(world, target, ref)
    assert answer.status_code == 200, answer.text
    modes = _exec(world, world.a, target,
                  "stat -c '%n %a' /data/suid /data/sgid /data/shared").split("\n")
    assert modes[:3] == ["/data/suid 755", "/data/sgid 755", "/data/shared 2775"], modes

    ref = _crafted(world, "device", _layer([
        _dir("data/"), _file("data/before-device", b"first"), _device("data/mem", 1, 1)]))
    answer = _apply(world, target, ref)
    assert _code(answer) == (422, "content_refused"), answer.text
    assert answer.json().get("member") == "data/mem"
    # refused before anything of it was written
    assert _exec(world, world.a, target,
                 "ls /data/before-device /data/mem 2>&1 || true").count("No such file") == 2


def test_a_decompression_bomb_is_refused_with_nothing_written(world: World) -> None:
    target = _target(world, "target-bomb")
    bomb = _bomb(4 * MAX_LAYER_BYTES)
    assert len(bomb[0]) < MAX_LAYER_BYTES // 64  # small on the wire
    ref = _crafted(world, "bomb", bomb)
    # what the helper and the container hold, not the whole disk (other tests write there)
    rootfs_before = _rootfs_kib(world, target)
    helper_before = _tree_bytes(world.helper.checkpoint_dir)
    answer = _apply(world, target, ref)
    assert _code(answer) == (422, "content_too_large"), answer.text
    assert answer.json()["limit_bytes"] == MAX_LAYER_BYTES
    assert "No such file" in _exec(world, world.a, target, "ls /data/zeros 2>&1 || true")
    # nothing left of it in the helper's directory (the download and any unpacking)
    leftovers = [p for p in world.helper.checkpoint_dir.rglob("*")
                 if p.is_file() and p.stat().st_size > 1 << 20]
    assert leftovers == []
    assert _tree_bytes(world.helper.checkpoint_dir) < helper_before + (8 << 20)
    # and nothing of it in the container's root filesystem either
    assert _rootfs_kib(world, target) < rootfs_before + 8 * 1024


def _rootfs_kib(world: World, target: str) -> int:
    """KiB the target container's root filesystem holds, as it sees it."""
    return int(_exec(world, world.a, target, "du -sxk / | cut -f1").strip())


def _tree_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


# -- another namespace's containers --------------------------------------------------------------
def test_another_namespaces_container_is_out_of_reach(world: World) -> None:
    lab, a, b = world.lab, world.a, world.b
    count = _last_count(world)
    attempts = {
        # named in B: the tenant has no rights there
        "rootfs checkpoint in B": ("POST", "/checkpoint/rootfs", {
            "container_name": "main", "sandbox_name": "victim-writer", "namespace": b,
            "address": CONTAINERD_SOCK, "image_ref": f"{lab.registry}/rootfs/{b}:stolen"}),
        "rootfs checkpoint in B to A's repository": ("POST", "/checkpoint/rootfs", {
            "container_name": "main", "sandbox_name": "victim-writer", "namespace": b,
            "address": CONTAINERD_SOCK, "image_ref": f"{lab.registry}/rootfs/{a}:stolen"}),
        "checkpoint in B": ("POST", "/checkpoint", {"checkpoint_data": {
            "container_name": "main", "sandbox_name": "victim", "namespace": b,
            "root": RUNC_ROOT}, "leave_running": True}),
        "list B": ("GET", f"/list/{b}", None),
        "rootfs restore into B": ("POST", "/restore/rootfs", {
            "container_name": "main", "sandbox_name": "victim", "namespace": b,
            "address": CONTAINERD_SOCK, "image_ref": world.legit}),
    }
    for what, (method, route, body) in attempts.items():
        answer = world.call(method, route, body)
        assert _code(answer) == (403, "forbidden"), (what, answer.text)
        assert answer.json()["user"] == f"system:serviceaccount:{a}:tenant"
    # named as if in A: no such pod there
    answer = world.call("POST", "/checkpoint/rootfs", {
        "container_name": "main", "sandbox_name": "victim-writer", "namespace": a,
        "address": CONTAINERD_SOCK, "image_ref": f"{lab.registry}/rootfs/{a}:stolen"})
    assert _code(answer) == (404, "container_not_found"), answer.text
    assert world.registry.tags(f"rootfs/{b}") == []
    assert "stolen" not in world.registry.tags(world.a_repo)
    _victim_untouched(world, count)
    # and through the resources: RBAC refuses a Checkpoint in B
    denied = run(["kubectl", *_as(lab, world.token), "-n", b, "create", "-f", "-"],
                 check=False, input=json.dumps({
                             "apiVersion": "cedana.io/v1alpha1", "kind": "Checkpoint",
                             "metadata": {"name": "stolen"},
                             "spec": {"podName": "victim", "container": "main"}}))
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower(), denied.stderr


# -- 3. node credentials for any image -------------------------------------------------------------
def test_node_credentials_go_only_where_the_administrator_allowed(world: World) -> None:
    """The node holds credentials for a second registry on the loopback; the tenant aims the
    helper at it, at a private image, at another tenant's repository and at the checkpoint
    repository: 403 naming the rule, and not one request reaches the second registry for them.
    The allowed prefix on the same registry works (the refusals are the rules, not the setup)."""
    lab, a, b = world.lab, world.a, world.b
    second = world.second.registry.host
    # private images the node can pull: one on each registry
    world.second.registry.copy(world.registry, world.a_repo, "legit", "private/secret", "1")
    world.registry.copy(world.registry, world.a_repo, "legit", f"private-{a}/secret", "1")
    target = _target(world, "target-creds")
    mark = world.second.log_size()
    count = _last_count(world)
    checkpoint_tags = world.registry.tags(world.checkpoints.split("/", 1)[1])
    pushes = {  # /checkpoint/rootfs image_ref
        f"{second}/private/x:1": "private repository of the second registry",
        f"{second}/open/{b}:x": "B's prefix on the second registry",
        f"{second}/open/{a}-evil:x": "a name that only starts like A's prefix",
        f"{lab.registry}/private-{a}/secret:1": "overwrite a private image",
        f"{world.checkpoints}:{uuid.uuid4()}": "the checkpoint repository",
        f"{lab.registry}/rootfs/{b}:planted": "B's rootfs repository",
    }
    for ref, what in pushes.items():
        answer = world.call("POST", "/checkpoint/rootfs", {
            "container_name": "main", "sandbox_name": "tenant", "namespace": a,
            "address": CONTAINERD_SOCK, "image_ref": ref})
        assert _code(answer) == (403, "registry_not_allowed"), (what, answer.text)
        assert answer.json()["image"] == ref
    pulls = [f"{second}/private/secret:1", f"{lab.registry}/private-{a}/secret:1",
             f"{lab.registry}/rootfs/{b}:anything"]
    for ref in pulls:
        answer = _apply(world, target, ref)
        assert _code(answer) == (403, "registry_not_allowed"), (ref, answer.text)
        crio = world.call("POST", "/checkpoint/rootfs/crio", {
            "container_name": "main", "sandbox_name": "tenant", "namespace": a,
            "image_ref": ref, "new_image_ref": f"{lab.registry}/rootfs/{a}:crio"})
        assert _code(crio) == (403, "registry_not_allowed"), (ref, crio.text)
    assert world.second.requests_since(mark) == []
    assert world.registry.tags(f"rootfs/{b}") == []
    assert world.registry.tags(world.checkpoints.split("/", 1)[1]) == checkpoint_tags
    assert world.registry.manifest(f"private-{a}/secret", "1") == \
        world.registry.manifest(world.a_repo, "legit")
    assert "a.txt" not in _exec(world, a, target, "ls /data 2>&1 || true")
    _victim_untouched(world, count)

    # the control: A's prefix on the second registry is allowed, and reached
    answer = world.call("POST", "/checkpoint/rootfs", {
        "container_name": "main", "sandbox_name": "tenant", "namespace": a,
        "address": CONTAINERD_SOCK, "image_ref": f"{second}/open/{a}:ok"})
    assert answer.status_code == 200, answer.text
    assert any(f"/v2/open/{a}/" in line for line in world.second.requests_since(mark))
    assert world.second.registry.tags(f"open/{a}") == ["ok"]


# -- 4. forged checkpoints ------------------------------------------------------------------------
def _restore(world: World, target: str, checkpoint_id: str) -> requests.Response:
    return world.call("POST", "/restore", {"checkpoint_data": {
        "container_name": "main", "sandbox_name": target, "namespace": world.a,
        "root": RUNC_ROOT, "checkpoint_id": checkpoint_id}})


def _placeholder_intact(world: World, target: str) -> None:
    lab = world.lab
    assert "counter" not in _exec(world, world.a, target, "ps -o comm")
    assert lab.logs(world.a, target) == ""
    status = lab.pod(world.a, target)["status"]["containerStatuses"][0]
    assert status["restartCount"] == 0 and "running" in status["state"]


def test_forged_checkpoints_in_the_registry_are_refused_before_criu(world: World) -> None:
    lab, a, b = world.lab, world.a, world.b
    repo = world.checkpoints.split("/", 1)[1]
    lab.apply(counter_pod("counter", interval_ms=200), a)
    lab.wait_pod_running(a, "counter")
    target = _target(world, "placeholder")
    # genuine checkpoints, made by helpers of the cluster: one of A's pod, one of B's
    own = world.peer.checkpoint(a, "counter", leave_running=True, compression="none")
    assert own.status_code == 200, own.text
    theirs = world.peer.checkpoint(b, "victim", leave_running=True, compression="none")
    assert theirs.status_code == 200, theirs.text
    own_id, their_id = own.json()["checkpoint_id"], theirs.json()["checkpoint_id"]
    # one made by a helper with a key of its own (someone who can push to the repository)
    rogue = world.rogue.checkpoint(a, "counter", leave_running=True, compression="none")
    assert rogue.status_code == 200, rogue.text
    rogue_id = rogue.json()["checkpoint_id"]

    # B's checkpoint restored into A: needs the right to read B's checkpoints
    answer = _restore(world, target, their_id)
    assert _code(answer) == (403, "forbidden"), answer.text
    assert answer.json()["permission"] == f"get checkpoints.cedana.io in namespace {b}"

    # B's checkpoint re-tagged and re-annotated as A's, under a new id
    retag = str(uuid.uuid4())
    image = world.registry.manifest(repo, their_id)
    image["annotations"] = {**image["annotations"], "io.cedana.checkpoint.id": retag,
                            "io.cedana.checkpoint.namespace": a}
    world.registry.push_manifest(repo, retag, image)

    # A's own checkpoint with its layer swapped (one byte changed), under its own tag
    image = world.registry.manifest(repo, own_id)
    layer = bytearray(world.registry.blob(repo, image["layers"][0]["digest"]))
    layer[len(layer) // 2] ^= 0xFF
    image["layers"][0] = {**image["layers"][0],
                          "digest": world.registry.push_blob(repo, bytes(layer))}
    world.registry.push_manifest(repo, own_id, image)

    for checkpoint_id, what in ((retag, "re-tagged"), (own_id, "layer swapped"),
                                (rogue_id, "signed with another key")):
        answer = _restore(world, target, checkpoint_id)
        assert _code(answer) == (422, "checkpoint_untrusted"), (what, answer.text)
        _placeholder_intact(world, target)
        assert not (world.helper.checkpoint_dir / checkpoint_id).exists()
    assert [p.name for p in world.helper.checkpoint_dir.iterdir()
            if not p.name.startswith(".")] == []

    # the control: a genuine checkpoint of A restores into the same placeholder
    genuine = world.peer.checkpoint(a, "counter", leave_running=True, compression="none")
    assert genuine.status_code == 200, genuine.text
    answer = _restore(world, target, genuine.json()["checkpoint_id"])
    assert answer.status_code == 200, answer.text
    lab.wait_log(a, target, r"count=\d+")


# -- 5. tokens: replay, other audiences, the port's reach -------------------------------------------
@pytest.fixture
def daemonset(lab: Lab, installed: None) -> dict[str, str]:
    """The helper DaemonSet's pod per node."""
    pods = json.loads(lab.kubectl("-n", HELPER_NS, "get", "pods", "-l",
                                  "app.kubernetes.io/name=cedana-helper", "-o",
                                  "json").stdout)["items"]
    return {p["spec"]["nodeName"]: p["metadata"]["name"] for p in pods
            if not p["metadata"].get("deletionTimestamp")}


def test_no_pod_reaches_a_helper_port(world: World, daemonset: dict[str, str]) -> None:
    """From a pod: the node's addresses answer on the kubelet's port, not on the helper's. Even
    the API server's pod proxy (which dials the pod's IP) cannot reach it."""
    lab = world.lab
    nodes = json.loads(lab.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    addresses = [a["address"] for n in nodes for a in n["status"]["addresses"]
                 if a["type"] == "InternalIP"]
    assert len(addresses) == len(lab.node_names())
    prober = _target(world, "prober")
    for address in addresses:
        probe = _exec(world, world.a, prober,
                      f"nc -w 3 {address} 10250 </dev/null; echo kubelet=$?; "
                      f"nc -w 3 {address} 1324 </dev/null; echo helper=$?; "
                      f"wget -q -T 3 -O - http://{address}:1324/healthz 2>&1; echo wget=$?")
        assert "kubelet=0" in probe, probe  # the node is reachable from the pod
        assert "helper=1" in probe and "wget=1" in probe, probe
    for pod in daemonset.values():
        proxied = lab.kubectl("get", "--raw",
                              f"/api/v1/namespaces/{HELPER_NS}/pods/{pod}:1324/proxy/healthz",
                              check=False)
        assert proxied.returncode != 0, proxied.stdout
        assert "refused" in proxied.stderr or "503" in proxied.stderr or \
            "ServiceUnavailable" in proxied.stderr, proxied.stderr


def test_a_captured_token_is_worth_only_its_owners_rights(world: World,
                                                         daemonset: dict[str, str]) -> None:
    """The tenant's token replayed on node 2's helper, and on other routes: it is the tenant's
    identity there too, so it may do what the tenant may (list A), nothing else. A token made
    for another audience, and one of a view-only user on a route that acts, are refused."""
    lab, a, b = world.lab, world.a, world.b
    node2 = daemonset[lab.node2_name]
    count = _last_count(world)
    other_audience = lab.kubectl("-n", a, "create", "token", "tenant", "--duration=1h",
                                 "--audience", "https://vault.example").stdout.strip()
    viewer = service_account_token(lab, a, "viewer", "view")
    with port_forward(lab, HELPER_NS, node2, 1324) as url:
        def call(method: str, route: str, body: Any, token: str) -> requests.Response:
            return requests.request(method, url + route, json=body, timeout=120,
                                    headers={"Authorization": f"Bearer {token}"})
        assert call("GET", f"/list/{a}", None, world.token).status_code == 200
        for method, route, body in (
                ("GET", f"/list/{b}", None),
                ("POST", "/checkpoint", {"checkpoint_data": {
                    "container_name": "main", "sandbox_name": "victim", "namespace": b,
                    "root": RUNC_ROOT}, "leave_running": True}),
                ("POST", "/checkpoint/rootfs", {
                    "container_name": "main", "sandbox_name": "victim-writer", "namespace": b,
                    "image_ref": f"{lab.registry}/rootfs/{b}:x"}),
                ("POST", "/restore/rootfs", {
                    "container_name": "main", "sandbox_name": "victim", "namespace": b,
                    "image_ref": f"{lab.registry}/rootfs/{b}:x"})):
            answer = call(method, route, body, world.token)
            assert answer.status_code == 403, (route, answer.text)
        # A's pod is on node 1: node 2's helper does not act on it
        answer = call("POST", "/checkpoint", {"checkpoint_data": {
            "container_name": "main", "sandbox_name": "tenant", "namespace": a,
            "root": RUNC_ROOT}, "leave_running": True}, world.token)
        assert _code(answer) == (404, "container_not_found"), answer.text
        answer = call("GET", f"/list/{a}", None, other_audience)
        assert _code(answer) == (401, "unauthenticated"), answer.text
        answer = call("POST", "/checkpoint/rootfs", {
            "container_name": "main", "sandbox_name": "tenant", "namespace": a,
            "image_ref": f"{lab.registry}/rootfs/{a}:viewer"}, viewer)
        assert _code(answer) == (403, "forbidden"), answer.text
    _victim_untouched(world, count)


# -- 6. floods -------------------------------------------------------------------------------------
def _reviews_by(user: str) -> int:
    """TokenReviews the API server's audit log records for `user`."""
    count = 0
    with open(AUDIT_LOG, encoding="utf-8", errors="replace") as log:
        for line in log:
            if '"tokenreviews"' not in line or user not in line:
                continue
            event = json.loads(line)
            if event.get("user", {}).get("username") == user and \
                    event.get("objectRef", {}).get("resource") == "tokenreviews" and \
                    event.get("stage") == "ResponseComplete":
                count += 1
    return count


def _flood(world: World, tokens: list[str | None]) -> list[int]:
    body = {"checkpoint_data": {"container_name": "main", "sandbox_name": "tenant",
                                "namespace": world.a, "root": RUNC_ROOT}, "leave_running": True}

    def one(token: str | None) -> int:
        return world.call("POST", "/checkpoint", body, token=token, timeout=60).status_code

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(one, tokens))


def test_floods_cost_the_api_server_little(world: World) -> None:
    """Without a token: 401 before any API call (the audit log shows no TokenReview by the
    helper). With made-up tokens: TokenReviews at most at the rate limit, the rest 429. One
    refused token repeated: asked about once. A known caller is not locked out meanwhile."""
    user = world.helper_user
    assert world.call("GET", f"/list/{world.a}").status_code == 200  # the tenant, known now
    time.sleep(1)
    before = _reviews_by(user)
    statuses = _flood(world, [None] * 400)
    assert set(statuses) == {401}
    time.sleep(2)
    assert _reviews_by(user) == before

    started = time.monotonic()
    made_up = ["eyJhbGciOiJSUzI1NiJ9." + secrets.token_urlsafe(200) + ".x" for _ in range(400)]
    statuses = _flood(world, made_up)
    elapsed = time.monotonic() - started
    assert set(statuses) <= {401, 429} and statuses.count(429) > 0, statuses
    time.sleep(2)
    asked = _reviews_by(user) - before
    assert asked == statuses.count(401)
    assert asked <= 120 + 2 * elapsed + 2, (asked, elapsed)

    # the tenant's known token still works, its cache long over
    time.sleep(11)
    assert world.call("GET", f"/list/{world.a}").status_code == 200

    before = _reviews_by(user)
    repeated = "eyJhbGciOiJSUzI1NiJ9." + secrets.token_urlsafe(200) + ".y"
    assert world.call("GET", f"/list/{world.a}", token=repeated).status_code == 401
    statuses = _flood(world, [repeated] * 100)
    assert set(statuses) == {401}
    time.sleep(2)
    assert _reviews_by(user) - before == 1


# -- 7. attribution --------------------------------------------------------------------------------
def test_every_attempt_is_attributed(world: World) -> None:
    """The helper's log names the caller of each request (user, uid, groups), the namespace and
    pod, the status and the error; the Events name the user. Runs after the attacks above."""
    tenant = f"system:serviceaccount:{world.a}:tenant"
    lines = [json.loads(line) for line in world.helper.log_text().splitlines()
             if line.startswith("{")]
    served = [e for e in lines if e.get("path") and e.get("user") == tenant]
    assert served, "no request of the tenant in the helper's log"
    assert all(e.get("uid") and f"system:serviceaccounts:{world.a}" in e.get("groups", [])
               for e in served)
    assert any(e["path"] == "/checkpoint/rootfs" and e["status"] == 200
               and e.get("namespace") == world.a and e.get("pod") == "tenant" for e in served)
    assert any(e["status"] == 403 and e.get("error_code") == "forbidden"
               and e.get("namespace") == world.b for e in served), served[-5:]
    assert any(e["status"] == 403 and e.get("error_code") == "registry_not_allowed"
               for e in served)
    events = json.loads(world.lab.kubectl("-n", world.a, "get", "events", "-o", "json").stdout)
    assert any(f"requested by {tenant}" in (e.get("message") or "") for e in events["items"]), \
        [e.get("message") for e in events["items"]][-10:]
