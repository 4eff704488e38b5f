"""restore_into through HTTP, running the real enter_cgroups/nsenter/unshare chain around a
fake criu that reports what it was given (root only: it joins cgroups and namespaces)."""
from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil
import pytest

from tests.unit.sidecar_support import (
    COUNTER,
    FIRST,
    POD_FIRST_UID,
    HelperApp,
    assert_error,
    bundle_of,
    is_root,
    pod_process,
    proc_start_ticks,
    stop,
)

pytestmark = pytest.mark.skipif(
    not is_root() or not shutil.which("nsenter") or not shutil.which("unshare"),
    reason="needs root, nsenter and unshare",
)


@pytest.fixture(autouse=True)
def roots_as_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake placeholders' rootfs is a directory of the test, not their process's root:
    taken as it is (the attach of a root that is not visible runs on the lab's CRI-O node,
    tests/e2e/test_lab_crio.py)."""
    from sidecar.node import root_attach
    monkeypatch.setattr(root_attach, "visible", lambda pid, rootfs: True)


class RestoreEnv(HelperApp):
    def __init__(self, tmp_path: Path, **settings: object) -> None:
        super().__init__(tmp_path, **settings)
        made = self.client.post("/checkpoint", json=self.checkpoint_body(checkpoint_path="c"))
        assert made.status_code == 200, made.text
        self.checkpoint_id = made.json()["checkpoint_id"]
        self.target = pod_process()
        state_file = self.root / FIRST / "state.json"
        state = json.loads(state_file.read_text())
        state["init_process_pid"] = self.target.pid
        state["init_process_start"] = proc_start_ticks(self.target.pid)
        state_file.write_text(json.dumps(state))
        self.rootfs = bundle_of(self.root, FIRST) / "rootfs"
        self.rootfs.mkdir()
        self.sleeping_child = psutil.Process(self.target.pid).children()[0].pid
        self.tools = Path(self.config.criu_path).parent

    def restore(self, **data: object) -> object:
        body = {"container_name": "first", "sandbox_name": "two-containers",
                "namespace": "default", "root": str(self.root),
                "checkpoint_id": self.checkpoint_id}
        body.update(data)
        return self.client.post("/restore", json={"checkpoint_data": body})

    def report(self) -> dict[str, object]:
        return json.loads((self.tools / "criu-report.json").read_text())  # type: ignore


@pytest.fixture(params=["python", "c"])
def renv(request: pytest.FixtureRequest, tmp_path: Path,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[RestoreEnv]:
    """Through each first link of the chain: the Python module (pip installs) and
    cedana-enter-cgroups (the helper's image)."""
    enter = request.getfixturevalue("c_programs")["cedana-enter-cgroups"] \
        if request.param == "c" else ""
    e = RestoreEnv(tmp_path, enter_cgroups_path=enter)
    # the fake criu "restores" the placeholder's sleeping child
    monkeypatch.setenv("FAKE_CRIU_RESTORED_VPID", str(e.sleeping_child))
    yield e
    stop(e.target)
    stop(e.source)


@contextmanager
def own_pids_cgroup(pids: list[int]) -> Iterator[Path | None]:
    """Move `pids` into a new child of their v1 pids cgroup (None where that is impossible)."""
    line = next((x for x in Path(f"/proc/{pids[0]}/cgroup").read_text().splitlines()
                 if x.split(":")[1] == "pids"), None)
    base = Path("/sys/fs/cgroup/pids")
    if line is None or not base.is_dir():
        yield None
        return
    parent = base / line.split(":", 2)[2].lstrip("/")
    child = parent / f"cedana-test-{uuid.uuid4().hex[:8]}"
    try:
        child.mkdir()
    except OSError:
        yield None
        return
    try:
        for pid in pids:
            (child / "cgroup.procs").write_text(f"{pid}\n")
        yield child
    finally:
        for member in (child / "cgroup.procs").read_text().split():
            with suppress(OSError):
                (parent / "cgroup.procs").write_text(f"{member}\n")
        with suppress(OSError):
            child.rmdir()


def test_restore_runs_criu_inside_the_target(renv: RestoreEnv) -> None:
    with own_pids_cgroup([renv.target.pid, renv.sleeping_child]) as cgroup:
        response = renv.restore()
        if cgroup is not None:
            assert f"pids:/{cgroup.relative_to('/sys/fs/cgroup/pids')}\n" in \
                renv.report()["cgroup"]  # type: ignore[operator]
    assert response.status_code == 200, response.text  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert body["restored"] is True
    assert body["checkpoint_id"] == renv.checkpoint_id
    assert body["pid"] == renv.sleeping_child
    assert body["container_id"] == FIRST

    report = renv.report()
    args: list[str] = report["args"]  # type: ignore[assignment]
    assert args[0] == "restore"
    assert args[args.index("-D") + 1] == str(renv.config.checkpoint_dir / "c" / "checkpoint")
    assert args[args.index("--root") + 1] == str(renv.rootfs)
    assert all(dict(report["fds_open"]).values())  # type: ignore[call-overload]
    inherited = [a for i, a in enumerate(args) if args[i - 1] == "--inherit-fd"]
    assert [a.split(":", 1)[1] for a in inherited] == [
        "extRootNetNS", "pipe:[4242001]", "pipe:[4242002]"]
    maps = [a for i, a in enumerate(args) if args[i - 1] == "--ext-mount-map"]
    assert f"/etc/hosts:/var/lib/kubelet/pods/{POD_FIRST_UID}/etc-hosts" in maps
    assert "/dev/null:/dev/null" in maps
    assert "--tcp-close" not in args and "--link-remap" in args
    # criu ran in the target's PID namespace (and cgroups, above), in a mount ns of its own
    assert report["pid_ns"] == os.readlink(f"/proc/{renv.target.pid}/ns/pid")
    assert report["mnt_ns"] != os.readlink("/proc/self/ns/mnt")

    entry = renv.client.get(f"/checkpoints/{renv.checkpoint_id}").json()
    assert [r["container_id"] for r in entry["restores"]] == [FIRST]
    again = assert_error(renv.restore(), 409, "already_restored")
    assert again["pid"] == renv.sleeping_child


def test_failed_restore_leaves_the_placeholder_sleeping(renv: RestoreEnv) -> None:
    (renv.tools / "criu-fail").touch()
    body = assert_error(renv.restore(), 500, "restore_failed")
    tail = str(body["log_tail"]).splitlines()
    assert len(tail) == 40 and "No mapping" in tail[-1]
    assert renv.target.poll() is None
    assert psutil.Process(renv.target.pid).children()[0].pid == renv.sleeping_child
    (renv.tools / "criu-fail").unlink()
    assert renv.restore().status_code == 200  # type: ignore[attr-defined]


def test_target_without_the_sources_mounts(renv: RestoreEnv) -> None:
    config_json = bundle_of(renv.root, FIRST) / "config.json"
    spec = json.loads(config_json.read_text())
    spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != "/dev/shm"]
    config_json.write_text(json.dumps(spec))
    body = assert_error(renv.restore(), 409, "target_incompatible")
    assert body["missing_mounts"] == ["/dev/shm"]
    assert not (renv.tools / "criu-report.json").exists()


@pytest.mark.parametrize("by", ["id", "path"])
def test_a_checkpoint_changed_after_signing_never_reaches_criu(renv: RestoreEnv,
                                                               by: str) -> None:
    manifest_file = renv.config.checkpoint_dir / "c" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["source"]["namespace"] = "elsewhere"  # consistent sha256s, a stale signature
    manifest_file.write_text(json.dumps(manifest))
    answer = renv.restore(**({"checkpoint_id": None, "checkpoint_path": "c"} if by == "path"
                             else {}))
    body = assert_error(answer, 422, "checkpoint_untrusted")
    assert "changed after it was signed" in body["message"]
    assert not (renv.tools / "criu-report.json").exists()
    assert list(renv.rootfs.iterdir()) == []  # the placeholder's files untouched
    assert psutil.Process(renv.target.pid).children()[0].pid == renv.sleeping_child


def test_restore_into_the_running_source_is_refused(renv: RestoreEnv) -> None:
    assert_error(renv.restore(container_name="counter", sandbox_name="counter-5f7c9d8b4-x2kqp"),
                 409, "target_not_sleeping")
    assert COUNTER  # the source container is the checkpoint's own


def test_restore_by_path_and_mismatched_id(renv: RestoreEnv) -> None:
    assert renv.restore(checkpoint_id=None, checkpoint_path="c").status_code == 200  # type: ignore[attr-defined]
    other = renv.client.post("/checkpoint", json=renv.checkpoint_body()).json()
    assert_error(renv.restore(checkpoint_id=other["checkpoint_id"], checkpoint_path="c"), 400,
                 "invalid_request")
