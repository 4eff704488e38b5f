"""What a caller says about a container is not believed: runc roots and containerd sockets are
the administrator's, registry references must be under an allowed prefix, and a container the
runtime describes must be the one the Kubernetes API lists for that pod on this node.

The Kubernetes API here is a stand-in answering get_pod (the rules are what is tested); the
end-to-end suite (tests/e2e/test_security.py) runs the same attacks against the lab."""
from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import HelperConfig
from sidecar.errors import (
    ContainerNotFound,
    ContainerNotRunning,
    InvalidRequest,
    KubernetesUnavailable,
    RegistryNotAllowed,
)
from sidecar.node import proctree
from sidecar.ops.containers import Containers, allowed_root
from sidecar.ops.rootfs import allowed_address, allowed_image
from tests.unit.sidecar_support import COUNTER, POD, install_runc_root, make_config


def test_only_configured_runtime_roots(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    root = install_runc_root("containerd", tmp_path)
    assert allowed_root(config, str(root)) == root
    # a directory of the caller's (an emptyDir with a state.json of its making) is refused
    forged = tmp_path / "var/lib/kubelet/pods/uid/volumes/kubernetes.io~empty-dir/x"
    forged.mkdir(parents=True)
    for requested in (str(forged), "relative/root", str(root) + "/../k8s.io/..", "/"):
        with pytest.raises(InvalidRequest) as refused:
            allowed_root(config, requested)
        assert refused.value.status == 400 and "not a runtime root" in refused.value.message
    # the same directory through a symlink is the configured one
    link = tmp_path / "link"
    link.symlink_to(root)
    assert allowed_root(config, str(link)) == root


def test_only_configured_containerd_sockets(tmp_path: Path) -> None:
    config = replace(make_config(tmp_path), default_containerd_address="/run/c/containerd.sock",
                     containerd_addresses=("/run/k3s/containerd/containerd.sock",))
    assert allowed_address(config, "") == "/run/c/containerd.sock"
    assert allowed_address(config, "unix:///run/k3s/containerd/containerd.sock") == \
        "/run/k3s/containerd/containerd.sock"
    with pytest.raises(InvalidRequest):
        allowed_address(config, "/var/lib/kubelet/pods/uid/volumes/x/containerd.sock")


@pytest.mark.parametrize("prefixes,namespace,ref,allowed", [
    (("reg:5000/rootfs/{namespace}",), "shop", "reg:5000/rootfs/shop:1", True),
    (("reg:5000/rootfs/{namespace}",), "shop", "reg:5000/rootfs/shop/app:1", True),
    (("reg:5000/rootfs/{namespace}",), "shop", "reg:5000/rootfs/other:1", False),
    # a prefix is a path prefix, not a string prefix
    (("reg:5000/rootfs/{namespace}",), "shop", "reg:5000/rootfs/shopping:1", False),
    (("reg:5000/rootfs/{namespace}",), "shop", "reg:5001/rootfs/shop:1", False),
    (("reg:5000",), "shop", "reg:5000/anything/at/all:1", True),
    (("reg:5000",), "shop", "reg:50000/x:1", False),
    ((), "shop", "reg:5000/rootfs/shop:1", False),
    (("docker.io/library",), "shop", "busybox", True),
])
def test_registry_prefixes(tmp_path: Path, prefixes: tuple[str, ...], namespace: str,
                           ref: str, allowed: bool) -> None:
    config = replace(make_config(tmp_path), registry_prefixes=prefixes)
    if allowed:
        assert allowed_image(config, namespace, ref, "push") == ref
    else:
        with pytest.raises(RegistryNotAllowed) as refused:
            allowed_image(config, namespace, ref, "push")
        assert refused.value.status == 403 and ref in refused.value.message


def test_the_checkpoint_repository_is_never_a_rootfs_image(tmp_path: Path) -> None:
    config = replace(make_config(tmp_path), registry_prefixes=("reg:5000",),
                     remote_repository="reg:5000/cedana/checkpoints")
    for ref in ("reg:5000/cedana/checkpoints:abc", "reg:5000/cedana/checkpoints/x:1"):
        with pytest.raises(RegistryNotAllowed) as refused:
            allowed_image(config, "shop", ref, "push")
        assert "checkpoint repository" in refused.value.message
    assert allowed_image(config, "shop", "reg:5000/cedana/checkpoints-not:1", "push")


class StubKube:
    """get_pod as the API server would answer it (a stand-in for one pod)."""

    def __init__(self, pod: dict[str, Any] | None, error: Exception | None = None) -> None:
        self.pod, self.error = pod, error

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        if self.error is not None:
            raise self.error
        if self.pod is None or (namespace, name) != (self.pod["metadata"]["namespace"],
                                                    self.pod["metadata"]["name"]):
            return None
        return self.pod


def _pod(node: str, container_id: str, started: float) -> dict[str, Any]:
    stamp = datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"metadata": {"namespace": "default", "name": POD},
            "spec": {"nodeName": node},
            "status": {"containerStatuses": [{
                "name": "counter", "containerID": f"containerd://{container_id}",
                "state": {"running": {"startedAt": stamp}}}]}}


@pytest.fixture
def live(tmp_path: Path) -> Any:
    proc = subprocess.Popen(["sleep", "300"])
    root = install_runc_root("containerd", tmp_path, {COUNTER: proc.pid})
    yield root, proc.pid, make_config(tmp_path)
    proc.kill()
    proc.wait()


def _find(root: Path, config: HelperConfig, kube: Any) -> Any:
    return Containers(root, kube, config.node_name).find("default", POD, "counter")


def test_the_container_kubernetes_lists_on_this_node_is_found(live: Any) -> None:
    root, pid, config = live
    started = proctree.start_time(pid)
    assert started is not None
    found = _find(root, config, StubKube(_pod(config.node_name, COUNTER, started)))
    assert found.container_id == COUNTER and found.pid == pid


@pytest.mark.parametrize("case", ["no-pod", "other-node", "other-container", "other-start"])
def test_a_container_kubernetes_does_not_vouch_for_is_not_touched(live: Any, case: str) -> None:
    root, pid, config = live
    started = proctree.start_time(pid)
    assert started is not None
    pod: dict[str, Any] | None = {
        "no-pod": None,
        "other-node": _pod("node-2", COUNTER, started),
        "other-container": _pod(config.node_name, "f" * 64, started),
        "other-start": _pod(config.node_name, COUNTER, started - 600),
    }[case]
    with pytest.raises(ContainerNotFound) as refused:
        _find(root, config, StubKube(pod))
    assert refused.value.status == 404


def test_an_init_process_older_than_the_apis_start_is_the_container(live: Any) -> None:
    """runc creates the init process, then starts it: on a busy node the API's startedAt
    (the start) comes seconds after the process's own start time. That is the container (a
    bench's 4 GiB pod was refused for a 3.5 s gap); a process younger than the start is not."""
    root, pid, config = live
    started = proctree.start_time(pid)
    assert started is not None
    found = _find(root, config, StubKube(_pod(config.node_name, COUNTER, started + 10)))
    assert found.container_id == COUNTER
    for api_start in (started - 10, started + 600):  # younger by 10 s; created 10 min before
        with pytest.raises(ContainerNotFound):
            _find(root, config, StubKube(_pod(config.node_name, COUNTER, api_start)))


def test_no_answer_from_the_api_is_no_action(live: Any) -> None:
    root, _pid, config = live
    with pytest.raises(KubernetesUnavailable) as refused:
        _find(root, config, StubKube(None, error=TimeoutError("API server timed out")))
    assert refused.value.status == 503 and "timed out" in refused.value.message


def test_a_reused_pid_is_not_the_container(live: Any) -> None:
    """runc recorded when its init started; another process now holding that pid is not it."""
    root, pid, config = live
    state = next(root.glob(f"{COUNTER}/state.json"))
    text = state.read_text()
    start = proctree.start_ticks(pid)
    assert start is not None
    state.write_text(text.replace(f'"init_process_start": {start}',
                                  f'"init_process_start": {start + 1}'))
    if state.read_text() == text:  # the fixture writes the start as a string
        state.write_text(text.replace(f'"init_process_start": "{start}"',
                                      f'"init_process_start": "{start + 1}"'))
    assert state.read_text() != text
    found = Containers(root, None, config.node_name).find("default", POD, "counter")
    # read as stopped: every operation refuses it (only running containers are acted on)
    assert found.pid == pid and not found.alive and found.status == "stopped"


def test_pid_reuse_between_discovery_and_action(live: Any, monkeypatch: Any) -> None:
    root, pid, config = live
    real = proctree.start_ticks
    calls = {"n": 0}

    def later(p: int, proc: Path = Path("/proc")) -> int | None:
        value = real(p, proc)
        if p != pid or value is None:
            return value
        calls["n"] += 1  # the first look (discovery) sees it, the second (the check) does not
        return value if calls["n"] == 1 else value + 1

    monkeypatch.setattr(proctree, "start_ticks", later)
    with pytest.raises(ContainerNotRunning):
        Containers(root, None, config.node_name).find("default", POD, "counter")
    assert os.path.exists(f"/proc/{pid}")


def test_a_request_naming_no_root_looks_only_in_configured_roots_this_node_has(
        tmp_path: Path) -> None:
    from sidecar.ops.containers import allowed_roots
    present, missing = tmp_path / "crun", tmp_path / "not-here"
    present.mkdir()
    config = HelperConfig(checkpoint_dir=tmp_path / "ck", runtime_root=missing,
                          runtime_roots=(present,))
    assert allowed_roots(config, None) == (present,)
    assert allowed_roots(config, str(present)) == (present,)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(InvalidRequest, match="not a runtime root of this helper"):
        allowed_roots(config, str(elsewhere))
