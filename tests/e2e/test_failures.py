"""A dump CRIU refuses, through the cedana.io objects on the lab: the user reads CRIU's own
reason (not runc's closing line), `--debug` shows the end of CRIU's log, the Checkpoint's status
keeps it and names where the whole log is kept on the node, and the workload runs on."""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.lab import Lab, cedana, helper_daemonset_lock, install_helpers, pod_manifest

#: what CRIU 4.x says of a process tree with a pid namespace of its own inside the container
NESTED = "Can't dump nested pid namespace"


@pytest.fixture(scope="module", autouse=True)
def installed(lab: Lab) -> Iterator[None]:
    with helper_daemonset_lock():
        install_helpers(lab)
        yield


def test_criu_s_reason_reaches_the_user_and_its_log_stays(lab: Lab, namespace: str) -> None:
    # a process in a pid namespace of its own, which CRIU cannot dump
    script = "unshare -p -f sleep 3600 & exec /usr/local/bin/counter /tmp/counter 100"
    pod = pod_manifest("nested", ["/bin/sh", "-c", script])
    pod["spec"]["containers"][0]["securityContext"] = {"capabilities": {"add": ["SYS_ADMIN"]}}
    lab.apply(pod, namespace)
    lab.wait_pod_running(namespace, "nested")
    lab.wait_log(namespace, "nested", r"count=5\b")
    failed = cedana(lab, "-n", namespace, "--debug", "checkpoint", "nested", "--leave-running")
    assert failed.returncode != 0
    error = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and NESTED in error[0] and "[dump_failed]" in error[0], error
    assert "debug: the end of CRIU's log" in failed.stderr
    (obj,) = json.loads(lab.kubectl("-n", namespace, "get", "checkpoints.cedana.io", "-o",
                                    "json").stdout)["items"]
    status = obj["status"]
    assert status["phase"] == "Failed" and status["errorCode"] == "dump_failed"
    assert NESTED in status["message"] and "Dumping FAILED" in status["criuLog"]
    # the whole log, on the node (the helper's checkpoint directory is the host's)
    kept = Path(status["criuLogPath"])
    assert kept.parent == Path("/var/lib/cedana/checkpoints/.failed-logs")
    assert NESTED in kept.read_text()
    # nothing was kept of the checkpoint, and the workload runs on, never restarted
    assert not (Path("/var/lib/cedana/checkpoints") / str(status.get("checkpointID"))).exists()
    last = max(int(n) for n in re.findall(r"count=(\d+)", lab.logs(namespace, "nested")))
    lab.wait_log(namespace, "nested", rf"count={last + 3}\b")
    assert lab.pod(namespace, "nested")["status"]["containerStatuses"][0]["restartCount"] == 0
