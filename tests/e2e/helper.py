"""Run the node helper as a root process on the lab's node, as its privileged pod would."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import psutil
import requests

from tests.e2e.lab import LAB_DIR, REPO, RUNC_ROOT


class RssSampler:
    """The peak resident memory of one process, sampled every 20 ms while the block runs.

    `samples` counts the readings; a reading that fails (the process gone) is kept in `error`
    and raised when the block ends, so a dead sampler never passes for a small peak."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self.error: psutil.Error | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:  # at least one reading, however short the block
            try:
                rss = self.process.memory_info().rss
            except psutil.Error as e:
                self.error = e
                return
            self.peak = max(self.peak, rss)
            self.samples += 1
            if self.stop.wait(self.interval):
                return

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        assert not self.thread.is_alive(), "the RSS sampler did not stop"
        if exc_type is None and self.error is not None:
            raise AssertionError(f"RSS sampling failed: {self.error!r}")


#: the registry prefixes the host helpers may use the node's credentials for: each test
#: namespace's rootfs images, and the shared base images the tests push
HOST_HELPER_REGISTRY_PREFIXES = ("127.0.0.1:5000/rootfs/{namespace}", "127.0.0.1:5000/lab")
#: runc's root of the CRI-O style containers the tests make with podman
CRIO_RUNC_ROOT = "/run/runc"


def host_helpers_signing_key() -> Path:
    """The signing key the host helpers of the tests share (made once, 32 random bytes)."""
    key = LAB_DIR / "test-helpers" / "signing.key"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        tmp = key.with_suffix(f".{os.getpid()}")
        tmp.write_bytes(os.urandom(32))
        tmp.chmod(0o600)
        try:
            os.link(tmp, key)  # racing workers: the first key stays, every helper reads it
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class HelperProcess:
    url: str
    checkpoint_dir: Path
    proc: subprocess.Popen[bytes]
    log_path: Path

    def get(self, path: str, **kw: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=kw.pop("timeout", 120), **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> requests.Response:
        return requests.post(self.url + path, json=body, timeout=kw.pop("timeout", 300), **kw)

    def delete(self, path: str, **kw: Any) -> requests.Response:
        return requests.delete(self.url + path, timeout=kw.pop("timeout", 60), **kw)

    def checkpoint(self, namespace: str, pod: str, container: str = "main", *,
                   path: str = "", leave_running: bool = True, **extra: Any) -> requests.Response:
        data = {"container_name": container, "sandbox_name": pod, "namespace": namespace,
                "checkpoint_path": path, "root": RUNC_ROOT}
        return self.post("/checkpoint", {"checkpoint_data": data, "leave_running": leave_running,
                                         **extra})

    def restore(self, namespace: str, pod: str, container: str = "main", *,
                path: str = "", checkpoint_id: str = "") -> requests.Response:
        data: dict[str, str] = {"container_name": container, "sandbox_name": pod,
                                "namespace": namespace, "root": RUNC_ROOT}
        if path:
            data["checkpoint_path"] = path
        if checkpoint_id:
            data["checkpoint_id"] = checkpoint_id
        return self.post("/restore", {"checkpoint_data": data})

    def alive(self) -> bool:
        try:
            return self.get("/healthz", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_helper(name: str, checkpoint_dir: Path | None = None, *,
                 extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None, runtime_root: str = RUNC_ROOT,
                 prefix: list[str] | None = None) -> HelperProcess:
    """The helper as a root process; `prefix` runs it through a command such as nsenter."""
    port = _free_port()
    cdir = checkpoint_dir or LAB_DIR / "test-helpers" / name / "checkpoints"
    cdir.mkdir(parents=True, exist_ok=True)
    log_path = LAB_DIR / "logs" / f"test-helper-{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    extra = list(extra_args or [])
    if "--authorization" not in extra:  # plain requests from the tests: trust them (loopback)
        extra += ["--authorization", "none"]
    if "--registry-prefix" not in extra:  # where the tests push and pull rootfs images
        extra += [arg for prefix in HOST_HELPER_REGISTRY_PREFIXES
                  for arg in ("--registry-prefix", prefix)]
    if "--reconcile" not in extra:  # the DaemonSet's helpers reconcile the cluster's objects
        extra += ["--no-reconcile"]
    if "--signing-key" not in extra:  # one key for every host helper: they verify each other
        extra += ["--signing-key", str(host_helpers_signing_key())]
    roots = [runtime_root] + ([CRIO_RUNC_ROOT] if runtime_root == RUNC_ROOT else [])
    cmd = [*(prefix or []), sys.executable, "-m", "sidecar.cli", "serve", "--host", "127.0.0.1",
           "--port", str(port), "--checkpoint-dir", str(cdir),
           *[arg for root in roots for arg in ("--runtime-root", root)], *extra]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "NODE_NAME": "cedana-lab-node1",
                                     **(env or {})},
                                start_new_session=True)
    helper = HelperProcess(f"http://127.0.0.1:{port}", cdir, proc, log_path)
    end = time.monotonic() + 30
    while not helper.alive():
        if proc.poll() is not None or time.monotonic() > end:
            raise AssertionError(f"helper did not start: {helper.log_text()[-3000:]}")
        time.sleep(0.2)
    return helper


def stop_helper(helper: HelperProcess) -> None:
    if helper.proc.poll() is None:
        os.killpg(helper.proc.pid, signal.SIGTERM)
        try:
            helper.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(helper.proc.pid, signal.SIGKILL)
            helper.proc.wait(10)
