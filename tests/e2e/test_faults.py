"""Faults injected into checkpoints and restores on the lab (issue 8, docs/reliability.md).

Each test asserts the workload survives (it keeps running and counting) and nothing partial is
listed as complete; the counts go to the reliability figures (tests/reliability.py). Helpers
run as host processes on free ports with their own checkpoint directories, so this file runs
beside the others."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from sidecar.node import proctree
from tests.e2e.helper import HelperProcess, start_helper, stop_helper
from tests.e2e.lab import LAB_DIR, Lab, counter_pod, pod_manifest, sleeper_pod
from tests.reliability import add_fault

pytestmark = pytest.mark.e2e

MEMHOG_MIB = 768


def memhog_pod(name: str, mib: int = MEMHOG_MIB) -> dict[str, Any]:
    return pod_manifest(name, ["/usr/local/bin/memhog", str(mib), "200"])


def entries(helper: HelperProcess, namespace: str) -> list[dict[str, Any]]:
    answer = helper.get("/checkpoints").json()
    return [e for e in answer["checkpoints"] if e.get("namespace") == namespace]


def assert_survives(lab: Lab, namespace: str, pod: str, pattern: str = r"beat=(\d+)") -> None:
    """Still running, never restarted, and still making progress (not frozen)."""
    status = lab.wait_pod_running(namespace, pod)["status"]["containerStatuses"][0]
    assert status["restartCount"] == 0, status
    last = int(lab.wait_log(namespace, pod, pattern).group(1))
    lab.wait_log(namespace, pod, pattern.replace(r"(\d+)", str(last + 2) + r"\b"), timeout=30)


def no_partial(helper_dir: Path, listed: list[dict[str, Any]]) -> int:
    """How many listed entries are not complete, or leftovers of unfinished dumps remain."""
    bad = [e for e in listed if e.get("status") != "complete"
           or not (Path(e["path"]) / "manifest.json").exists()]
    temporaries = [p for p in helper_dir.rglob(".tmp-*")]
    return len(bad) + len(temporaries)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of SIZE (as mount takes it: "16m") mounted at PATH for the block, then gone."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
        shutil.rmtree(path, ignore_errors=True)


# -- the helper killed with SIGKILL in the middle of a dump ----------------------------------
@pytest.mark.parametrize("leave_running,with_rootfs", [(True, True), (False, True),
                                                        (True, False), (False, False)])
def test_helper_killed_mid_dump(lab: Lab, namespace: str, leave_running: bool,
                                with_rootfs: bool) -> None:
    lab.apply(memhog_pod("hog"), namespace)
    lab.wait_pod_running(namespace, "hog")
    lab.wait_log(namespace, "hog", r"beat=2\b", timeout=120)
    name = f"killed-{namespace[-6:]}"
    helper = start_helper(name)
    cdir = helper.checkpoint_dir
    try:
        started = threading.Event()

        def dump() -> None:
            started.set()
            try:
                helper.checkpoint(namespace, "hog", leave_running=leave_running,
                                  with_rootfs=with_rootfs)
            except requests.RequestException:
                pass  # the helper dies under it

        worker = threading.Thread(target=dump, daemon=True)
        worker.start()
        started.wait()
        # kill once CRIU is writing pages
        end = time.monotonic() + 30
        while not list(cdir.glob(".tmp-*/checkpoint/pages-*.img")):
            assert time.monotonic() < end, "the dump never started writing pages"
            time.sleep(0.02)
        os.kill(helper.proc.pid, signal.SIGKILL)
        helper.proc.wait(10)
        worker.join(30)
        # runc and CRIU die with the helper (pdeathsig, cedana-criu-guard). Without the guard
        # an orphaned CRIU went on to the end of the dump, writing on into the directory, and
        # then put the freezer back to FROZEN after the next helper had thawed it
        end = time.monotonic() + 10
        while left := proctree.working_in(["runc", "criu"], cdir):
            assert time.monotonic() < end, f"outlived the helper: {left}"
            time.sleep(0.05)
        criu_log = "\n".join(p.read_text(errors="replace")
                             for p in cdir.glob(".tmp-*/work/dump.log"))
        assert criu_log, "no CRIU log left to show where the dump stopped"
        assert "Dumping finished successfully" not in criu_log
        assert "Dumping FAILED" not in criu_log, criu_log[-2000:]
    except BaseException:
        stop_helper(helper)
        shutil.rmtree(cdir.parent, ignore_errors=True)  # the new helper will not run
        raise
    stop_helper(helper)
    # a new helper on the same directory: nothing listed, nothing left, nothing frozen
    again = start_helper(name, cdir)
    try:
        listed = entries(again, namespace)
        partial = no_partial(cdir, listed)
        lost = 0
        try:
            assert_survives(lab, namespace, "hog")
        except AssertionError:
            lost = 1
            raise
        finally:
            add_fault("helper SIGKILLed mid-dump", 1, lost, partial)
        assert listed == [] and partial == 0
        assert not (cdir / ".frozen").exists() or not list((cdir / ".frozen").iterdir())
        # and it can be checkpointed now
        ok = again.checkpoint(namespace, "hog", leave_running=True)
        assert ok.status_code == 200, ok.text
    finally:
        stop_helper(again)
        shutil.rmtree(cdir.parent, ignore_errors=True)


# -- CRIU failing ------------------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["1", "5"])
def test_criu_failing(lab: Lab, namespace: str, fault: str) -> None:
    """CRIU's own fault injection (CRIU_FAULT): 1 fails the dump after the tree is seized and
    frozen, 5 while its pages are dumped. The helper answers dump_failed with CRIU's log."""
    lab.apply(counter_pod("counter", interval_ms=100), namespace)
    lab.wait_pod_running(namespace, "counter")
    lab.wait_log(namespace, "counter", r"count=5\b")
    helper = start_helper(f"criufault-{namespace[-6:]}", env={"CRIU_FAULT": fault})
    try:
        for leave_running in (True, False):
            answer = helper.checkpoint(namespace, "counter", leave_running=leave_running)
            body = answer.json()
            partial = no_partial(helper.checkpoint_dir, entries(helper, namespace))
            lost = 0
            try:
                assert answer.status_code == 500 and body["code"] == "dump_failed", answer.text
                assert_survives(lab, namespace, "counter", r"count=(\d+)")
            except AssertionError:
                lost = 1
                raise
            finally:
                add_fault("CRIU failing", 1, lost, partial, f"CRIU_FAULT={fault}")
            assert partial == 0 and entries(helper, namespace) == []
    finally:
        stop_helper(helper)
        shutil.rmtree(helper.checkpoint_dir.parent, ignore_errors=True)


# -- the checkpoint directory full ---------------------------------------------------------------
def test_checkpoint_dir_full_after_the_dump(lab: Lab, namespace: str) -> None:
    """CRIU's images fit, the container's changed files do not: the dump has finished when the
    checkpoint fails. Without leave_running CRIU would already have killed the workload; the
    helper stops it only once the checkpoint is complete and listed, so here it lives on."""
    script = ("dd if=/dev/urandom of=/filler bs=1M count=24 2>/dev/null && "
              "exec /usr/local/bin/counter /tmp/counter 100")
    lab.apply(pod_manifest("filled", ["/bin/sh", "-c", script]), namespace)
    lab.wait_pod_running(namespace, "filled")
    lab.wait_log(namespace, "filled", r"count=3\b", timeout=60)
    with tmpfs(LAB_DIR / "test-helpers" / f"fullafter-{namespace[-6:]}", "16m") as mount:
        # no quota: the disk itself runs full (the quota's refusal is test_checkpoint_dir_full's)
        helper = start_helper(f"fullafter-{namespace[-6:]}", mount / "checkpoints",
                              extra_args=["--max-checkpoint-dir-bytes", "0"])
        try:
            answer = helper.checkpoint(namespace, "filled", leave_running=False,
                                       with_rootfs=True)
            partial = no_partial(mount, entries(helper, namespace))
            lost = 0
            try:
                assert answer.status_code == 500, answer.text
                body = answer.json()
                assert body["code"] == "dump_failed", body
                assert "No space left on device" in body["message"], body
                assert_survives(lab, namespace, "filled", r"count=(\d+)")
            except AssertionError:
                lost = 1
                raise
            finally:
                add_fault("checkpoint directory full", 1, lost, partial,
                          "16 MiB tmpfs, full after the dump")
            assert partial == 0 and entries(helper, namespace) == []
            assert shutil.disk_usage(mount).used < 1 << 20
            # the same container, with room: checkpointed and then stopped, as asked
            subprocess.run(["mount", "-o", "remount,size=256m", str(mount)], check=True)
            ok = helper.checkpoint(namespace, "filled", leave_running=False, with_rootfs=True)
            assert ok.status_code == 200, ok.text
            status = lab.wait_pod_running(namespace, "filled")["status"]["containerStatuses"][0]
            end = time.monotonic() + 60
            while status["restartCount"] == 0:  # the kubelet restarts the stopped container
                assert time.monotonic() < end, status
                time.sleep(0.5)
                status = lab.pod(namespace, "filled")["status"]["containerStatuses"][0]
            listed = entries(helper, namespace)
            assert [e["status"] for e in listed] == ["complete"]
        finally:
            stop_helper(helper)


def test_checkpoint_dir_full(lab: Lab, namespace: str) -> None:
    lab.apply(memhog_pod("hog", 128), namespace)
    lab.wait_pod_running(namespace, "hog")
    lab.wait_log(namespace, "hog", r"beat=2\b", timeout=60)
    with tmpfs(LAB_DIR / "test-helpers" / f"full-{namespace[-6:]}", "16m") as mount:
        # the default quota (a quarter of the 16 MiB) refuses before anything is frozen
        quota = start_helper(f"full-quota-{namespace[-6:]}", mount / "checkpoints")
        try:
            for leave_running in (True, False):
                answer = quota.checkpoint(namespace, "hog", leave_running=leave_running)
                assert answer.status_code == 507, answer.text
                body = answer.json()
                assert body["code"] == "quota_exceeded" and body["limit_bytes"] == 4 << 20
                assert body["needed_bytes"] > 128 << 20, body  # the hog's resident memory
                assert_survives(lab, namespace, "hog")
                assert entries(quota, namespace) == []
                assert shutil.disk_usage(mount).used < 1 << 20
        finally:
            stop_helper(quota)
        # no quota: the disk itself runs full, and the dump fails cleanly
        helper = start_helper(f"full-{namespace[-6:]}", mount / "checkpoints",
                              extra_args=["--max-checkpoint-dir-bytes", "0"])
        try:
            for leave_running, with_rootfs in ((True, True), (False, True), (False, False)):
                answer = helper.checkpoint(namespace, "hog", leave_running=leave_running,
                                           with_rootfs=with_rootfs)
                partial = no_partial(mount, entries(helper, namespace))
                lost = 0
                try:
                    assert answer.status_code == 500, answer.text
                    assert answer.json()["code"] == "dump_failed"
                    assert_survives(lab, namespace, "hog")
                except AssertionError:
                    lost = 1
                    raise
                finally:
                    add_fault("checkpoint directory full", 1, lost, partial, "16 MiB tmpfs")
                assert partial == 0 and entries(helper, namespace) == []
                # the space is given back: only the catalogue's few bytes remain
                used = shutil.disk_usage(mount).used
                assert used < 1 << 20, used
            assert helper.get("/healthz").status_code == 200
        finally:
            stop_helper(helper)


# -- a corrupted checkpoint ----------------------------------------------------------------------
def _flip_pages(d: Path) -> None:
    pages = sorted((d / "checkpoint").glob("pages-*.img"))[0]
    data = bytearray(pages.read_bytes())
    data[len(data) // 3] ^= 0x5A
    pages.write_bytes(bytes(data))


def _drop_inventory(d: Path) -> None:
    (d / "checkpoint" / "inventory.img").unlink()


def _truncate_manifest(d: Path) -> None:
    text = (d / "manifest.json").read_text()
    (d / "manifest.json").write_text(text[: len(text) // 2])


def _shorten_core(d: Path) -> None:
    core = sorted((d / "checkpoint").glob("core-*.img"))[0]
    core.write_bytes(core.read_bytes()[:-8])


CORRUPTIONS = {"flipped page byte": _flip_pages, "missing image": _drop_inventory,
               "truncated manifest": _truncate_manifest, "shortened core image": _shorten_core}


def test_corrupted_checkpoint(lab: Lab, namespace: str, helper: HelperProcess) -> None:
    lab.apply(counter_pod("counter", interval_ms=100), namespace)
    lab.apply(sleeper_pod("target"), namespace)
    lab.wait_pod_running(namespace, "counter")
    lab.wait_pod_running(namespace, "target")
    lab.wait_log(namespace, "counter", r"count=5\b")
    good = helper.checkpoint(namespace, "counter", path=f"{namespace}-good")
    assert good.status_code == 200, good.text
    source = Path(good.json()["checkpoint_path"])
    for what, corrupt in CORRUPTIONS.items():
        copy = helper.checkpoint_dir / f"{namespace}-{what.replace(' ', '-')}"
        shutil.copytree(source, copy)
        corrupt(copy)
        answer = helper.restore(namespace, "target", path=str(copy))
        lost = 0
        try:
            assert answer.status_code == 422, answer.text
            assert answer.json()["code"] == "checkpoint_corrupted"
            assert "count=" not in lab.logs(namespace, "target")
            assert_survives(lab, namespace, "counter", r"count=(\d+)")
            target = lab.wait_pod_running(namespace, "target")
            assert target["status"]["containerStatuses"][0]["restartCount"] == 0
        except AssertionError:
            lost = 1
            raise
        finally:
            add_fault("corrupted checkpoint", 1, lost, 0, what)
    # the intact one still restores
    assert helper.restore(namespace, "target", path=str(source)).status_code == 200
    lab.wait_log(namespace, "target", r"count=\d+")


# -- the placeholder pod deleted during a restore ------------------------------------------------
@pytest.mark.parametrize("delay_s", [0.05, 0.4])
def test_placeholder_deleted_during_restore(lab: Lab, namespace: str, helper: HelperProcess,
                                            delay_s: float) -> None:
    lab.apply(memhog_pod("hog", 512), namespace)
    lab.wait_pod_running(namespace, "hog")
    lab.wait_log(namespace, "hog", r"beat=2\b", timeout=60)
    ckpt = helper.checkpoint(namespace, "hog", leave_running=True)
    assert ckpt.status_code == 200, ckpt.text
    checkpoint_id = ckpt.json()["checkpoint_id"]
    placeholder = sleeper_pod("target")
    placeholder["spec"]["terminationGracePeriodSeconds"] = 0
    lab.apply(placeholder, namespace)
    lab.wait_pod_running(namespace, "target")
    answers: list[requests.Response] = []
    worker = threading.Thread(target=lambda: answers.append(
        helper.restore(namespace, "target", checkpoint_id=checkpoint_id)), daemon=True)
    worker.start()
    time.sleep(delay_s)
    lab.kubectl("-n", namespace, "delete", "pod", "target", "--grace-period=0", "--force",
                "--wait=false")
    worker.join(300)
    lost = 0
    try:
        assert answers, "the restore never answered"
        assert answers[0].status_code in (200, 404, 409, 500), answers[0].text
        if answers[0].status_code >= 400:
            assert answers[0].json()["code"] in ("restore_failed", "container_not_found",
                                                 "container_not_running",
                                                 "target_incompatible"), answers[0].text
        assert helper.get("/healthz").status_code == 200
        assert_survives(lab, namespace, "hog")
        # the checkpoint is still listed complete and restores into a new placeholder
        (entry,) = entries(helper, namespace)
        assert entry["id"] == checkpoint_id and entry["status"] == "complete"
        lab.apply(sleeper_pod("second"), namespace)
        lab.wait_pod_running(namespace, "second")
        again = helper.restore(namespace, "second", checkpoint_id=checkpoint_id)
        assert again.status_code == 200, again.text
        lab.wait_log(namespace, "second", r"memhog mib=512 beat=\d+ sum=\d+ ok=1")
    except AssertionError:
        lost = 1
        raise
    finally:
        add_fault("placeholder deleted during restore", 1, lost, 0, f"after {delay_s} s")
