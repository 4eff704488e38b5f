"""A restore into the same pod keeps its clients' TCP connections (issue 18 point 8, same-node
half), on the lab.

A restored pod has another address, so a connection can only survive a restore into the
network namespace it lives in: the same pod. `checkpoint --hold-connections` stops the
container with its connections held (dropped both ways in the pod's namespace, the sockets
closed in repair mode); `restore --into` the same pod takes them over. The client sees a pause:
its requests during the hold are retransmitted by its kernel and answered by the restored
process, and every answer it gets is the one after the last (nothing lost, nothing repeated).
"""
from __future__ import annotations

import json
import queue
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.e2e.lab import (
    Lab,
    cedana,
    create_namespace,
    delete_namespace,
    helper_daemonset_lock,
    install_helpers,
    pod_manifest,
)
from tests.e2e.test_postgres import PSQL, postgres_pod, sql, wait_serving

PORT = 7000


@pytest.fixture(scope="module", autouse=True)
def installed(lab: Lab) -> Iterator[None]:
    with helper_daemonset_lock():
        install_helpers(lab)
        yield


@dataclass
class Caller:
    """Asks on one connection, one request at a time, as long as it runs: never resends
    (a request is answered or the connection ends), so each answer is the next count."""

    connection: socket.socket
    answers: list[int] = field(default_factory=list)
    longest_wait_s: float = 0.0
    ended: str = ""
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        self.connection.settimeout(1)
        while not self.stop.is_set():
            asked = time.monotonic()
            try:
                self.connection.sendall(b"next\n")
                line = b""
                while not line.endswith(b"\n"):
                    try:
                        chunk = self.connection.recv(64)
                    except TimeoutError:
                        if time.monotonic() - asked > 120:
                            self.ended = "no answer in 120 s"
                            return
                        continue
                    if not chunk:
                        self.ended = "closed by the server"
                        return
                    line += chunk
            except OSError as exc:
                self.ended = f"{type(exc).__name__}: {exc}"
                return
            self.longest_wait_s = max(self.longest_wait_s, time.monotonic() - asked)
            match = re.fullmatch(rb"served=(\d+)\n", line)
            if not match:
                self.ended = f"unexpected answer {line!r}"
                return
            self.answers.append(int(match.group(1)))
            time.sleep(0.1)


def _checkpoint_id(out: str) -> str:
    return out.strip().splitlines()[-1]


def _restored_server(lab: Lab, namespace: str) -> str:
    """A TCP server restored into a placeholder pod, srv-1 (what a same-pod restore works on:
    the placeholder's pause stays while the restored tree is stopped); its address."""
    lab.apply(pod_manifest("srv", ["/usr/local/bin/unixpeer", "tcp", str(PORT)]), namespace)
    lab.wait_pod_running(namespace, "srv")
    lab.wait_log(namespace, "srv", r"serving tcp port")
    first = cedana(lab, "-n", namespace, "checkpoint", "srv", "--storage", "local")
    assert first.returncode == 0, first.stderr
    restored = cedana(lab, "-n", namespace, "restore", _checkpoint_id(first.stdout),
                      "--new-pod", "srv-1")
    assert restored.returncode == 0, restored.stderr
    return str(lab.wait_pod_running(namespace, "srv-1")["status"]["podIP"])


def test_a_restore_into_the_same_pod_keeps_a_clients_connection(
        lab: Lab, namespace: str) -> None:
    address = _restored_server(lab, namespace)
    caller = Caller(socket.create_connection((address, PORT), timeout=10))
    thread = threading.Thread(target=caller.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while len(caller.answers) < 5 and not caller.ended and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(caller.answers) >= 5, caller
        before = len(caller.answers)
        held = cedana(lab, "-n", namespace, "checkpoint", "srv-1", "-c", "main",
                      "--hold-connections", "--storage", "local")
        assert held.returncode == 0, held.stderr
        # the tree is gone, the pause stays; the client hears nothing, not a reset
        assert not caller.ended, caller.ended
        back = cedana(lab, "-n", namespace, "restore", _checkpoint_id(held.stdout),
                      "--into", "srv-1", "-c", "main")
        assert back.returncode == 0, back.stderr
        deadline = time.monotonic() + 90
        while len(caller.answers) < before + 10 and not caller.ended \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        # read while the client still holds its connection (closing it is a drop)
        server_log = lab.logs(namespace, "srv-1")
    finally:
        caller.stop.set()
        thread.join(130)
        caller.connection.close()
    assert not caller.ended, caller.ended
    assert len(caller.answers) >= before + 10, (caller.answers, caller.longest_wait_s)
    # one process, its count in memory: every answer the next, none lost or repeated, across
    # the restore
    start = caller.answers[0]
    assert caller.answers == list(range(start, start + len(caller.answers))), caller.answers
    # the client did wait for the restore (its request went unanswered for a while: answers
    # take about a millisecond; the hold, from the stop to the restored process, ~0.3 s and up)
    assert caller.longest_wait_s > 0.1, caller.longest_wait_s
    # the restored server kept the connection: it never saw it break
    assert "connection dropped" not in server_log, server_log
    pod = lab.pod(namespace, "srv-1")
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0


def test_a_restore_elsewhere_of_a_held_checkpoint_closes_the_connection(
        lab: Lab, namespace: str) -> None:
    """The held connections are taken over only in their own pod: restored into a new pod,
    the server finds them closed (CRIU's --tcp-close) and serves new ones, and the client of
    the old pod is told (its next request is reset) instead of waiting for its timeout."""
    address = _restored_server(lab, namespace)
    connection = socket.create_connection((address, PORT), timeout=10)
    connection.sendall(b"x\n")
    served = int(re.fullmatch(rb"served=(\d+)\n", connection.recv(64)).group(1))  # type: ignore[union-attr]
    held = cedana(lab, "-n", namespace, "checkpoint", "srv-1", "-c", "main",
                  "--hold-connections", "--storage", "local")
    assert held.returncode == 0, held.stderr
    moved = cedana(lab, "-n", namespace, "restore", _checkpoint_id(held.stdout),
                   "--new-pod", "srv-2")
    assert moved.returncode == 0, moved.stderr
    again = socket.create_connection(
        (lab.wait_pod_running(namespace, "srv-2")["status"]["podIP"], PORT), timeout=10)
    again.sendall(b"x\n")
    assert again.recv(64) == f"served={served + 1}\n".encode()
    again.close()
    # the hold in srv-1 is lifted: no socket answers there any more
    connection.settimeout(30)
    with pytest.raises(ConnectionResetError):
        connection.sendall(b"x\n")
        connection.recv(64)
    connection.close()
    lab.wait_log(namespace, "srv-2", r"connection dropped")


def test_hold_connections_is_refused_with_leave_running_and_to_another_tenant(
        lab: Lab, namespace: str) -> None:
    """The field adds no way in: a tenant with every cedana right in its own namespace cannot
    hold (or stop) a pod of another, and the API server refuses holdConnections with
    leaveRunning (the container would go on with its connections dropped)."""
    lab.apply(pod_manifest("private", ["/usr/local/bin/unixpeer", "tcp", str(PORT)]), namespace)
    lab.wait_pod_running(namespace, "private")
    body = {"apiVersion": "cedana.io/v1alpha1", "kind": "Checkpoint",
            "metadata": {"name": "hold"},
            "spec": {"podName": "private", "container": "main", "holdConnections": True}}
    invalid = lab.kubectl("-n", namespace, "create", "-f", "-", input=json.dumps(body),
                          check=False)
    assert invalid.returncode != 0 and "set leaveRunning to false" in invalid.stderr, invalid
    refused_cli = cedana(lab, "-n", namespace, "checkpoint", "private", "--hold-connections",
                         "--leave-running")
    assert refused_cli.returncode == 2 and "drop --leave-running" in refused_cli.stderr
    # a container whose program is its init would end with it: refused, nothing stopped
    not_restored = cedana(lab, "-n", namespace, "checkpoint", "private", "-c", "main",
                          "--hold-connections", "--name", "not-restored")
    assert not_restored.returncode != 0
    assert "needs a restored pod" in not_restored.stderr, not_restored.stderr
    tenant = create_namespace(lab, "hold-tenant")
    try:
        lab.kubectl("-n", tenant, "create", "rolebinding", "cedana", "--clusterrole=cedana-edit",
                    f"--serviceaccount={tenant}:default")
        user = f"system:serviceaccount:{tenant}:default"
        body["spec"]["leaveRunning"] = False  # type: ignore[index]
        refused = lab.kubectl("--as", user, "-n", namespace, "create", "-f", "-",
                              input=json.dumps(body), check=False)
        assert refused.returncode != 0 and "forbidden" in refused.stderr.lower(), refused
    finally:
        delete_namespace(lab, tenant)
    pod = lab.pod(namespace, "private")
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    assert pod["status"]["containerStatuses"][0].get("state", {}).get("running")
    # only the refused one, Failed with nothing kept
    listed = json.loads(lab.kubectl("-n", namespace, "get", "checkpoints.cedana.io", "-o",
                                    "json").stdout)["items"]
    assert [(o["metadata"]["name"], o["status"]["phase"], o["status"]["errorCode"])
            for o in listed] == [("not-restored", "Failed", "invalid_request")]
    assert not listed[0]["status"].get("checkpointID")


class PsqlSession:
    """One psql client session in the pod (kubectl exec), connected over TCP to 127.0.0.1:
    one backend process of the server for its whole life, whatever happens to the server."""

    def __init__(self, lab: Lab, namespace: str, pod: str) -> None:
        self.proc = subprocess.Popen(
            ["kubectl", "-n", namespace, "exec", "-i", pod, "--", PSQL, "-X", "-q", "-A", "-t",
             "-h", "127.0.0.1", "-U", "postgres", "-v", "ON_ERROR_STOP=1"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            bufsize=1, env=lab.env())
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put("<eof>")

    def ask(self, query: str, timeout: float = 120) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(query + "\n")
        self.proc.stdin.flush()
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no answer to {query!r} in {timeout} s") from None

    def close(self) -> str:
        """Ends the session; what psql said on its standard error."""
        if self.proc.returncode is None:
            if self.proc.stdin and not self.proc.stdin.closed:
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.stderr is not None
        return self.proc.stderr.read() if not self.proc.stderr.closed else ""


def test_a_postgres_client_keeps_its_session_and_transaction_across_a_same_pod_restore(
        lab: Lab, namespace: str) -> None:
    """Issue 22: PostgreSQL restored into db-2; a client's session (one backend process) with a
    transaction open is held through `checkpoint --hold-connections` and `restore --into db-2`:
    the same backend answers afterwards and the transaction begun before commits after."""
    lab.apply(postgres_pod("db"), namespace)
    lab.wait_pod_running(namespace, "db")
    wait_serving(lab, namespace, "db")
    sql(lab, namespace, "db", "create table t (id serial primary key, v int not null)")
    sql(lab, namespace, "db", "insert into t (v) select g from generate_series(1, 100) g")
    started = sql(lab, namespace, "db", "select pg_postmaster_start_time()")
    taken = cedana(lab, "-n", namespace, "checkpoint", "db", "--storage", "local")
    assert taken.returncode == 0, taken.stderr
    restored = cedana(lab, "-n", namespace, "restore", _checkpoint_id(taken.stdout),
                      "--new-pod", "db-2")
    assert restored.returncode == 0, restored.stderr
    wait_serving(lab, namespace, "db-2")

    session = PsqlSession(lab, namespace, "db-2")
    try:
        backend = session.ask("select pg_backend_pid();")
        assert backend.isdigit(), (backend, session.close())  # closed: psql's words
        assert session.ask("begin; insert into t (v) values (1000); select 'open';") == "open"
        held = cedana(lab, "-n", namespace, "checkpoint", "db-2", "-c", "main",
                      "--hold-connections", "--storage", "local")
        assert held.returncode == 0, held.stderr
        back = cedana(lab, "-n", namespace, "restore", _checkpoint_id(held.stdout),
                      "--into", "db-2", "-c", "main")
        assert back.returncode == 0, back.stderr
        # the same backend, its transaction still open: it commits now
        answer = session.ask("insert into t (v) values (1001); commit; "
                             "select pg_backend_pid() || ' ' || count(*) from t where v >= 1000;")
        assert answer == f"{backend} 2", (answer, session.close())
    finally:
        errors = session.close()
    assert "server closed the connection" not in errors, errors
    assert sql(lab, namespace, "db-2", "select pg_postmaster_start_time()") == started
    assert sql(lab, namespace, "db-2", "select count(*) from t", tcp=True) == "102"
