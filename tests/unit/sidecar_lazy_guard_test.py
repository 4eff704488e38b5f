"""Post-copy on the restoring node: the guard of the lazy-pages daemon
(sidecar/node/lazy_guard.c as the helper's image builds it, and sidecar/node/lazy_guard.py, its
fallback), with real processes (a `sleep` stands in for the restored tree, `sh` for the
daemon), and the CRIU command lines of a post-copy dump, restore and daemon
(sidecar/node/criu.py)."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from sidecar.node import criu, enter_cgroups, lazy_guard
from tests.unit.sidecar_support import REPO

WAIT_S = 10.0


@pytest.fixture()
def restored() -> Iterator[subprocess.Popen[bytes]]:
    """The restored process the guard watches over."""
    proc = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(WAIT_S)


Guard = Callable[[Sequence[str], str, Sequence[int]], int]


@pytest.fixture(params=["c", "python"])
def run_guard(request: pytest.FixtureRequest) -> Guard:
    """The guard, run on a command, a pidfile and the descriptors its daemon keeps: its exit
    status. "c": the cedana-lazy-guard program; "python": lazy_guard.guard in this process."""
    if request.param == "python":
        return lambda command, pidfile, keep: lazy_guard.guard(command, pidfile, keep)
    program = request.getfixturevalue("c_programs")["cedana-lazy-guard"]

    def run(command: Sequence[str], pidfile: str, keep: Sequence[int]) -> int:
        keeps = [arg for fd in keep for arg in ("--keep-fd", str(fd))]
        done = subprocess.run([program, "--pidfile", pidfile, *keeps, "--", *command],
                              pass_fds=tuple(keep), stdin=subprocess.DEVNULL,
                              timeout=WAIT_S, check=False)
        for fd in keep:  # as lazy_guard.guard does with its own copies
            os.close(fd)
        return done.returncode
    return run


def _pidfile(tmp_path: Path, pid: int) -> str:
    path = tmp_path / "restore.pid"
    path.write_text(f"{pid}\n", encoding="ascii")
    return str(path)


def _still_runs(proc: subprocess.Popen[bytes]) -> bool:
    try:
        proc.wait(0.2)
    except subprocess.TimeoutExpired:
        return True
    return False


# -- the guard -------------------------------------------------------------------------------
def test_a_daemon_that_ends_early_gets_the_restored_process_killed(
        tmp_path: Path, restored: subprocess.Popen[bytes], run_guard: Guard) -> None:
    pidfile = _pidfile(tmp_path, restored.pid)
    assert run_guard(["sh", "-c", "exit 3"], pidfile, []) == 3
    assert restored.wait(WAIT_S) == -signal.SIGKILL


def test_a_restored_root_that_is_no_namespace_init_goes_with_everything_below_it(
        tmp_path: Path, run_guard: Guard) -> None:
    """Killing the init of a pid namespace ends every process in it; a root that is not one
    (here: in the test's own namespace) leaves its children behind, so the guard kills them."""
    root = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & wait"],
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + WAIT_S
        while len(lazy_guard.descendants(root.pid)) < 2:
            assert time.monotonic() < deadline, "the root's children did not start"
            time.sleep(0.02)
        below = lazy_guard.descendants(root.pid)
        assert run_guard(["sh", "-c", "exit 3"], _pidfile(tmp_path, root.pid), []) == 3
        assert root.wait(WAIT_S) == -signal.SIGKILL
        for child in below:
            deadline = time.monotonic() + WAIT_S
            while os.path.exists(f"/proc/{child}") and _state(child) != "Z":
                assert time.monotonic() < deadline, f"child {child} still runs"
                time.sleep(0.02)
    finally:
        if root.poll() is None:
            root.kill()
            root.wait(WAIT_S)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return ""


def test_the_guard_watches_a_pidfile_written_while_the_daemon_runs(
        tmp_path: Path, restored: subprocess.Popen[bytes], run_guard: Guard) -> None:
    """CRIU writes the pidfile once the restore is done, while the daemon already runs: the
    guard opens the restored process then (its pidfd) and kills it when the daemon fails."""
    pidfile = tmp_path / "restore.pid"
    writer = threading.Timer(0.2, lambda: pidfile.write_text(f"{restored.pid}\n"))
    writer.start()
    try:
        code = run_guard(["sh", "-c", "sleep 0.6; exit 4"], str(pidfile), [])
    finally:
        writer.cancel()
    assert code == 4
    assert restored.wait(WAIT_S) == -signal.SIGKILL


def test_a_daemon_that_ends_well_leaves_the_restored_process_running(
        tmp_path: Path, restored: subprocess.Popen[bytes], run_guard: Guard) -> None:
    pidfile = _pidfile(tmp_path, restored.pid)
    assert run_guard(["sh", "-c", "sleep 0.2; exit 0"], pidfile, []) == 0
    assert _still_runs(restored)


@pytest.mark.parametrize("pidfile_text", [None, "", "not a pid\n", "999999999\n"])
def test_a_daemon_that_fails_before_the_restore_kills_nothing(
        tmp_path: Path, restored: subprocess.Popen[bytes], pidfile_text: str | None,
        run_guard: Guard) -> None:
    """No pidfile yet (or not a readable one, or naming no process): the daemon's status,
    nothing killed, nothing raised."""
    pidfile = tmp_path / "restore.pid"
    if pidfile_text is not None:
        pidfile.write_text(pidfile_text)
    assert run_guard(["sh", "-c", "exit 7"], str(pidfile), []) == 7
    assert _still_runs(restored)


def test_a_daemon_that_cannot_start_is_a_setup_failure(
        tmp_path: Path, restored: subprocess.Popen[bytes], run_guard: Guard) -> None:
    pidfile = _pidfile(tmp_path, restored.pid)
    code = run_guard([str(tmp_path / "no-such-criu"), "lazy-pages"], pidfile, [])
    assert code == lazy_guard.EXIT_SETUP_FAILED
    assert _still_runs(restored)


def test_the_daemon_alone_keeps_the_descriptor_it_inherits(tmp_path: Path) -> None:
    """--keep-fd: the daemon writes through the descriptor; the guard closes its own copy (the
    connection ends when the daemon does). (A Python daemon: sh's `>&N` takes only N < 10.)"""
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)
    hup = signal.getsignal(signal.SIGHUP)
    ended = False  # the pipe ended: the guard closed write_end (its number may be reused)
    try:
        code = lazy_guard.main(["--pidfile", str(tmp_path / "restore.pid"), "--keep-fd",
                                str(write_end), "--", sys.executable, "-c",
                                f"import os; os.write({write_end}, b'hi\\n')"])
        assert code == 0
        seen = b""
        while not ended:
            readable, _, _ = select.select([read_end], [], [], WAIT_S)
            assert readable, f"the pipe did not end (read {seen!r}): a copy is left open"
            chunk = os.read(read_end, 100)
            seen += chunk
            ended = not chunk
        assert seen == b"hi\n"
    finally:
        signal.signal(signal.SIGHUP, hup)
        os.close(read_end)
        if not ended:
            os.close(write_end)


def test_the_c_guards_daemon_alone_keeps_the_descriptor_it_inherits(
        tmp_path: Path, c_programs: dict[str, str]) -> None:
    """cedana-lazy-guard --keep-fd N: the daemon writes through N, and while it runs the guard
    holds no copy of it (the connection ends when the daemon does, not when the guard does)."""
    read_end, write_end = os.pipe()
    try:
        guard = subprocess.Popen(
            [c_programs["cedana-lazy-guard"], "--pidfile", str(tmp_path / "restore.pid"),
             "--keep-fd", str(write_end), "--", sys.executable, "-c",
             f"import os, time; os.write({write_end}, b'hi\\n'); time.sleep(1)"],
            pass_fds=(write_end,), stdin=subprocess.DEVNULL)
        os.close(write_end)
        write_end = -1
        readable, _, _ = select.select([read_end], [], [], WAIT_S)
        assert readable and os.read(read_end, 100) == b"hi\n"
        assert guard.poll() is None  # the daemon sleeps: the guard waits for it
        held = {os.readlink(f"/proc/{guard.pid}/fd/{fd}")
                for fd in os.listdir(f"/proc/{guard.pid}/fd")}
        assert f"pipe:[{os.fstat(read_end).st_ino}]" not in held, held
        assert guard.wait(WAIT_S) == 0
        assert os.read(read_end, 100) == b""  # the daemon's end closed with it
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


def test_the_c_guard_is_what_restore_runs(tmp_path: Path,
                                          restored: subprocess.Popen[bytes],
                                          c_programs: dict[str, str]) -> None:
    """`cedana-lazy-guard --pidfile F -- criu lazy-pages ...` (ops/restore.py, in the helper's
    image): the daemon's status is the guard's, the restored process is killed when it failed,
    and the guard says so in the words of the Python one (its log is read by the helper)."""
    pidfile = _pidfile(tmp_path, restored.pid)
    done = subprocess.run([c_programs["cedana-lazy-guard"], "--pidfile", pidfile, "--",
                           "sh", "-c", "kill -9 $$"],
                          capture_output=True, text=True, timeout=WAIT_S, check=False)
    assert done.returncode == 256 - signal.SIGKILL, done.stderr  # as Python's sys.exit(-9)
    assert ("lazy_guard: the lazy-pages daemon ended with status -9 before every page "
            "arrived: the restored process was killed") in done.stderr
    assert restored.wait(WAIT_S) == -signal.SIGKILL


@pytest.mark.parametrize("argv", [["--pidfile", "/nonexistent", "--"],
                                  ["--", "true"],
                                  ["--pidfile", "/nonexistent", "--keep-fd", "x", "--", "true"],
                                  ["--pidfile", "/nonexistent", "--what", "--", "true"]])
def test_the_c_guard_refuses_a_wrong_command_line(c_programs: dict[str, str],
                                                  argv: list[str]) -> None:
    done = subprocess.run([c_programs["cedana-lazy-guard"], *argv], capture_output=True,
                          text=True, timeout=WAIT_S, check=False)
    assert done.returncode == 125 and "usage: cedana-lazy-guard" in done.stderr


def test_the_guard_as_restore_runs_it(tmp_path: Path,
                                      restored: subprocess.Popen[bytes]) -> None:
    """`python -m sidecar.node.lazy_guard --pidfile F -- criu lazy-pages ...` (ops/restore.py):
    the daemon's status is the guard's, and the restored process is killed when it failed."""
    pidfile = _pidfile(tmp_path, restored.pid)
    done = subprocess.run(
        [sys.executable, "-m", "sidecar.node.lazy_guard", "--pidfile", pidfile, "--",
         "sh", "-c", "exit 5"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
        timeout=WAIT_S, check=False)
    assert done.returncode == 5, done.stderr
    assert "the restored process was killed" in done.stderr
    assert restored.wait(WAIT_S) == -signal.SIGKILL


def test_the_guard_needs_a_command() -> None:
    with pytest.raises(SystemExit) as refused:
        lazy_guard.main(["--pidfile", "/nonexistent", "--"])
    assert refused.value.code == 2


# -- CRIU's command lines for post-copy ------------------------------------------------------
def _after(args: list[str], flag: str) -> str:
    assert args.count(flag) == 1, args
    return args[args.index(flag) + 1]


def _dump_plan(lazy_socket_fd: int = -1, status_fd: int = -1) -> criu.DumpPlan:
    return criu.DumpPlan(pid=42, images_dir=Path("/i"), work_dir=Path("/w"), netns_inode=7,
                         lazy_socket_fd=lazy_socket_fd, status_fd=status_fd)


def test_a_lazy_dump_serves_on_its_connected_socket_never_a_port() -> None:
    plan = _dump_plan(lazy_socket_fd=11, status_fd=12)
    args = criu.dump_args("criu", plan)
    assert "--lazy-pages" in args
    assert _after(args, "--ps-socket") == "11"
    assert _after(args, "--status-fd") == "12"
    assert "--address" not in args and "--port" not in args
    assert plan.passed_fds == (11, 12)


def test_a_dump_without_post_copy_has_none_of_it() -> None:
    for plan in (_dump_plan(), _dump_plan(status_fd=12)):
        args = criu.dump_args("criu", plan)
        assert not {"--lazy-pages", "--ps-socket", "--status-fd"} & set(args)
    assert _dump_plan().passed_fds == ()


def test_a_post_copy_restore_takes_its_memory_from_the_daemon() -> None:
    plan = criu.RestorePlan(images_dir=Path("/c/checkpoint"), root="/r", work_dir=Path("/w"),
                            pidfile=Path("/w/p"), netns_fd=3, lazy_pages=True)
    assert "--lazy-pages" in criu.restore_args("criu", plan)
    plain = criu.RestorePlan(images_dir=Path("/c/checkpoint"), root="/r", work_dir=Path("/w"),
                             pidfile=Path("/w/p"), netns_fd=3)
    assert "--lazy-pages" not in criu.restore_args("criu", plain)


def test_the_lazy_pages_daemon_asks_the_page_server_on_its_socket() -> None:
    args = criu.lazy_pages_args("criu", Path("/c/checkpoint"), Path("/w"), 9)
    assert args[:2] == ["criu", "lazy-pages"]
    assert "--page-server" in args
    assert _after(args, "--ps-socket") == "9"
    assert _after(args, "--images-dir") == "/c/checkpoint"
    assert _after(args, "--work-dir") == "/w"
    assert "--address" not in args and "--port" not in args


# -- enter_cgroups --wait-for: a post-copy restore starts alongside its daemon ------------------
def test_the_restore_waits_for_the_daemons_socket(tmp_path: Path) -> None:
    socket_path = tmp_path / "lazy-pages.socket"
    threading.Timer(0.3, socket_path.touch).start()
    started = time.monotonic()
    assert enter_cgroups.wait_for(str(socket_path), os.getpid(), 10.0)
    assert 0.2 < time.monotonic() - started < 5.0


def test_the_restore_gives_up_when_the_daemons_guard_is_gone(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    started = time.monotonic()
    assert not enter_cgroups.wait_for(str(tmp_path / "never"), gone.pid, 10.0)
    assert time.monotonic() - started < 5.0  # not the timeout: the guard's end
    assert not enter_cgroups.wait_for(str(tmp_path / "never"), 0, 0.2)
