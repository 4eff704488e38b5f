"""Bad input against the running helper: each gets its 4xx and code, nothing is lost, and the
helper keeps serving. Concurrent operations on one container are refused with 409."""
from __future__ import annotations

import concurrent.futures
import shutil
from pathlib import Path

import requests

from tests.e2e.helper import HelperProcess
from tests.e2e.lab import RUNC_ROOT, Lab, counter_pod, pod_manifest, sleeper_pod


def _data(ns: str, pod: str, **kw: str) -> dict[str, str]:
    return {"container_name": "main", "sandbox_name": pod, "namespace": ns, "root": RUNC_ROOT,
            **kw}


def test_bad_input_matrix(lab: Lab, namespace: str, helper: HelperProcess) -> None:
    lab.apply(counter_pod("counter", interval_ms=200), namespace)
    lab.apply(sleeper_pod("target"), namespace)
    lab.wait_pod_running(namespace, "counter")
    lab.wait_pod_running(namespace, "target")
    lab.wait_log(namespace, "counter", r"count=5")
    good = helper.checkpoint(namespace, "counter", leave_running=True)
    assert good.status_code == 200, good.text
    cid = good.json()["checkpoint_id"]

    cases: list[tuple[str, requests.Response, int, str]] = [
        ("missing fields", helper.post("/checkpoint", {"checkpoint_data": {"namespace": namespace}}),
         400, "invalid_request"),
        ("no body", helper.post("/checkpoint", None), 400, "invalid_request"),
        ("unknown namespace", helper.checkpoint("no-such-ns", "counter"), 404,
         "container_not_found"),
        ("unknown pod", helper.checkpoint(namespace, "no-such-pod"), 404, "container_not_found"),
        ("unknown container", helper.checkpoint(namespace, "counter", container="nope"), 404,
         "container_not_found"),
        ("path traversal", helper.checkpoint(namespace, "counter", path="../../../etc/evil"), 400,
         "invalid_request"),
        ("NUL in a path", helper.checkpoint(namespace, "counter", path="/tmp/a\x00b"), 400,
         "invalid_request"),
        ("a runc root of the caller's", helper.get(f"/list/{namespace}", params={"root": "/tmp"}),
         400, "invalid_request"),
        ("malformed json", requests.post(helper.url + "/checkpoint", data=b'{"checkpoint_data": {',
                                         headers={"Content-Type": "application/json"}, timeout=30),
         400, "invalid_request"),
        ("10 MiB body", requests.post(helper.url + "/checkpoint", data=b"{" + b" " * (10 << 20) + b"}",
                                      headers={"Content-Type": "application/json"}, timeout=60),
         413, "body_too_large"),
        ("restore target missing", helper.restore(namespace, "no-such-pod", checkpoint_id=cid), 404,
         "container_not_found"),
        ("unknown checkpoint id", helper.restore(namespace, "target",
                                                 checkpoint_id="00000000-0000-4000-8000-000000000000"),
         404, "checkpoint_not_found"),
        ("unknown route", helper.get("/no/such/route"), 404, "not_found"),
    ]
    for name, resp, status, code in cases:
        assert resp.status_code == status, (name, resp.status_code, resp.text)
        assert resp.json()["code"] == code, (name, resp.text)
        assert resp.json()["message"], name
    assert not Path("/etc/evil").exists()
    # a path outside the helper's directory is the checkpoint's name, kept inside the directory
    named = helper.checkpoint(namespace, "counter", path="/etc/evil", leave_running=True)
    assert named.status_code == 200, named.text
    stored = Path(named.json()["checkpoint_path"])
    assert stored.parent == helper.checkpoint_dir / ".by-path" and stored.is_dir()
    assert not Path("/etc/evil").exists()

    # a checkpoint with one flipped byte is refused before the target is touched
    src = Path(good.json()["checkpoint_path"])
    bad = helper.checkpoint_dir / f"{namespace}-flipped"
    shutil.copytree(src, bad)
    pages = sorted((bad / "checkpoint").glob("pages-*.img"))[0]
    blob = bytearray(pages.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    pages.write_bytes(bytes(blob))
    refused = helper.restore(namespace, "target", path=str(bad))
    assert refused.status_code == 422, refused.text
    assert refused.json()["code"] == "checkpoint_corrupted"
    assert "pages-" in refused.json()["message"]

    # nothing was lost: the source still counts, the target still sleeps, the helper serves
    pod = lab.wait_pod_running(namespace, "target")
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    assert "count=" not in lab.logs(namespace, "target")
    last = int(lab.wait_log(namespace, "counter", r"count=(\d+)").group(1))
    lab.wait_log(namespace, "counter", rf"count={last + 2}\b")
    assert helper.get("/healthz").json()["status"] == "ok"
    # and the intact checkpoint still restores into that target
    assert helper.restore(namespace, "target", path=str(src)).status_code == 200
    lab.wait_log(namespace, "target", r"count=\d+")


def test_one_operation_per_container(lab: Lab, namespace: str, helper: HelperProcess) -> None:
    for name in ("one", "two"):
        lab.apply(counter_pod(name, interval_ms=200), namespace)
    for name in ("one", "two"):
        lab.wait_pod_running(namespace, name)
        lab.wait_log(namespace, name, r"count=3")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        same = [pool.submit(helper.checkpoint, namespace, "one") for _ in range(3)]
        other = pool.submit(helper.checkpoint, namespace, "two")
        same_results = [f.result() for f in same]
        other_result = other.result()
    statuses = sorted(r.status_code for r in same_results)
    assert 200 in statuses, [r.text for r in same_results]
    conflicts = [r for r in same_results if r.status_code == 409]
    assert all(r.json()["code"] == "operation_in_progress" for r in conflicts)
    assert set(statuses) <= {200, 409}
    assert other_result.status_code == 200, other_result.text
    listed = helper.get("/checkpoints").json()
    entries = listed["checkpoints"] if isinstance(listed, dict) else listed
    ids = {e["id"] for e in entries}
    for r in same_results + [other_result]:
        if r.status_code == 200:
            assert r.json()["checkpoint_id"] in ids


def test_io_uring_process_is_refused(lab: Lab, namespace: str, helper: HelperProcess) -> None:
    lab.apply(pod_manifest("uring", ["/usr/local/bin/iouring"]), namespace)
    lab.wait_pod_running(namespace, "uring")
    lab.wait_log(namespace, "uring", r"iouring fd=\d+ beat=2")
    assert "fd=-1" not in lab.logs(namespace, "uring")  # it really holds an io_uring fd
    resp = helper.checkpoint(namespace, "uring", leave_running=False)
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert body["code"] == "io_uring_unsupported"
    assert "iouring" in body["message"]
    # refused before anything ran: the workload keeps running, nothing is in the catalogue
    beat = int(lab.wait_log(namespace, "uring", r"beat=(\d+)").group(1))
    lab.wait_log(namespace, "uring", rf"beat={beat + 2}\b")
    pod = lab.wait_pod_running(namespace, "uring")
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    listed = helper.get("/checkpoints").json()
    entries = listed["checkpoints"] if isinstance(listed, dict) else listed
    assert not [e for e in entries if e.get("namespace") == namespace]
