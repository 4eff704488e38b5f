"""cedana-enter-cgroups (sidecar/node/enter_cgroups.c), the first link of every restore's
chain in the helper's image: it joins the cgroups the helper found, waits when told to, and
becomes the command; every failure is exit 125 with its reason, and nothing runs."""
from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from sidecar.node import cgroups


@pytest.fixture
def enter(c_programs: dict[str, str]) -> str:
    return c_programs["cedana-enter-cgroups"]


@pytest.fixture
def child_cgroups() -> Iterator[list[Path]]:
    """A new child of each v1 cgroup of this process that can have one (root only)."""
    made = []
    for found in cgroups.process_cgroup_dirs(os.getpid()):
        if found.mount.version != 1 or not os.access(found.directory, os.W_OK) \
                or "cpuset" in found.membership.controllers:  # (a child needs cpus and mems)
            continue
        child = Path(found.directory) / f"cedana-enter-{uuid.uuid4().hex[:8]}"
        try:
            child.mkdir()
        except OSError:
            continue
        made.append(child)
    if not made:
        pytest.skip("no writable v1 cgroup to make a child of (needs root on cgroup v1)")
    yield made
    for child in made:
        with suppress(OSError):
            child.rmdir()


def test_joins_every_cgroup_given_then_becomes_the_command(enter: str,
                                                           child_cgroups: list[Path]) -> None:
    args = [enter, *[a for c in child_cgroups for a in ("--procs", str(c / "cgroup.procs"))],
            "--", "cat", "/proc/self/cgroup"]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    for child in child_cgroups:
        assert f":{_cgroup_path(child)}\n" in done.stdout, (child, done.stdout)


def _cgroup_path(child: Path) -> str:
    """The path /proc/PID/cgroup shows for a child cgroup directory."""
    for found in cgroups.process_cgroup_dirs(os.getpid()):
        if str(child).startswith(found.mount.mountpoint.rstrip("/") + "/"):
            inside = str(child)[len(found.mount.mountpoint.rstrip("/")):]
            root = found.mount.root.rstrip("/")
            return (root + inside) if root else inside
    raise AssertionError(f"{child} is under no hierarchy of this process")


def test_a_cgroup_it_cannot_join_stops_everything(enter: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    done = subprocess.run([enter, "--procs", str(tmp_path / "no-such" / "cgroup.procs"), "--",
                           "touch", str(marker)], capture_output=True, text=True, check=False)
    assert done.returncode == 125
    assert "cannot join" in done.stderr and "No such file" in done.stderr
    assert not marker.exists()


@pytest.mark.parametrize("args, why", [
    (["--", "true"], "no --procs"),
    (["--procs", "/x"], "a command to run is required"),
    (["--bogus", "1", "--", "true"], "unknown option"),
])
def test_bad_command_lines_are_refused(enter: str, args: list[str], why: str) -> None:
    done = subprocess.run([enter, *args], capture_output=True, text=True, check=False)
    assert done.returncode == 125 and why in done.stderr, done.stderr


def test_waits_for_the_path_then_runs(enter: str, child_cgroups: list[Path],
                                      tmp_path: Path) -> None:
    socket_path = tmp_path / "lazy-pages.socket"
    procs = ["--procs", str(child_cgroups[0] / "cgroup.procs")]
    timer = threading.Timer(0.3, socket_path.touch)
    timer.start()
    started = time.monotonic()
    done = subprocess.run([enter, *procs, "--wait-for", str(socket_path), "--wait-pid",
                           str(os.getpid()), "--wait-timeout", "10", "--", "echo", "ran"],
                          capture_output=True, text=True, check=False)
    timer.join()
    assert done.returncode == 0 and done.stdout == "ran\n", done.stderr
    assert time.monotonic() - started >= 0.25  # it did wait


def test_gives_up_when_the_daemon_is_gone_or_time_is_up(enter: str, child_cgroups: list[Path],
                                                        tmp_path: Path) -> None:
    procs = ["--procs", str(child_cgroups[0] / "cgroup.procs")]
    gone = subprocess.Popen(["true"])
    gone.wait()
    for wait in (["--wait-pid", str(gone.pid), "--wait-timeout", "10"],
                 ["--wait-timeout", "0.2"]):
        done = subprocess.run([enter, *procs, "--wait-for", str(tmp_path / "never"), *wait,
                               "--", "touch", str(tmp_path / "ran")],
                              capture_output=True, text=True, check=False)
        assert done.returncode == 125 and "did not appear" in done.stderr, done.stderr
    assert not (tmp_path / "ran").exists()
