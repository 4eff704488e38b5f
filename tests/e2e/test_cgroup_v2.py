"""cgroup v2, as far as these machines allow: they mount cgroup v1 and the host itself uses the v1
memory controller, so no cgroup v2 kubelet can run here. What can be covered is everything the
helper does itself: a mount namespace whose /sys/fs/cgroup is a cgroup2 mount (no v1 hierarchy
visible), runc containers that runc puts in cgroup v2 cgroups there, and the helper, started in
that namespace, checkpointing one through its REST API (its freezer is cgroup.freeze, CRIU dumps
the v2 cgroup) and restoring it into a sleeping container (the restored tree joins that
container's v2 cgroup). The containers carry the annotations containerd's CRI plugin writes,
so the helper finds them as it finds a pod's."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.helper import HelperProcess, start_helper, stop_helper
from tests.e2e.lab import LAB_DIR, run

WORKLOAD_TAR = Path(os.environ.get("CEDANA_CACHE", "/var/cache/kubectl-cedana")) / "images" / \
    "workload.tar"
CGROUP_PARENT = "cedana-cg2"


@dataclass
class Container:
    """A runc container in the cgroup2 namespace, its stdout/stderr a pipe the test reads."""

    cid: str
    bundle: Path
    proc: subprocess.Popen[bytes]
    lines: list[str] = field(default_factory=list)

    def drain(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def counts(self) -> list[int]:
        return [int(m.group(1)) for line in list(self.lines)
                for m in [re.search(r"count=(\d+)", line)] if m]

    def wait_count(self, at_least: int, timeout: float = 30) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            counts = self.counts()
            if counts and counts[-1] >= at_least:
                return counts[-1]
            time.sleep(0.1)
        raise AssertionError(f"{self.cid}: no count >= {at_least} in {self.lines[-5:]}")


@dataclass
class Cgroup2Namespace:
    """A mount namespace with cgroup2 on /sys/fs/cgroup, and runc containers in it."""

    base: Path
    namespace: str
    netns: str
    containers: list[Container] = field(default_factory=list)

    @property
    def mnt(self) -> Path:
        return self.base / "mnt"

    @property
    def runc_root(self) -> str:
        return str(self.base / "runc")

    def enter(self) -> list[str]:
        return ["nsenter", f"--mount={self.mnt}", "--"]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([*self.enter(), *args], check=check)

    def runc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("runc", "--root", self.runc_root, *args, check=check)

    def read(self, path: str) -> str:
        return self.run("cat", path).stdout

    def start(self, pod: str, args: list[str]) -> Container:
        cid = f"cg2-{pod}-{uuid.uuid4().hex[:8]}"
        bundle = self.base / "bundles" / cid
        rootfs = bundle / "rootfs"
        rootfs.mkdir(parents=True)
        _unpack_docker_archive(WORKLOAD_TAR, rootfs)
        run(["runc", "spec", "--bundle", str(bundle)])
        spec = json.loads((bundle / "config.json").read_text())
        spec["process"].update({"terminal": False, "args": args, "cwd": "/"})
        spec["root"] = {"path": "rootfs", "readonly": False}
        spec["hostname"] = pod
        linux = spec["linux"]
        linux["cgroupsPath"] = f"/{CGROUP_PARENT}/{cid}"
        # the pod's network namespace, as the CRI runtime gives it: external to the dump
        linux["namespaces"] = [n for n in linux["namespaces"] if n["type"] != "network"] + [
            {"type": "network", "path": f"/run/netns/{self.netns}"}]
        spec["annotations"] = {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-name": pod,
            "io.kubernetes.cri.sandbox-namespace": self.namespace,
            "io.kubernetes.cri.container-name": "main",
            "io.kubernetes.cri.image-name": "docker.io/cedana-lab/workload:1",
        }
        (bundle / "config.json").write_text(json.dumps(spec))
        proc = subprocess.Popen([*self.enter(), "runc", "--root", self.runc_root, "run",
                                 "--detach", "--bundle", str(bundle), cid],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        container = Container(cid, bundle, proc)
        threading.Thread(target=container.drain, daemon=True).start()
        proc.wait(60)
        assert proc.returncode == 0, f"runc run {cid} failed: {container.lines}"
        self.containers.append(container)
        return container

    def state(self, container: Container) -> dict[str, object]:
        out = self.runc("state", container.cid, check=False)
        return json.loads(out.stdout) if out.returncode == 0 else {"status": "gone"}

    def cgroup_dir(self, container: Container) -> str:
        return f"/sys/fs/cgroup/{CGROUP_PARENT}/{container.cid}"


def _unpack_docker_archive(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))  # type: ignore[arg-type]
        for layer in manifest[0]["Layers"]:
            with tarfile.open(fileobj=outer.extractfile(layer)) as inner:
                inner.extractall(dest, filter="fully_trusted")


@pytest.fixture
def cgroup2(namespace: str) -> Iterator[Cgroup2Namespace]:
    name = uuid.uuid4().hex[:8]
    base = Path(f"/run/cedana-cg2-{name}")
    base.mkdir()
    ns = Cgroup2Namespace(base, namespace, f"cedana-cg2-{name}")
    run(["mount", "--bind", str(base), str(base)])
    run(["mount", "--make-private", str(base)])
    ns.mnt.touch()
    run(["ip", "netns", "add", ns.netns])
    try:
        run(["unshare", f"--mount={ns.mnt}", "--propagation", "private", "true"])
        ns.run("mount", "-t", "cgroup2", "cgroup2", "/sys/fs/cgroup")
        ns.run("mkdir", "-p", f"/sys/fs/cgroup/{CGROUP_PARENT}")
        yield ns
    finally:
        for container in ns.containers:
            ns.runc("delete", "--force", container.cid, check=False)
        if run(["mountpoint", "-q", str(ns.mnt)], check=False).returncode == 0:
            # the cgroup2 hierarchy is the machine's: leave nothing in it
            ns.run("sh", "-c", f"rmdir /sys/fs/cgroup/{CGROUP_PARENT}/* "
                               f"/sys/fs/cgroup/{CGROUP_PARENT}", check=False)
            run(["umount", str(ns.mnt)], check=False)
        run(["ip", "netns", "delete", ns.netns], check=False)
        run(["umount", str(base)], check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["node-cgroupns", "private-cgroupns"])
def helper_in_cgroup2(cgroup2: Cgroup2Namespace,
                      request: pytest.FixtureRequest) -> Iterator[HelperProcess]:
    """The helper in the cgroup2 mount namespace; in the node's cgroup namespace, or in a private
    one rooted at a cgroup of its own, as a container on a cgroup v2 node gets by default (there
    the other containers' cgroups read as `0::/../...` until it joins the node's)."""
    home = LAB_DIR / "test-helpers" / f"cgroup2-{cgroup2.netns}"
    prefix = cgroup2.enter()
    if request.param == "private-cgroupns":
        own = f"/sys/fs/cgroup/{CGROUP_PARENT}/helper"
        prefix += ["sh", "-c", f'mkdir -p {own} && echo $$ > {own}/cgroup.procs && '
                               'exec unshare --cgroup "$@"', "sh"]
    helper = start_helper(f"cgroup2-{cgroup2.netns}", home / "checkpoints",
                          runtime_root=cgroup2.runc_root, prefix=prefix)
    if request.param == "private-cgroupns":
        assert "entered the node's cgroup namespace" in helper.log_text()
    try:
        yield helper
    finally:
        stop_helper(helper)
        shutil.rmtree(home, ignore_errors=True)


def test_checkpoint_and_restore_in_a_cgroup2_hierarchy(cgroup2: Cgroup2Namespace,
                                                       helper_in_cgroup2: HelperProcess) -> None:
    helper = helper_in_cgroup2
    assert cgroup2.run("stat", "-f", "-c", "%T", "/sys/fs/cgroup").stdout.strip() == "cgroup2fs"
    source = cgroup2.start("counter", ["/usr/local/bin/counter", "/tmp/counter", "200"])
    target = cgroup2.start("sleeper", ["/bin/sh", "-c", "while true; do sleep 3600; done"])
    # runc put each in a cgroup v2 cgroup of its own (and the helper sees it there)
    for container in (source, target):
        procs = cgroup2.read(f"{cgroup2.cgroup_dir(container)}/cgroup.procs").split()
        assert str(cgroup2.state(container)["pid"]) in procs
    source.wait_count(5)
    listed = helper.get(f"/list/{cgroup2.namespace}", params={"root": cgroup2.runc_root})
    assert listed.status_code == 200, listed.text
    assert {c["sandbox_name"] for c in listed.json()} >= {"counter", "sleeper"}, listed.text

    # without leave_running the helper freezes the container (cgroup.freeze: no v1 freezer is
    # mounted here), dumps it, and stops the frozen processes once the checkpoint is listed
    data = {"container_name": "main", "sandbox_name": "counter", "namespace": cgroup2.namespace,
            "checkpoint_path": "", "root": cgroup2.runc_root}
    dumped = helper.post("/checkpoint", {"checkpoint_data": data, "leave_running": False})
    assert dumped.status_code == 200, dumped.text + helper.log_text()[-3000:]
    checkpoint_id = dumped.json()["checkpoint_id"]
    end = time.monotonic() + 30
    while cgroup2.state(source)["status"] not in ("stopped", "gone"):
        assert time.monotonic() < end, cgroup2.state(source)
        time.sleep(0.2)
    last = source.counts()[-1]
    time.sleep(1)
    assert source.counts()[-1] == last, "the source kept counting after its checkpoint"
    # CRIU recorded the v2 cgroup of the dumped tree
    images = Path(dumped.json()["checkpoint_path"]) / "checkpoint"
    assert any(p.name.startswith("cgroup") for p in images.iterdir())

    restored = helper.post("/restore", {"checkpoint_data": {
        "container_name": "main", "sandbox_name": "sleeper", "namespace": cgroup2.namespace,
        "checkpoint_id": checkpoint_id, "root": cgroup2.runc_root}})
    assert restored.status_code == 200, restored.text + helper.log_text()[-3000:]
    # the counter goes on from its checkpointed value, on the sleeping container's stdout
    first = target.wait_count(0)
    assert first >= last, (first, last)
    target.wait_count(first + 5)
    # and it runs in the sleeping container's cgroup v2 cgroup (CRIU made none of its own)
    procs = cgroup2.read(f"{cgroup2.cgroup_dir(target)}/cgroup.procs").split()
    commands = {pid: cgroup2.read(f"/proc/{pid}/cmdline").split("\0")[0] for pid in procs}
    assert "/usr/local/bin/counter" in commands.values(), commands
    cgroups = set(cgroup2.run("find", f"/sys/fs/cgroup/{CGROUP_PARENT}", "-mindepth", "1",
                              "-maxdepth", "1", "-type", "d", "-printf", "%f\n").stdout.split())
    assert cgroups <= {source.cid, target.cid, "helper"}, cgroups
    assert not cgroup2.read(f"{cgroup2.cgroup_dir(source)}/cgroup.procs").split() \
        if source.cid in cgroups else True
    assert cgroup2.state(target)["status"] == "running"
