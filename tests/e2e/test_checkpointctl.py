"""checkpointctl reads a checkpoint the helper made (issue 20, point 4, first item).

The helper's checkpoint directory follows the layout of the archives the kubelet's checkpoint
API and CRI-O write (config.dump, spec.dump, checkpoint/, rootfs-diff.tar, stats-dump, ...), so
an archive of it is one `checkpointctl show` and `checkpointctl inspect` read (checkpointctl
v1.6.0 built from its Go module by hack/build-go.sh).
"""
from __future__ import annotations

import json
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.lab import (
    WORKLOAD_IMAGE,
    Lab,
    cedana,
    counter_pod,
    helper_daemonset_lock,
    install_helpers,
)

CHECKPOINTCTL = "/var/cache/kubectl-cedana/bin/checkpointctl"  # hack/build-go.sh's LAB_BIN
CHECKPOINT_DIR = Path("/var/lib/cedana/checkpoints")  # node 1's helper's, as the host sees it


@pytest.fixture(scope="module", autouse=True)
def installed(lab: Lab) -> Iterator[None]:
    with helper_daemonset_lock():
        install_helpers(lab)
        yield


def checkpointctl(*args: str) -> str:
    done = subprocess.run([CHECKPOINTCTL, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_checkpointctl_shows_and_inspects_a_helper_checkpoint(lab: Lab, namespace: str,
                                                              tmp_path: Path) -> None:
    lab.apply(counter_pod("read-me", interval_ms=200), namespace)
    lab.wait_pod_running(namespace, "read-me")
    lab.wait_log(namespace, "read-me", r"count=3\b")
    taken = cedana(lab, "-n", namespace, "checkpoint", "read-me", "--leave-running",
                   "--storage", "local", "-o", "json")
    assert taken.returncode == 0, taken.stderr
    ident = json.loads(taken.stdout)["status"]["checkpointID"]
    archive = tmp_path / f"checkpoint-read-me-{ident}.tar"
    with tarfile.open(archive, "w") as tar:
        for member in sorted((CHECKPOINT_DIR / ident).iterdir()):
            tar.add(member, arcname=member.name)
    shown = checkpointctl("show", str(archive))
    assert "main" in shown and WORKLOAD_IMAGE in shown and "runc" in shown, shown
    inspected = json.loads(checkpointctl("inspect", "--all", "--format", "json", str(archive)))
    text = json.dumps(inspected)
    # the pod it came from; the process tree CRIU dumped, with its command; CRIU's
    # statistics; the pod's mounts
    assert f'"{namespace}"' in text and '"read-me"' in text, text[:2000]
    assert "/usr/local/bin/counter" in text, text[:2000]
    assert "/etc/hosts" in text, text[:2000]
    assert "freezing_time" in text or "frozen_time" in text, text[:2000]
