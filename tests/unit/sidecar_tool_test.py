"""What keeps a dump from outliving the helper, with real processes and a real freezer cgroup:
the CRIU guard dies with its parent, a new helper finds and stops the runc/CRIU its predecessor
left working in its directory (and nothing else), and a frozen container is stopped only as it
is thawed."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.node import freezer, proctree, tool

SLEEP = shutil.which("sleep") or "/bin/sleep"
TAIL = shutil.which("tail") or "/usr/bin/tail"


def gone_within(pid: int, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while proctree.alive(pid):
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def spawn_grandchild(argv: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], int]:
    """A parent (standing in for runc) that starts argv and reports its PID, then waits."""
    code = ("import subprocess, sys, time\n"
            "child = subprocess.Popen(sys.argv[1:])\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", code, *argv], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, **env})
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    return parent, pid


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(params=["python", "c"])
def guard(request: pytest.FixtureRequest) -> str:
    """Both guards: the Python entry point pip installs, the C one the helper image runs."""
    if request.param == "c":
        return str(request.getfixturevalue("c_programs")["cedana-criu-guard"])
    found = tool.find_criu_guard("auto")
    assert found, "cedana-criu-guard is not installed beside the interpreter (pip install -e .)"
    return found


def test_guarded_program_dies_with_its_parent(guard: str) -> None:
    parent, child = spawn_grandchild([guard, "600"], {tool.CRIU_GUARD_ENV: SLEEP})
    try:
        time.sleep(0.3)  # the guard has become sleep
        assert os.readlink(f"/proc/{child}/exe") == os.path.realpath(SLEEP)
        parent.kill()
        parent.wait(10)
        assert gone_within(child, 10), "the guarded program outlived its parent"
    finally:
        kill(child)


def test_without_the_guard_the_program_outlives_its_parent() -> None:
    """The control: what the guard is there to prevent does happen without it."""
    parent, child = spawn_grandchild([SLEEP, "600"], {})
    try:
        parent.kill()
        parent.wait(10)
        time.sleep(0.5)
        assert proctree.alive(child)
    finally:
        kill(child)


def test_guard_runs_the_real_program_with_its_arguments_and_status(guard: str,
                                                                    tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run([guard, "-c", f"echo \"$0|$1\" > {out}; exit 7", "zero", "a b"],
                          env={**os.environ, tool.CRIU_GUARD_ENV: "/bin/sh"}, check=False)
    assert done.returncode == 7
    assert out.read_text() == "zero|a b\n"
    missing = subprocess.run([guard], env={**os.environ, tool.CRIU_GUARD_ENV: "/nonexistent"},
                             capture_output=True, text=True, check=False)
    assert missing.returncode == 125 and "cannot run /nonexistent" in missing.stderr


def test_find_criu_guard_choices() -> None:
    assert tool.find_criu_guard("none") == ""
    assert tool.find_criu_guard("/opt/x/guard") == "/opt/x/guard"
    assert Path(tool.find_criu_guard("auto")).name == tool.CRIU_GUARD_NAME


def test_stop_stragglers_kills_only_the_named_programs_working_in_the_directory(
        tmp_path: Path) -> None:
    ours = tmp_path / "checkpoints"
    (ours / ".tmp-x").mkdir(parents=True)
    other = tmp_path / "elsewhere"
    other.mkdir()
    held = open(ours / ".tmp-x" / "pages-1.img", "wb")
    procs = {
        # the named program with an open file in the directory (CRIU writing pages)
        "fd": subprocess.Popen([SLEEP, "600"], stdout=held),
        # ... or working in it (runc's work path)
        "cwd": subprocess.Popen([SLEEP, "600"], cwd=ours / ".tmp-x"),
        # the named program elsewhere: left alone
        "elsewhere": subprocess.Popen([SLEEP, "600"], cwd=other),
        # another program in the directory: left alone
        "other-program": subprocess.Popen([TAIL, "-f", "/dev/null"], cwd=ours),
    }
    held.close()
    try:
        assert sorted(proctree.working_in([SLEEP], ours)) == sorted([procs["fd"].pid,
                                                                procs["cwd"].pid])
        stopped = proctree.stop_stragglers([SLEEP, "no-such-program"], ours)
        assert sorted(stopped) == sorted([procs["fd"].pid, procs["cwd"].pid])
        assert procs["fd"].wait(10) == -signal.SIGKILL
        assert procs["cwd"].wait(10) == -signal.SIGKILL
        assert procs["elsewhere"].poll() is None and procs["other-program"].poll() is None
        assert proctree.working_in([SLEEP], ours) == {}
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait(10)


@pytest.fixture
def cgroup_member() -> Iterator[subprocess.Popen[bytes]]:
    """A process alone in a new freezer cgroup (v1 freezer or v2 cgroup.freeze)."""
    if Path("/sys/fs/cgroup/freezer/freezer.state").parent.is_dir() and \
            Path("/sys/fs/cgroup/freezer").is_mount():
        directory = Path("/sys/fs/cgroup/freezer") / f"cedana-unit-{uuid.uuid4().hex[:8]}"
    elif Path("/sys/fs/cgroup/cgroup.controllers").exists():
        directory = Path("/sys/fs/cgroup") / f"cedana-unit-{uuid.uuid4().hex[:8]}"
    else:
        pytest.skip("no cgroup freezer on this machine")
    try:
        directory.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a cgroup here: {exc}")
    proc = subprocess.Popen([SLEEP, "600"])
    try:
        (directory / "cgroup.procs").write_text(str(proc.pid))
        yield proc
    finally:
        proc.kill()
        proc.wait(10)
        for state in ("freezer.state", "cgroup.freeze"):
            if (directory / state).exists():
                (directory / state).write_text("THAWED" if state == "freezer.state" else "0")
        for _ in range(50):
            try:
                directory.rmdir()
                break
            except OSError:
                time.sleep(0.05)


def test_a_frozen_process_is_stopped_only_when_thawed(cgroup_member: subprocess.Popen[bytes],
                                                      tmp_path: Path) -> None:
    pid = cgroup_member.pid
    pidfd = os.pidfd_open(pid)
    try:
        with freezer.frozen(pid, "test process", tmp_path / "journal") as is_frozen:
            assert is_frozen
            assert list((tmp_path / "journal").glob("*.json"))  # a dead helper's heir thaws it
            assert freezer.kill_frozen(pid, "test process") == 1
            time.sleep(0.3)
            assert cgroup_member.poll() is None  # signalled, but frozen: not dead yet
        assert freezer.wait_gone(pidfd, 10)
        assert cgroup_member.wait(10) == -signal.SIGKILL
        assert not (tmp_path / "journal").exists()
    finally:
        os.close(pidfd)


def test_thaw_remembered_thaws_what_a_dead_helper_froze(cgroup_member: subprocess.Popen[bytes],
                                                        tmp_path: Path) -> None:
    pid = cgroup_member.pid
    journal = tmp_path / "journal"
    frozen = freezer.frozen(pid, "test process", journal)
    frozen.__enter__()  # and never left: the helper "dies" here
    state = Path(json.loads(next(journal.glob("*.json")).read_text())["state"])
    # v1 freezer.state, or v2 cgroup.freeze
    assert state.read_text().strip() in ("FROZEN", "1"), (state, state.read_text())
    assert freezer.thaw_remembered(journal) == [str(state)]
    # running again: it answers a signal that needs it to run
    os.kill(pid, signal.SIGTERM)
    assert cgroup_member.wait(10) == -signal.SIGTERM


def test_first_criu_error_is_the_cause_not_a_benign_line(tmp_path: Path) -> None:
    log = tmp_path / "dump.log"
    log.write_text(
        "(00.000100) Version: 4.2\n"
        "(00.000200) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: "
        "Operation not permitted\n"
        "(00.100000) Error (criu/image.c:210): Unable to write 4096 bytes: No space left on "
        "device\n"
        "(00.100100) Error (criu/cr-dump.c:1975): Dumping FAILED.\n")
    assert tool.first_criu_error(log) == \
        "Error (criu/image.c:210): Unable to write 4096 bytes: No space left on device"
    log.write_text("(00.1) Dumping finished successfully\n")
    assert tool.first_criu_error(log) == ""
    assert tool.first_criu_error(tmp_path / "missing.log") == ""
