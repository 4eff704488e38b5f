"""Faults around the in-cluster helper, through the real plugin: the API server unreachable
from the plugin while it watches a Checkpoint (the helper finishes it all the same), and the
helper pod restarted between a checkpoint and its restore. Holds the helper DaemonSet lock and
leaves the DaemonSet as it found it."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.lab import REPO, Lab, counter_pod, helper_daemonset_lock, pod_manifest
from tests.reliability import add_fault

pytestmark = pytest.mark.e2e

VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"


def cedana(kubeconfig: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": kubeconfig, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    return subprocess.run([str(VENV_BIN / "kubectl-cedana"), *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def in_cluster_helper(lab: Lab) -> Iterator[None]:
    with helper_daemonset_lock():
        was_installed = lab.kubectl("-n", "cedana-system", "get", "daemonset", "cedana-helper",
                                    check=False).returncode == 0
        installed = cedana(lab.kubeconfig, "install", timeout=300)
        assert installed.returncode == 0, installed.stderr
        try:
            yield
        finally:
            if not was_installed:
                cedana(lab.kubeconfig, "uninstall", timeout=300)


class TcpProxy:
    """127.0.0.1:port -> the API server, until kill() cuts every connection at once and
    refuses new ones."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.dead = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _keep(self, sock: socket.socket) -> bool:
        """Track SOCK so kill() cuts it; after kill(), close it instead."""
        with self.lock:
            if not self.dead:
                self.sockets.append(sock)
                return True
        sock.close()
        return False

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if not self._keep(client):
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            if not self._keep(upstream):
                return
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass

    def kill(self) -> None:
        with self.lock:
            self.dead = True
            sockets, self.sockets = self.sockets, []
        # close() alone does not wake the accept() blocked in the other thread, which would
        # then let one more connection through; shutdown() does
        for sock in [self.server, *sockets]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def proxied_kubeconfig(lab: Lab, proxy: TcpProxy, path: Path) -> str:
    config = yaml.safe_load(Path(lab.kubeconfig).read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    path.write_text(yaml.safe_dump(config))
    return str(path)


CUTS_S = [0.3, 1.5, 4.0]


@pytest.mark.parametrize("cut_after_s", CUTS_S)
def test_api_server_unreachable_mid_checkpoint(lab: Lab, namespace: str, tmp_path: Path,
                                               in_cluster_helper: None,
                                               cut_after_s: float) -> None:
    lab.apply(pod_manifest("hog", ["/usr/local/bin/memhog", "768", "200"]), namespace)
    lab.wait_pod_running(namespace, "hog")
    lab.wait_log(namespace, "hog", r"beat=2\b", timeout=120)
    proxy = TcpProxy(("127.0.0.1", 6443))
    kubeconfig = proxied_kubeconfig(lab, proxy, tmp_path / "proxied.kubeconfig")
    env = {**os.environ, "KUBECONFIG": kubeconfig, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    started = time.monotonic()
    proc = subprocess.Popen([str(VENV_BIN / "kubectl-cedana"), "-n", namespace, "checkpoint",
                             "hog", "--leave-running"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(cut_after_s)
    exited_before_cut = proc.poll() is not None
    proxy.kill()
    out, err = proc.communicate(timeout=120)
    took = time.monotonic() - started
    # a fault was injected only if the cut came while the command still ran (or broke it)
    injected = 1 if proc.returncode != 0 or not exited_before_cut else 0
    lost = 0
    partial = 0
    try:
        if cut_after_s == min(CUTS_S):  # 0.3 s into a 768 MiB dump: the cut cannot miss it
            assert not exited_before_cut and proc.returncode != 0, (proc.returncode, out, err)
        checkpoint_id = ""
        if proc.returncode == 0:  # it finished before, or in spite of, the cut
            assert out.strip()
            checkpoint_id = out.strip().splitlines()[-1]
        else:
            assert "Traceback" not in err and err.count("\n") <= 2, err
            assert "error:" in err
        assert took < 90
        # the workload survives
        status = lab.wait_pod_running(namespace, "hog")["status"]["containerStatuses"][0]
        assert status["restartCount"] == 0
        beat = int(lab.wait_log(namespace, "hog", r"beat=(\d+)").group(1))
        lab.wait_log(namespace, "hog", rf"beat={beat + 2}\b", timeout=30)
        # a Checkpoint the plugin created goes on without it and ends (never Running forever);
        # the one it printed succeeded
        items = _final_checkpoints(lab, namespace)
        partial = len([o for o in items if o.get("status", {}).get("phase")
                       not in ("Succeeded", "Failed")])
        assert partial == 0, items
        if checkpoint_id:
            assert [o["status"]["phase"] for o in items
                    if o["status"].get("checkpointID") == checkpoint_id] == ["Succeeded"]
    except AssertionError:
        lost = 1
        raise
    finally:
        add_fault("API server unreachable from the plugin", injected, lost, partial,
                  f"cut after {cut_after_s} s")


def _final_checkpoints(lab: Lab, namespace: str, timeout: float = 180) -> list[dict[str, Any]]:
    """The namespace's Checkpoint objects once each is Succeeded or Failed (or the timeout)."""
    end = time.monotonic() + timeout
    while True:
        listed = cedana(lab.kubeconfig, "-n", namespace, "checkpoints", "ls", "-o", "json")
        assert listed.returncode == 0, listed.stderr
        items = list(json.loads(listed.stdout)["items"])
        if time.monotonic() > end or all(o.get("status", {}).get("phase") in
                                         ("Succeeded", "Failed") for o in items):
            return items
        time.sleep(1)


def helper_pods_on(lab: Lab, node: str) -> list[dict[str, Any]]:
    return list(json.loads(lab.kubectl("-n", "cedana-system", "get", "pods", "-l",
                                       "app.kubernetes.io/name=cedana-helper",
                                       "--field-selector", f"spec.nodeName={node}", "-o",
                                       "json").stdout)["items"])


def test_helper_pod_restarted_between_checkpoint_and_restore(lab: Lab, namespace: str,
                                                             in_cluster_helper: None) -> None:
    lab.apply(counter_pod("counter", interval_ms=200), namespace)
    pod = lab.wait_pod_running(namespace, "counter")
    lab.wait_log(namespace, "counter", r"count=5\b")
    ckpt = cedana(lab.kubeconfig, "-n", namespace, "checkpoint", "counter", "--leave-running")
    assert ckpt.returncode == 0, ckpt.stderr
    checkpoint_id = ckpt.stdout.strip().splitlines()[-1]
    node = pod["spec"]["nodeName"]
    helpers = helper_pods_on(lab, node)
    assert len(helpers) == 1, [p["metadata"]["name"] for p in helpers]
    old = helpers[0]["metadata"]["name"]
    lab.kubectl("-n", "cedana-system", "delete", "pod", old, "--wait=true", timeout=120)
    lab.kubectl("-n", "cedana-system", "rollout", "status", "daemonset/cedana-helper",
                "--timeout=120s", timeout=150)
    # the node's helper is a new pod, and Ready
    end = time.monotonic() + 60
    while True:
        now = helper_pods_on(lab, node)
        ready = [p["metadata"]["name"] for p in now
                 if p["metadata"]["name"] != old and not p["metadata"].get("deletionTimestamp")
                 and any(c["type"] == "Ready" and c["status"] == "True"
                         for c in p.get("status", {}).get("conditions", []))]
        if ready and old not in [p["metadata"]["name"] for p in now]:
            break
        assert time.monotonic() < end, [(p["metadata"]["name"], p.get("status")) for p in now]
        time.sleep(1)
    lost = 0
    try:
        listed = cedana(lab.kubeconfig, "-n", namespace, "checkpoints", "ls", "-o", "json")
        assert listed.returncode == 0, listed.stderr
        assert checkpoint_id in [o["status"].get("checkpointID")
                                 for o in json.loads(listed.stdout)["items"]]
        restored = cedana(lab.kubeconfig, "-n", namespace, "restore", checkpoint_id,
                          "--new-pod", "restored")
        assert restored.returncode == 0, restored.stderr
        lab.wait_log(namespace, "restored", r"count=\d+")
        last = int(lab.wait_log(namespace, "counter", r"count=(\d+)").group(1))
        lab.wait_log(namespace, "counter", rf"count={last + 2}\b")
    except AssertionError:
        lost = 1
        raise
    finally:
        add_fault("helper pod restarted between checkpoint and restore", 1, lost, 0)
