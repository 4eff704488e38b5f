"""Shared pieces of the helper's unit tests: recorded runc roots, live processes, fake tools,
the application in-process and the helper as a real process (their fixtures: conftest.py)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from sidecar.config import HelperConfig
from sidecar.storage.signing import SigningKey

REPO = Path(__file__).resolve().parents[2]

FIXTURES = Path(__file__).parent / "fixtures" / "runc"
RUNC_ROOTS = {
    "containerd": "host/run/containerd/runc/k8s.io",
    "k3s": "host/run/containerd/runc/k8s.io",
    "crio": "host/run/runc",
}
DEAD_PID = 999_999_999  # above any pid_max


def cid(ch: str) -> str:
    return ch * 64


COUNTER = cid("b")
COUNTER_LEFTOVER = cid("c")
FIRST = cid("e")
SECOND = cid("f")
HELPER = cid("2")
CRIO_NGINX = cid("6")
POD_FIRST_UID = "8c2d5a77-1f3b-4c71-b3e0-0d9f2c4a6b12"
POD = "counter-5f7c9d8b4-x2kqp"  # the pod of COUNTER in the recorded roots

#: a process that holds an io_uring instance (prints "ready" once it does)
IO_URING_HOLDER = textwrap.dedent("""
    import ctypes, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    params = ctypes.create_string_buffer(120)
    fd = libc.syscall(425, 4, params)  # io_uring_setup
    print("ready" if fd >= 0 else f"unsupported {ctypes.get_errno()}", flush=True)
    time.sleep(300)
""")


def proc_start_ticks(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rfind(")") + 2:].split()[19])


def install_runc_root(kind: str, dest: Path, live: dict[str, int] | None = None) -> Path:
    """Copy a recorded layout under dest; containers in `live` get that pid, others a dead one.

    Returns the runc root (below a `host/` prefix, as a helper pod mounting the host sees it).
    """
    live = live or {}
    shutil.copytree(FIXTURES / kind, dest / kind)
    root = dest / kind / RUNC_ROOTS[kind]
    for state_file in root.glob("*/state.json"):
        state = json.loads(state_file.read_text())
        pid = live.get(state["id"])
        state["init_process_pid"] = pid or DEAD_PID
        state["init_process_start"] = proc_start_ticks(pid) if pid else 1
        state_file.write_text(json.dumps(state))
    return root


def bundle_of(root: Path, container_id: str) -> Path:
    state = json.loads((root / container_id / "state.json").read_text())
    label = next(x for x in state["config"]["labels"] if x.startswith("bundle="))
    bundle = label.split("=", 1)[1]
    host = root
    while host.name != "host":
        host = host.parent
    return Path(str(host) + bundle)


@contextmanager
def process(*args: str, ready: str | None = None) -> Iterator[subprocess.Popen[str]]:
    """Run a helper process for the length of a test; optionally wait for a line on stdout."""
    proc = subprocess.Popen(list(args), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True)
    try:
        if ready is not None:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert ready in line, f"process did not get ready: {line!r}"
        yield proc
    finally:
        stop(proc)


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "300"], stdin=subprocess.DEVNULL)


def write_script(path: Path, body: str) -> Path:
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


FAKE_RUNC = """
    import json, os, sys
    from pathlib import Path

    here = Path(__file__).parent
    args = sys.argv[1:]
    if args == ["--version"]:
        print("runc version 1.1.5+fake\\ncommit: test\\nspec: 1.0.2-dev")
        sys.exit(0)
    (here / "runc-args.json").write_text(json.dumps(args))
    import shutil
    (here / "runc-criu.txt").write_text(os.path.realpath(shutil.which("criu") or ""))
    value = lambda flag: args[args.index(flag) + 1]
    images, work = Path(value("--image-path")), Path(value("--work-path"))
    if (here / "runc-slow").exists():
        import time
        time.sleep(float((here / "runc-slow").read_text()))
    if (here / "runc-fail").exists():
        (work / "dump.log").write_text(
            "".join(f"({i:08d}) line {i}\\n" for i in range(100))
            + "Error (criu/sk-inet.c:188): inet: Connected TCP socket, consider using "
              "--tcp-established option.\\n")
        print("criu failed: type NOTIFY errno 0", file=sys.stderr)
        sys.exit(1)
    (images / "inventory.img").write_bytes(b"\\x54\\x3a\\x5f\\x58" + os.urandom(60))
    (images / "pages-1.img").write_bytes(os.urandom(3 * 4096))
    (images / "descriptors.json").write_text(
        json.dumps(["/dev/null", "pipe:[4242001]", "pipe:[4242002]"]))
    (work / "dump.log").write_text("(00.000100) Dumping finished successfully\\n")
    (work / "stats-dump").write_bytes(b"\\x01\\x02stats")
"""

FAKE_CRIU = """
    import json, os, sys
    from pathlib import Path

    here = Path(__file__).parent
    args = sys.argv[1:]
    if args in (["--version"], ["-V"]):
        print("Version: 4.1.1")
        sys.exit(0)
    value = lambda flag: args[args.index(flag) + 1]
    work = Path(value("--work-dir"))
    inherited = [a for i, a in enumerate(args) if i and args[i - 1] == "--inherit-fd"]
    fds_open = {}
    for item in inherited:
        fd = int(item[item.index("[") + 1:item.index("]")])
        try:
            os.fstat(fd)
            fds_open[item] = True
        except OSError:
            fds_open[item] = False
    report = {
        "args": args,
        "fds_open": fds_open,
        "cgroup": Path("/proc/self/cgroup").read_text(),
        "pid_ns": os.readlink("/proc/self/ns/pid"),
        "mnt_ns": os.readlink("/proc/self/ns/mnt"),
        "proc_1_cmdline": Path("/proc/1/cmdline").read_bytes().decode(errors="replace"),
    }
    (here / "criu-report.json").write_text(json.dumps(report))
    (work / "restore.log").write_text(
        "".join(f"({i:08d}) restore line {i}\\n" for i in range(60)))
    if (here / "criu-fail").exists():
        (work / "restore.log").open("a").write("Error (criu/mount.c:1234): No mapping for /x\\n")
        sys.exit(1)
    Path(value("--pidfile")).write_text(os.environ["FAKE_CRIU_RESTORED_VPID"] + "\\n")
"""


def fake_tools(directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    return (write_script(directory / "runc", FAKE_RUNC),
            write_script(directory / "criu", FAKE_CRIU))


def wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def is_root() -> bool:
    return os.geteuid() == 0


#: the cluster's signing key of the tests (what the Secret cedana-signing-key holds)
CLUSTER_KEY = bytes(range(7, 7 + 48))


def cluster_key(secret: bytes = CLUSTER_KEY) -> SigningKey:
    return SigningKey(secret, "tests", shared=True)


def write_signing_key(path: Path, secret: bytes = CLUSTER_KEY) -> Path:
    """A --signing-key file holding `secret`, 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(secret)
    path.chmod(0o600)
    return path


def make_config(tmp_path: Path, **settings: Any) -> HelperConfig:
    """A helper with the fake tools below tmp_path; `settings` replace any field (without
    signing_key_file it signs with its node's own key)."""
    runc_path, criu_path = fake_tools(tmp_path / "tools")
    return HelperConfig(**{
        "checkpoint_dir": tmp_path / "checkpoints",
        "runtime_root": tmp_path / "no-default-root",
        # the roots install_runc_root lays out: the only ones requests may name
        "runtime_roots": tuple(tmp_path / kind / root for kind, root in RUNC_ROOTS.items()),
        "registry_prefixes": ("127.0.0.1:5000/x",),
        "runc_path": str(runc_path),
        "criu_path": str(criu_path),
        "criu_runc_config": tmp_path / "etc" / "criu" / "runc.conf",
        "node_name": "node-1",
        **settings,
    })


def pod_process() -> subprocess.Popen[str]:
    """A stand-in for a container's init: a shell with one child, stdout on a pipe."""
    proc = subprocess.Popen(["sh", "-c", "sleep 300 & wait"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, text=True)
    import psutil
    wait_for(lambda: len(psutil.Process(proc.pid).children()) == 1)
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    """Kill a process started by a test and everything it started."""
    import psutil
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for child in children:
        with suppress(psutil.NoSuchProcess):
            child.kill()
    proc.kill()
    proc.wait()


class HelperApp:
    """The helper's application in-process (TestClient) over a recorded containerd root whose
    COUNTER container is a live process."""

    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        from fastapi.testclient import TestClient

        from sidecar.http.app import create_app
        from sidecar.node.locks import ContainerLocks

        self.source = pod_process()
        self.root = install_runc_root("containerd", tmp_path, {COUNTER: self.source.pid})
        self.config: HelperConfig = make_config(tmp_path, **settings)
        self.locks = ContainerLocks()
        self.client = TestClient(create_app(self.config, locks=self.locks,
                                            **self.app_options()))

    def app_options(self) -> dict[str, Any]:
        """More arguments of create_app (a subclass may check callers, for one)."""
        return {}

    def checkpoint_body(self, **data: object) -> dict[str, object]:
        base: dict[str, object] = {"container_name": "counter", "sandbox_name": POD,
                                   "namespace": "default", "root": str(self.root)}
        base.update(data)
        return {"checkpoint_data": base, "leave_running": True}


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    """A JSON error answer with that status and code, and a message for a person."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    return body


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def helper_process(home: Path, *args: str) -> Iterator[str]:
    """`cedana-helper serve` as a real process on loopback, its state below `home`; yields its
    URL once /healthz answers. `args` are added to the command line (the reconciler of
    cedana.io objects stays off: these helpers serve the REST API only)."""
    port = free_port()
    (home / "runc").mkdir(exist_ok=True)
    log = (home / "helper.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "serve", "--host", "127.0.0.1", "--port",
         str(port), "--checkpoint-dir", str(home / "checkpoints"), "--runtime-root",
         str(home / "runc"), "--criu-runc-config", str(home / "criu-runc.conf"),
         "--no-reconcile", *args],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        env=dict(os.environ, NODE_NAME="node1", PYTHONPATH=str(REPO)))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2):
                    break
            except OSError as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("the helper did not start: " + (
                        home / "helper.log").read_text(errors="replace")) from exc
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def route_table() -> set[tuple[str, str]]:
    """(method, path) of every route of the helper."""
    from fastapi.routing import APIRoute

    from sidecar.http import routes

    return {(method, route.path) for router in routes.ROUTERS for route in router.routes
            if isinstance(route, APIRoute) for method in route.methods or ()}
