"""Discovery of Kubernetes containers from recorded runc roots (containerd, k3s, CRI-O)."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.errors import ContainerAmbiguous, ContainerNotFound, InvalidRequest
from sidecar.node.discovery import (
    PAUSED,
    RUNNING,
    STOPPED,
    find_container,
    list_containers,
    validate_root,
)
from tests.unit.sidecar_support import (
    COUNTER,
    COUNTER_LEFTOVER,
    CRIO_NGINX,
    FIRST,
    HELPER,
    SECOND,
    bundle_of,
    install_runc_root,
    sleeper,
)


@pytest.fixture
def live_pid() -> Iterator[int]:
    proc = sleeper()
    yield proc.pid
    proc.kill()
    proc.wait()


def test_containerd_namespace_listing_skips_sandboxes_and_unannotated(tmp_path: Path,
                                                                      live_pid: int) -> None:
    root = install_runc_root("containerd", tmp_path,
                             {COUNTER: live_pid, FIRST: live_pid, SECOND: live_pid})
    found = {(c.sandbox_name, c.container_name, c.container_id): c
             for c in list_containers(root, "default")}
    assert set(found) == {
        ("counter-5f7c9d8b4-x2kqp", "counter", COUNTER),
        ("counter-5f7c9d8b4-x2kqp", "counter", COUNTER_LEFTOVER),
        ("two-containers", "first", FIRST),
        ("two-containers", "second", SECOND),
    }
    counter = found[("counter-5f7c9d8b4-x2kqp", "counter", COUNTER)]
    assert counter.namespace == "default"
    assert counter.runtime == "containerd"
    assert counter.pid == live_pid
    assert counter.status == RUNNING
    assert counter.image == "docker.io/library/busybox:1.36"
    assert counter.sandbox_id == "a" * 64
    assert counter.rootfs == str(bundle_of(root, COUNTER) / "rootfs")
    assert counter.bundle == str(bundle_of(root, COUNTER))
    assert found[("counter-5f7c9d8b4-x2kqp", "counter", COUNTER_LEFTOVER)].status == STOPPED
    assert [c.container_name for c in list_containers(root, "kube-system")] == ["helper"]
    assert list_containers(root, "nowhere") == []


def test_crio_annotations(tmp_path: Path, live_pid: int) -> None:
    root = install_runc_root("crio", tmp_path, {CRIO_NGINX: live_pid})
    (nginx,) = list_containers(root, "shop")
    assert nginx.runtime == "cri-o"
    assert (nginx.sandbox_name, nginx.container_name) == ("web-0", "nginx")
    assert nginx.container_id == CRIO_NGINX
    assert nginx.sandbox_id == "7" * 64
    assert nginx.image == "docker.io/library/nginx:1.25"
    assert nginx.status == RUNNING
    # CRI-O gives an absolute root.path; it is found below the same host prefix as the bundle
    assert nginx.rootfs.endswith(f"/host/var/lib/containers/storage/overlay/{'5' * 64}/merged")


def test_k3s_host_prefix_and_state_label_fallback(tmp_path: Path, live_pid: int) -> None:
    root = install_runc_root("k3s", tmp_path, {FIRST: live_pid, SECOND: live_pid})
    found = {c.container_name: c for c in list_containers(root, "default")
             if c.sandbox_name == "two-containers"}
    assert found["first"].bundle.startswith(str(tmp_path / "k3s" / "host" / "run" / "k3s"))
    # the second container's bundle is gone: its identity comes from state.json's labels
    second = found["second"]
    assert second.container_id == SECOND
    assert second.image == "docker.io/library/busybox:1.36"
    assert second.status == RUNNING


def test_frozen_container_is_paused(tmp_path: Path, live_pid: int) -> None:
    root = install_runc_root("containerd", tmp_path, {HELPER: live_pid})
    state = json.loads((root / HELPER / "state.json").read_text())
    freezer = Path(str(tmp_path / "containerd" / "host") + state["cgroup_paths"]["freezer"])
    freezer.mkdir(parents=True)
    (freezer / "freezer.state").write_text("FROZEN\n")
    (helper,) = list_containers(root, "kube-system")
    assert helper.status == PAUSED


def test_reused_pid_counts_as_stopped(tmp_path: Path, live_pid: int) -> None:
    root = install_runc_root("containerd", tmp_path, {HELPER: live_pid})
    state_file = root / HELPER / "state.json"
    state = json.loads(state_file.read_text())
    state["init_process_start"] += 1  # the pid now belongs to a different process
    state_file.write_text(json.dumps(state))
    (helper,) = list_containers(root, "kube-system")
    assert helper.status == STOPPED


def test_find_prefers_running_over_stopped_leftover(tmp_path: Path, live_pid: int) -> None:
    root = install_runc_root("containerd", tmp_path, {COUNTER: live_pid})
    found = find_container(root, "default", "counter-5f7c9d8b4-x2kqp", "counter")
    assert found.container_id == COUNTER


def test_find_only_stopped_returns_newest(tmp_path: Path) -> None:
    root = install_runc_root("containerd", tmp_path, {})
    found = find_container(root, "default", "counter-5f7c9d8b4-x2kqp", "counter")
    assert found.container_id == COUNTER  # created later than the leftover
    assert found.status == STOPPED


def test_find_two_running_matches_is_ambiguous(tmp_path: Path, live_pid: int) -> None:
    root = install_runc_root("containerd", tmp_path,
                             {COUNTER: live_pid, COUNTER_LEFTOVER: live_pid})
    with pytest.raises(ContainerAmbiguous) as err:
        find_container(root, "default", "counter-5f7c9d8b4-x2kqp", "counter")
    assert err.value.status == 409
    assert set(err.value.extra["container_ids"]) == {COUNTER, COUNTER_LEFTOVER}


def test_find_unknown_names_what_exists(tmp_path: Path) -> None:
    root = install_runc_root("containerd", tmp_path, {})
    with pytest.raises(ContainerNotFound) as err:
        find_container(root, "default", "two-containers", "third")
    assert err.value.status == 404
    assert "first, second" in err.value.message
    with pytest.raises(ContainerNotFound) as err:
        find_container(root, "default", "no-such-pod", "x")
    assert "two-containers" in err.value.message


def test_root_must_be_an_existing_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest):
        validate_root(tmp_path / "missing")
    with pytest.raises(InvalidRequest):
        validate_root("relative/root")
    assert validate_root(tmp_path) == tmp_path


def test_half_written_state_is_skipped(tmp_path: Path, live_pid: int) -> None:
    root = install_runc_root("containerd", tmp_path, {FIRST: live_pid})
    (root / "partial").mkdir()
    (root / "partial" / "state.json").write_text('{"id": "partial", "conf')
    names = {c.container_name for c in list_containers(root, "default")}
    assert "first" in names


# --- crun (CRI-O's default runtime): `status` and a copy of config.json per container --------

def _crun_container(root: Path, cid: str, pid: int, *, start: int | None, kind: str = "container",
                    pod: str = "web-0", name: str = "nginx") -> Path:
    """One container as crun 1.21 records it under its root (read off the lab's CRI-O node)."""
    state_dir = root / cid
    state_dir.mkdir(parents=True)
    storage = root.parent / "storage"
    bundle = storage / "overlay-containers" / cid / "userdata"
    bundle.mkdir(parents=True)
    cgroup = f"/kubepods/besteffort/pod1234/crio-{cid}"
    (state_dir / "status").write_text(json.dumps({
        "pid": pid, "process-start-time": start, "cgroup-path": cgroup, "scope": "",
        "rootfs": str(storage / "overlay" / cid / "merged"), "systemd-cgroup": False,
        "bundle": str(bundle), "created": "2026-11-30T18:29:21.202865Z", "owner": "root",
        "detached": True}))
    config = {"ociVersion": "1.2.1", "root": {"path": str(storage / "overlay" / cid / "merged")},
              "annotations": {"io.kubernetes.cri-o.ContainerType": kind,
                              "io.kubernetes.pod.name": pod, "io.kubernetes.pod.namespace": "shop",
                              "io.kubernetes.container.name": name,
                              "io.kubernetes.cri-o.SandboxID": "7" * 64,
                              "io.kubernetes.cri-o.ImageName": "docker.io/library/nginx:1.25"}}
    (state_dir / "config.json").write_text(json.dumps(config))
    (bundle / "config.json").write_text(json.dumps(config))
    return state_dir


def test_crun_state_is_read(tmp_path: Path, live_pid: int) -> None:
    from sidecar.node import proctree
    root = tmp_path / "crun"
    _crun_container(root, "c" * 64, live_pid, start=proctree.start_ticks(live_pid))
    _crun_container(root, "d" * 64, live_pid, start=None, kind="sandbox", name="POD")
    (nginx,) = list_containers(root, "shop")
    assert (nginx.engine, nginx.runtime, nginx.state_root) == ("crun", "cri-o", str(root))
    assert (nginx.sandbox_name, nginx.container_name, nginx.container_id) == \
        ("web-0", "nginx", "c" * 64)
    assert nginx.pid == live_pid and nginx.status == RUNNING
    assert nginx.init_start == proctree.start_ticks(live_pid)
    assert nginx.rootfs == str(tmp_path / "storage" / "overlay" / ("c" * 64) / "merged")
    assert nginx.bundle == \
        str(tmp_path / "storage" / "overlay-containers" / ("c" * 64) / "userdata")
    assert nginx.to_dict()["engine"] == "crun"


def test_crun_reused_pid_counts_as_stopped(tmp_path: Path, live_pid: int) -> None:
    from sidecar.node import proctree
    root = tmp_path / "crun"
    _crun_container(root, "c" * 64, live_pid, start=(proctree.start_ticks(live_pid) or 0) + 5)
    (nginx,) = list_containers(root, "shop")
    assert nginx.status == STOPPED


def test_find_looks_in_every_root(tmp_path: Path, live_pid: int) -> None:
    from sidecar.node import proctree
    runc_root = install_runc_root("crio", tmp_path, {CRIO_NGINX: live_pid})
    crun_root = tmp_path / "crun"
    _crun_container(crun_root, "c" * 64, live_pid, start=proctree.start_ticks(live_pid),
                    pod="api-0", name="api")
    roots = (runc_root, crun_root)
    assert find_container(roots, "shop", "web-0", "nginx").engine == "runc"
    api = find_container(roots, "shop", "api-0", "api")
    assert (api.engine, api.state_root) == ("crun", str(crun_root))
    assert {c.container_name for c in list_containers(roots, "shop")} == {"nginx", "api"}
    with pytest.raises(ContainerNotFound, match="crun"):
        find_container(roots, "shop", "api-0", "nothing")
