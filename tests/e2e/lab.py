"""Handles on the real lab cluster for end-to-end tests: kubectl, the API, pods, images."""
from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[2]
LAB_DIR = Path(os.environ.get("LAB_DIR", "/var/lib/kubectl-cedana-lab"))
KUBECONFIG = LAB_DIR / "admin.kubeconfig"
PKI = LAB_DIR / "pki"
REGISTRY = "127.0.0.1:5000"
REGISTRY_USER = "cedana"
WORKLOAD_IMAGE = "docker.io/cedana-lab/workload:1"
NODE_NAME = "cedana-lab-node1"
# The second node (hack/lab-node2.sh): tainted, so only pods that ask for it run there (nodeName,
# or a nodeSelector with a toleration of NODE2_TAINT_KEY).
NODE2_NAME = "cedana-lab-node2"
NODE2_IP = "10.88.0.2"
NODE2_POD_SUBNET = "10.88.2.0/24"
NODE2_TAINT_KEY = "cedana-lab/second-node"
# The CRI-O node (hack/lab-node3.sh): CRI-O with crun by default and runc for pods of the
# RuntimeClass CRIO_RUNC_CLASS; tainted like node 2.
NODE3_NAME = "cedana-lab-crio"
NODE3_IP = "10.88.0.3"
NODE3_POD_SUBNET = "10.88.3.0/24"
NODE3_TAINT_KEY = "cedana-lab/crio-node"
NODE3_RUN_ON_HOST = "/run/kubectl-cedana-lab/node3"  # its /run/crun, /run/runc, ... below
CRIO_RUNC_CLASS = "cedana-lab-runc"
RUNC_ROOT = "/run/containerd/runc/k8s.io"
CONTAINERD_SOCK = "/run/containerd/containerd.sock"
CONTAINERD_CONFIG = "/etc/containerd/config.toml"  # version 3; registry TLS in certs.d hosts.toml
KUBELET_CREDENTIALS = "/var/lib/kubelet/config.json"  # the kubelet's own pull credentials


def run(args: list[str], *, check: bool = True, timeout: float = 120,
        input: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, input=input,
                          env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({proc.returncode}): {' '.join(args)}\n"
                             f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-2000:]}")
    return proc


HELPER_DAEMONSET_LOCK = "/run/lock/kubectl-cedana-helper-daemonset.lock"


@contextmanager
def helper_daemonset_lock() -> Iterator[None]:
    """Held by tests that install or uninstall the helper DaemonSet (cedana-system), so that
    a test in another worker never sees it vanish or reappear under its feet."""
    with open(HELPER_DAEMONSET_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def install_helpers(lab: "Lab", *args: str) -> None:
    """`kubectl cedana install ARGS` with this checkout's plugin; hold helper_daemonset_lock."""
    venv_bin = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"
    env = {**lab.env(), "PATH": f"{venv_bin}:{os.environ['PATH']}"}
    installed = subprocess.run(["kubectl", "cedana", "install", *args], capture_output=True,
                               text=True, timeout=300, env=env)
    assert installed.returncode == 0, installed.stderr


def cedana(lab: "Lab", *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`kubectl cedana ARGS` with this checkout's plugin, as a user runs it."""
    venv_bin = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"
    env = {**lab.env(), "PATH": f"{venv_bin}:{os.environ['PATH']}"}
    return subprocess.run(["kubectl", "cedana", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def ensure_lab_up() -> None:
    """Bring the lab up unless it runs; a file lock keeps parallel test workers from racing."""
    LAB_DIR.mkdir(parents=True, exist_ok=True)
    with open("/run/lock/kubectl-cedana-lab.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        run([str(REPO / "hack" / "lab-up.sh")], timeout=1800)


@dataclass
class Lab:
    kubeconfig: str = str(KUBECONFIG)
    registry: str = REGISTRY
    registry_user: str = REGISTRY_USER
    node_name: str = NODE_NAME
    node2_name: str = NODE2_NAME  # the second node; see node2_toleration
    crio_node: str = NODE3_NAME  # the CRI-O node
    workload_image: str = WORKLOAD_IMAGE
    runc_root: str = RUNC_ROOT
    _core: Any = field(default=None, repr=False)

    @property
    def node2_toleration(self) -> dict[str, str]:
        """What a pod scheduled (not given nodeName) onto the second node must tolerate."""
        return {"key": NODE2_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}

    def node_names(self) -> list[str]:
        """Every node of the lab as the API lists it."""
        nodes = json.loads(self.kubectl("get", "nodes", "-o", "json").stdout)["items"]
        return sorted(n["metadata"]["name"] for n in nodes)

    @property
    def registry_password(self) -> str:
        return (PKI / "registry.password").read_text().strip()

    @property
    def ca_cert(self) -> str:
        return str(PKI / "ca.crt")

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": self.kubeconfig}

    def kubectl(self, *args: str, check: bool = True, timeout: float = 120,
                input: str | None = None) -> subprocess.CompletedProcess[str]:
        return run(["kubectl", "--kubeconfig", self.kubeconfig, *args], check=check,
                   timeout=timeout, input=input)

    @property
    def core(self) -> Any:
        if self._core is None:
            from kubernetes import client, config
            api_client = config.new_client_from_config(config_file=self.kubeconfig)
            self._core = client.CoreV1Api(api_client)
        return self._core

    def apply(self, manifest: dict[str, Any] | list[dict[str, Any]], namespace: str) -> None:
        items = manifest if isinstance(manifest, list) else [manifest]
        self.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                          "items": items}))

    def pod(self, namespace: str, name: str) -> dict[str, Any]:
        out = self.kubectl("-n", namespace, "get", "pod", name, "-o", "json").stdout
        return json.loads(out)

    def wait_pod_running(self, namespace: str, name: str, timeout: float = 120) -> dict[str, Any]:
        end = time.monotonic() + timeout
        pod: dict[str, Any] = {}
        while time.monotonic() < end:
            proc = self.kubectl("-n", namespace, "get", "pod", name, "-o", "json", check=False)
            if proc.returncode == 0:
                pod = json.loads(proc.stdout)
                statuses = pod.get("status", {}).get("containerStatuses") or []
                if pod["status"].get("phase") == "Running" and statuses and all(
                        "running" in s.get("state", {}) for s in statuses):
                    return pod
                if pod["status"].get("phase") in ("Failed", "Succeeded"):
                    break
            time.sleep(0.5)
        raise AssertionError(f"pod {namespace}/{name} not Running after {timeout}s: "
                             f"{json.dumps(pod.get('status', {}))[:1500]}")

    def logs(self, namespace: str, name: str, container: str | None = None) -> str:
        kwargs = {"container": container} if container else {}
        return str(self.core.read_namespaced_pod_log(name, namespace, **kwargs))

    def wait_log(self, namespace: str, name: str, pattern: str, timeout: float = 60,
                 container: str | None = None) -> re.Match[str]:
        end = time.monotonic() + timeout
        text = ""
        while time.monotonic() < end:
            try:
                text = self.logs(namespace, name, container)
            except Exception:  # noqa: BLE001 - the pod may not have logs yet
                text = ""
            matches = list(re.finditer(pattern, text))
            if matches:
                return matches[-1]
            time.sleep(0.5)
        raise AssertionError(f"{pattern!r} not in logs of {namespace}/{name}: {text[-1500:]}")

    def container_id(self, namespace: str, pod: str, container: str | None = None) -> str:
        statuses = self.pod(namespace, pod)["status"]["containerStatuses"]
        for s in statuses:
            if container is None or s["name"] == container:
                return str(s["containerID"]).split("://", 1)[1]
        raise AssertionError(f"no container {container} in {namespace}/{pod}")


@contextmanager
def port_forward(lab: Lab, namespace: str, pod: str, port: int) -> Iterator[str]:
    """`kubectl port-forward pod/POD LOCAL:PORT` for the block; yields http://127.0.0.1:LOCAL."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        local = s.getsockname()[1]
    proc = subprocess.Popen(["kubectl", "--kubeconfig", lab.kubeconfig, "-n", namespace,
                             "port-forward", f"pod/{pod}", f"{local}:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", local), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > end:
                    raise AssertionError(f"kubectl port-forward to {namespace}/{pod}:{port} did "
                                         f"not listen: {proc.stderr.read() if proc.stderr else ''}")
                time.sleep(0.2)
        yield f"http://127.0.0.1:{local}"
    finally:
        proc.terminate()
        proc.wait(10)


def service_account_token(lab: Lab, namespace: str, name: str,
                          cluster_role: str | None = None) -> str:
    """A token of a new ServiceAccount (TokenRequest), bound in its namespace to cluster_role."""
    lab.kubectl("-n", namespace, "create", "serviceaccount", name)
    if cluster_role:
        lab.kubectl("-n", namespace, "create", "rolebinding", f"{name}-{cluster_role}",
                    f"--clusterrole={cluster_role}", f"--serviceaccount={namespace}:{name}")
    token = lab.kubectl("-n", namespace, "create", "token", name, "--duration=1h").stdout.strip()
    assert token.count(".") == 2, f"no token for the service account {name}"
    return token


def pod_manifest(name: str, command: list[str], *, image: str = WORKLOAD_IMAGE,
                 containers: list[dict[str, Any]] | None = None,
                 pull_policy: str = "IfNotPresent", **spec: Any) -> dict[str, Any]:
    """A pod whose container(s) run `command` in the workload image."""
    if containers is None:
        containers = [{"name": "main", "image": image, "command": command,
                       "imagePullPolicy": pull_policy}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": containers, "terminationGracePeriodSeconds": 1,
                     "automountServiceAccountToken": False, **spec}}


def counts(lab: Lab, namespace: str, pod: str) -> list[int]:
    """Every count=N the pod's counter printed, oldest first."""
    return [int(n) for n in re.findall(r"count=(\d+)", lab.logs(namespace, pod))]


def goes_on(lab: Lab, namespace: str, pod: str, before: int) -> int:
    """The restored counter's first value is at least `before` (memory, not a fresh start)
    and it keeps counting; that first value."""
    first = int(lab.wait_log(namespace, pod, r"count=(\d+)").group(1))
    assert counts(lab, namespace, pod)[0] >= before, (counts(lab, namespace, pod)[:3], before)
    lab.wait_log(namespace, pod, rf"count={first + 3}\b")
    return first


def counter_file(lab: Lab, namespace: str, pod: str, path: str) -> int:
    """The value the pod's counter last wrote to `path`, read inside the container. The counter
    truncates its file before it writes the next value, so a read may meet it empty: read again."""
    text = ""
    for _ in range(20):
        text = lab.kubectl("-n", namespace, "exec", pod, "--", "/bin/cat", path).stdout.strip()
        if text:
            break
        time.sleep(0.05)
    assert text.isdigit(), (pod, path, text)
    return int(text)


def counter_pod(name: str, interval_ms: int = 500) -> dict[str, Any]:
    return pod_manifest(name, ["/usr/local/bin/counter", "/tmp/counter", str(interval_ms)])


def sleeper_pod(name: str, image: str = WORKLOAD_IMAGE) -> dict[str, Any]:
    return pod_manifest(name, ["/bin/sh", "-c", "while true; do sleep 3600; done"], image=image)


def create_namespace(lab: Lab, prefix: str) -> str:
    slug = re.sub(r"[^a-z0-9-]", "-", prefix.lower())[:30].strip("-")
    name = f"t-{slug}-{uuid.uuid4().hex[:6]}"
    lab.kubectl("create", "namespace", name)
    end = time.monotonic() + 60
    while lab.kubectl("-n", name, "get", "serviceaccount", "default", check=False).returncode:
        if time.monotonic() > end:
            raise AssertionError(f"no default service account in {name}")
        time.sleep(0.3)
    return name


def fresh_namespace(lab: Lab, prefix: str) -> Iterator[str]:
    name = create_namespace(lab, prefix)
    try:
        yield name
    finally:
        delete_namespace(lab, name)


def delete_namespace(lab: Lab, name: str) -> None:
    """A test's namespace: its Checkpoints first, while their helpers run, so their data goes
    with them (the finalizer; bounded, as a test may have removed the helpers), then the rest
    in the background."""
    lab.kubectl("-n", name, "delete", "checkpoints.cedana.io", "--all", "--wait=true",
                "--timeout=60s", check=False, timeout=90)
    lab.kubectl("delete", "namespace", name, "--wait=false", check=False)


#: the phases after which a cedana.io object does not change
FINAL = ("Succeeded", "Failed")


def wait_final(lab: "Lab", namespace: str, plural: str, name: str,
               timeout: float = 180) -> dict[str, Any]:
    """The object once its phase is final (an AssertionError with its status after timeout)."""
    end = time.monotonic() + timeout
    obj: dict[str, Any] = {}
    while time.monotonic() < end:
        got = lab.kubectl("-n", namespace, "get", f"{plural}.cedana.io", name, "-o", "json",
                          check=False)
        if got.returncode == 0:
            obj = json.loads(got.stdout)
            if obj.get("status", {}).get("phase") in FINAL:
                return obj
        time.sleep(0.5)
    raise AssertionError(f"{plural} {namespace}/{name} not final after {timeout}s: "
                         f"{json.dumps(obj.get('status', {}))[:1500]}")


#: where the DaemonSet's helpers run, and the checkpoint directory they see
HELPER_NAMESPACE = "cedana-system"
HELPER_CHECKPOINT_DIR = "/var/lib/cedana/checkpoints"


def helper_pod(lab: "Lab", node: str) -> dict[str, Any]:
    """The DaemonSet's helper pod on `node` (not one being deleted)."""
    pods = json.loads(lab.kubectl("-n", HELPER_NAMESPACE, "get", "pods", "-l",
                                  "app.kubernetes.io/name=cedana-helper", "--field-selector",
                                  f"spec.nodeName={node}", "-o", "json").stdout)["items"]
    (pod,) = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    return pod


def node_holds(lab: "Lab", node: str) -> list[str]:
    """The names in the checkpoint directory of `node`, as its helper sees them."""
    pod = helper_pod(lab, node)["metadata"]["name"]
    return sorted(lab.kubectl("-n", HELPER_NAMESPACE, "exec", pod, "-c", "helper", "--",
                              "ls", "-a", HELPER_CHECKPOINT_DIR).stdout.split())
