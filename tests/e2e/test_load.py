"""Load on one helper (a host process on the lab's node): 200 concurrent /list requests, 5
concurrent checkpoints of different containers, concurrent operations on one container (409),
and the helper's memory (RSS, sampled with psutil) staying bounded. Figures go to the
reliability report."""
from __future__ import annotations

import concurrent.futures
import shutil
import time

import psutil
import pytest

from tests.e2e.helper import RssSampler, start_helper, stop_helper
from tests.e2e.lab import Lab, counter_pod
from tests.reliability import record_figures

pytestmark = pytest.mark.e2e

RSS_LIMIT_MIB = 400


def test_load(lab: Lab, namespace: str) -> None:
    pods = [f"c{i}" for i in range(5)]
    for pod in pods:
        lab.apply(counter_pod(pod, interval_ms=200), namespace)
    for pod in pods:
        lab.wait_pod_running(namespace, pod)
        lab.wait_log(namespace, pod, r"count=3\b")
    # the load itself is measured here, above the default limits (64 connections, 4 operations
    # a namespace: their refusals are tests/unit/sidecar_limits_test.py's and
    # sidecar_http_limits_test.py's)
    helper = start_helper(f"load-{namespace[-6:]}", extra_args=[
        "--max-connections", "256", "--max-operations-per-namespace", "8"])
    try:
        process = psutil.Process(helper.proc.pid)
        assert helper.get(f"/list/{namespace}").status_code == 200  # warm
        rss_start = process.memory_info().rss
        with RssSampler(helper.proc.pid) as sampler:
            # 200 concurrent listings
            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(200) as pool:
                lists = list(pool.map(lambda _i: helper.get(f"/list/{namespace}", timeout=120),
                                      range(200)))
            list_seconds = time.monotonic() - started
            assert [r.status_code for r in lists] == [200] * 200
            assert all(len(r.json()) == 5 for r in lists)
            # 5 concurrent checkpoints of different containers, and 3 more of c0 at once
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                different = [pool.submit(helper.checkpoint, namespace, pod) for pod in pods]
                same = [pool.submit(helper.checkpoint, namespace, "c0") for _ in range(3)]
                done = [f.result() for f in different]
                conflicts = [f.result() for f in same]
            # one checkpoint of each container succeeds; c0 got 4 requests at once: one wins
            # (one of the 5 or one of the 3), the others get 409
            answers = list(zip(pods, done)) + [("c0", r) for r in conflicts]
            assert all(r.status_code in (200, 409) for _pod, r in answers), \
                [r.text for _pod, r in answers]
            won = {pod for pod, r in answers if r.status_code == 200}
            checkpoints_ok = len(won)
            refused = [r for _pod, r in answers if r.status_code == 409]
            assert all(r.json()["code"] == "operation_in_progress" for r in refused)
        rss_end = process.memory_info().rss
        ids = {e["id"] for e in helper.get("/checkpoints").json()["checkpoints"]}
        assert {r.json()["checkpoint_id"] for _pod, r in answers if r.status_code == 200} <= ids
        mib = 1 << 20
        figures = {
            "list_concurrent": 200, "list_ok": sum(r.status_code == 200 for r in lists),
            "list_seconds": round(list_seconds, 2),
            "checkpoints_concurrent": 5, "checkpoints_ok": checkpoints_ok,
            "same_container_requests": 4, "same_container_409": len(refused),
            "rss_start_mib": round(rss_start / mib, 1), "rss_peak_mib": round(sampler.peak / mib, 1),
            "rss_end_mib": round(rss_end / mib, 1), "rss_limit_mib": RSS_LIMIT_MIB,
        }
        record_figures("load", figures)
        assert checkpoints_ok == 5 and len(refused) == 3, figures
        # the sampler measured the helper (a peak of 0 would pass the limit vacuously)
        assert sampler.samples > 0 and sampler.peak >= rss_start, (sampler.samples, figures)
        assert sampler.peak < RSS_LIMIT_MIB * mib, figures
        # every workload kept running (leave_running)
        for pod in pods:
            last = int(lab.wait_log(namespace, pod, r"count=(\d+)").group(1))
            lab.wait_log(namespace, pod, rf"count={last + 2}\b")
    finally:
        stop_helper(helper)
        shutil.rmtree(helper.checkpoint_dir.parent, ignore_errors=True)
