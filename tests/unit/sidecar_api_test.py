"""The REST contract at the HTTP boundary: statuses, error codes, bodies, request logs."""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from sidecar.config import HelperConfig
from sidecar.http.app import create_app
from sidecar.storage import signing
from tests.unit.sidecar_support import (
    COUNTER,
    FIRST,
    POD,
    HelperApp,
    assert_error,
    pod_process,
    proc_start_ticks,
    stop,
)


def test_health_and_version(app: HelperApp) -> None:
    assert app.client.get("/healthz").json() == {"status": "ok"}
    assert app.client.get("/version").json() == {
        "helper": "0.1.0", "runc": "1.1.5+fake", "criu": "4.1.1", "node": "node-1",
        "checkpoint_repository": "", "compression": "zstd",
        "retention": {"max_checkpoints_per_container": 0, "max_total_bytes": 0},
        "signing": {"key_id": signing.node_local_key(app.config.checkpoint_dir).key_id,
                    "shared": False}}


def test_list_with_body_query_and_default_root(app: HelperApp, tmp_path: Path) -> None:
    by_body = app.client.request("GET", "/list/default", json={"root": str(app.root)})
    assert by_body.status_code == 200
    names = sorted((c["sandbox_name"], c["container_name"], c["status"]) for c in by_body.json())
    assert names == [(POD, "counter", "running"), (POD, "counter", "stopped"),
                     ("two-containers", "first", "stopped"),
                     ("two-containers", "second", "stopped")]
    by_query = app.client.get("/list/default", params={"root": str(app.root)})
    assert by_query.json() == by_body.json()
    default_root = TestClient(create_app(HelperConfig(
        checkpoint_dir=tmp_path / "c2", runtime_root=app.root)))
    assert len(default_root.get("/list/kube-system").json()) == 1
    assert app.client.get("/list/empty-ns", params={"root": str(app.root)}).json() == []


def test_list_with_a_bad_root(app: HelperApp) -> None:
    body = assert_error(app.client.get("/list/default", params={"root": "/no/such/root"}),
                        400, "invalid_request")
    assert "/no/such/root" in str(body["message"])
    # naming none: every configured root this node has (the default one is absent here)
    unnamed = app.client.get("/list/default")
    assert unnamed.status_code == 200, unnamed.text
    assert {c["container_id"] for c in unnamed.json()} >= \
        {c["container_id"] for c in app.client.get("/list/default",
                                                   params={"root": str(app.root)}).json()}
    none_here = TestClient(create_app(HelperConfig(
        checkpoint_dir=app.root.parent / "c3", runtime_root=app.root.parent / "absent")))
    assert_error(none_here.get("/list/default"), 400, "invalid_request")


def test_malformed_json(app: HelperApp) -> None:
    response = app.client.post("/checkpoint", content=b'{"checkpoint_data": {',
                               headers={"content-type": "application/json"})
    body = assert_error(response, 400, "invalid_request")
    assert "not valid JSON" in str(body["message"])


def test_body_without_json_content_type(app: HelperApp) -> None:
    response = app.client.post("/checkpoint", content=json.dumps(app.checkpoint_body()),
                               headers={"content-type": "text/plain"})
    body = assert_error(response, 400, "invalid_request")
    assert "application/json" in str(body["message"])


def test_missing_fields_are_named(app: HelperApp) -> None:
    response = app.client.post("/checkpoint", json={"checkpoint_data": {"namespace": "default"}})
    body = assert_error(response, 400, "invalid_request")
    assert "checkpoint_data.container_name: field required" in str(body["message"])
    assert set(body["fields"]) == {"checkpoint_data.container_name",
                                   "checkpoint_data.sandbox_name"}
    assert_error(app.client.post("/checkpoint", json={}), 400, "invalid_request")
    wrong_type = app.client.post("/checkpoint", json={**app.checkpoint_body(),
                                                      "leave_running": "sometimes"})
    assert "leave_running" in str(assert_error(wrong_type, 400, "invalid_request")["message"])
    empty = app.client.post("/restore", json={"checkpoint_data": {
        "container_name": "", "sandbox_name": "p", "namespace": "n"}})
    assert "container_name" in str(assert_error(empty, 400, "invalid_request")["message"])


def test_ten_mib_body_is_refused(app: HelperApp) -> None:
    big = b'{"pad": "' + b"x" * (10 * 1024 * 1024) + b'"}'
    assert_error(app.client.post("/checkpoint", content=big,
                                 headers={"content-type": "application/json"}),
                 413, "body_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        for _ in range(20):
            yield b"x" * (512 * 1024)

    assert_error(app.client.post("/checkpoint", content=chunks(),
                                 headers={"content-type": "application/json"}),
                 413, "body_too_large")
    assert app.client.get("/healthz").status_code == 200  # still serving


def test_client_paths_are_names_never_host_paths(app: HelperApp, tmp_path: Path) -> None:
    """The seed's clients name checkpoints with paths such as /tmp/ckpt-N: a path outside the
    helper's directory is a name mapped inside it, never written or read where it points."""
    for path in ("../../etc", "a/../../x", "x\x00y", "/tmp/\nx", "/" + "a" * 2000):
        body = assert_error(app.client.post("/checkpoint", json=app.checkpoint_body(
            checkpoint_path=path)), 400, "invalid_request")
        assert body["fields"] == ["checkpoint_path"]
    assert not (Path(app.config.runc_path).parent / "runc-args.json").exists()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, app.config.checkpoint_dir / "escape")
    made = {}
    for path in (str(outside / "ckpt-1"), "escape/x"):
        answer = app.client.post("/checkpoint", json=app.checkpoint_body(checkpoint_path=path))
        assert answer.status_code == 200, answer.text
        stored = Path(answer.json()["checkpoint_path"])
        assert stored.parent == app.config.checkpoint_dir / ".by-path" and stored.is_dir()
        made[path] = stored
    assert list(outside.iterdir()) == []  # nothing where the paths point
    # the same path names the same checkpoint again, for a restore too
    again = app.client.post("/checkpoint", json=app.checkpoint_body(
        checkpoint_path=str(outside / "ckpt-1")))
    assert (again.status_code, again.json()["code"]) == (409, "checkpoint_exists")
    assert app.client.get(f"/checkpoints/{made[str(outside / 'ckpt-1')].name}").status_code \
        in (200, 404)


def test_unknown_route_and_wrong_method(app: HelperApp) -> None:
    assert_error(app.client.get("/nope"), 404, "not_found")
    response = app.client.get("/checkpoint")
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"
    assert_error(app.client.put("/checkpoints/x"), 405, "method_not_allowed")


def test_unknown_container(app: HelperApp) -> None:
    body = assert_error(app.client.post("/checkpoint", json=app.checkpoint_body(
        container_name="ghost")), 404, "container_not_found")
    assert "ghost" in str(body["message"])
    assert_error(app.client.post("/checkpoint", json=app.checkpoint_body(namespace="nope")),
                 404, "container_not_found")


def test_rootfs_routes_validate_before_acting(app: HelperApp, tmp_path: Path) -> None:
    ref = {"container_name": "counter", "sandbox_name": POD, "namespace": "default",
           "root": str(app.root)}
    routes = {"/checkpoint/rootfs": {"image_ref": "127.0.0.1:5000/x/y:1"},
              "/checkpoint/rootfs/crio": {"image_ref": "127.0.0.1:5000/x/y:1",
                                          "new_image_ref": "127.0.0.1:5000/x/y:2"},
              "/restore/rootfs": {"image_ref": "127.0.0.1:5000/x/y:1"}}
    for route, extra in routes.items():
        body = assert_error(app.client.post(route, json={"container_name": "c"}), 400,
                            "invalid_request")
        assert "image_ref" in body["fields"] and "sandbox_name" in body["fields"]
        body = assert_error(app.client.post(route, json={**ref, **extra,
                                                         "image_ref": "Not A Ref"}),
                            400, "invalid_request")
        assert "Not A Ref" in str(body["message"])
        assert_error(app.client.post(route, json={**ref, **extra, "container_name": "ghost"}),
                     404, "container_not_found")
    # only the administrator's containerd sockets, and those must be sockets
    not_socket = tmp_path / "plain-file"
    not_socket.write_text("x")
    for address in ("relative.sock", str(not_socket), "/no/such.sock", "unix:///tmp/x.sock"):
        body = assert_error(app.client.post("/checkpoint/rootfs", json={
            **ref, "image_ref": "127.0.0.1:5000/x/y:1", "address": address}), 400,
            "invalid_request")
        assert "not a containerd socket of this helper" in str(body["message"])
        assert body["fields"] == ["address"]
    client = TestClient(create_app(replace(app.config, default_containerd_address=str(not_socket)),
                                   locks=app.locks))
    body = assert_error(client.post("/checkpoint/rootfs", json={
        **ref, "image_ref": "127.0.0.1:5000/x/y:1", "address": str(not_socket)}), 400,
        "invalid_request")
    assert "not a unix socket" in str(body["message"])
    assert app.source.poll() is None  # nothing happened to the container


def test_checkpoint_catalogue_round_trip(app: HelperApp, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.access")
    response = app.client.post("/checkpoint", json=app.checkpoint_body(checkpoint_path="c1"))
    assert response.status_code == 200, response.text
    result = response.json()
    assert set(result) >= {"checkpoint_id", "checkpoint_path", "size_bytes", "duration_ms",
                           "options"}
    assert result["checkpoint_path"] == str(app.config.checkpoint_dir / "c1")
    checkpoint_id = result["checkpoint_id"]
    line = vars(next(r for r in caplog.records if r.name == "sidecar.access"
                     and getattr(r, "path", "") == "/checkpoint"))
    assert (line["method"], line["status"], line["checkpoint_id"]) == ("POST", 200,
                                                                       checkpoint_id)
    assert isinstance(line["duration_ms"], float)

    listed = app.client.get("/checkpoints").json()["checkpoints"]
    assert [e["id"] for e in listed] == [checkpoint_id]
    one = app.client.get(f"/checkpoints/{checkpoint_id}").json()
    assert one["present"] is True
    assert one["manifest"]["source"]["container_id"] == COUNTER

    # the catalogue survives a restart of the helper
    restarted = TestClient(create_app(app.config))
    assert restarted.get(f"/checkpoints/{checkpoint_id}").status_code == 200
    deleted = restarted.delete(f"/checkpoints/{checkpoint_id}").json()
    assert deleted["deleted"] is True and deleted["removed_files"] is True
    assert not (app.config.checkpoint_dir / "c1").exists()
    assert_error(restarted.get(f"/checkpoints/{checkpoint_id}"), 404, "checkpoint_not_found")
    assert_error(restarted.delete(f"/checkpoints/{checkpoint_id}"), 404,
                 "checkpoint_not_found")


def test_error_lines_carry_the_code(app: HelperApp, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.access")
    app.client.get("/nope")
    line = vars(next(r for r in caplog.records if getattr(r, "path", "") == "/nope"))
    assert (line["status"], line["error_code"]) == (404, "not_found")


def test_busy_container_is_409(app: HelperApp) -> None:
    with app.locks.hold(COUNTER, "restore"):
        body = assert_error(app.client.post("/checkpoint", json=app.checkpoint_body()), 409,
                            "operation_in_progress")
    assert "restore" in str(body["message"])
    assert app.client.post("/checkpoint", json=app.checkpoint_body()).status_code == 200


def test_dump_failure_is_500_with_log_tail(app: HelperApp) -> None:
    (Path(app.config.runc_path).parent / "runc-fail").touch()
    body = assert_error(app.client.post("/checkpoint", json=app.checkpoint_body()), 500,
                        "dump_failed")
    assert "--tcp-established" in str(body["log_tail"])


def test_restore_needs_a_checkpoint_name(app: HelperApp) -> None:
    data = {"container_name": "first", "sandbox_name": "two-containers",
            "namespace": "default", "root": str(app.root)}
    assert_error(app.client.post("/restore", json={"checkpoint_data": data}), 400,
                 "invalid_request")
    assert_error(app.client.post("/restore", json={"checkpoint_data": {
        **data, "checkpoint_id": "00000000-0000-0000-0000-000000000000"}}), 404,
        "checkpoint_not_found")
    assert_error(app.client.post("/restore", json={"checkpoint_data": {
        **data, "checkpoint_path": "never-written"}}), 404, "checkpoint_not_found")
    # a path outside the helper's directory is a name of no checkpoint, never /etc itself
    assert_error(app.client.post("/restore", json={"checkpoint_data": {
        **data, "checkpoint_path": "/etc"}}), 404, "checkpoint_not_found")


def test_restore_of_a_flipped_byte_is_refused_before_anything_runs(app: HelperApp) -> None:
    made = app.client.post("/checkpoint", json=app.checkpoint_body(checkpoint_path="c2")).json()
    pages = Path(made["checkpoint_path"]) / "checkpoint" / "pages-1.img"
    data = bytearray(pages.read_bytes())
    data[100] ^= 0xFF
    pages.write_bytes(bytes(data))
    target = pod_process()
    try:
        root = app.root
        state_file = root / FIRST / "state.json"
        state = json.loads(state_file.read_text())
        state["init_process_pid"] = target.pid
        state["init_process_start"] = proc_start_ticks(target.pid)
        state_file.write_text(json.dumps(state))
        body = assert_error(app.client.post("/restore", json={"checkpoint_data": {
            "container_name": "first", "sandbox_name": "two-containers",
            "namespace": "default", "root": str(root), "checkpoint_id": made["checkpoint_id"],
        }}), 422, "checkpoint_corrupted")
        assert "checkpoint/pages-1.img" in str(body["message"])
        assert not (Path(app.config.criu_path).parent / "criu-report.json").exists()
        assert target.poll() is None
    finally:
        stop(target)


def test_restore_into_a_missing_target(app: HelperApp) -> None:
    made = app.client.post("/checkpoint", json=app.checkpoint_body()).json()
    assert_error(app.client.post("/restore", json={"checkpoint_data": {
        "container_name": "ghost", "sandbox_name": "nowhere", "namespace": "default",
        "root": str(app.root), "checkpoint_id": made["checkpoint_id"]}}), 404,
        "container_not_found")
    # a stopped target is not a sleeping pod
    assert_error(app.client.post("/restore", json={"checkpoint_data": {
        "container_name": "first", "sandbox_name": "two-containers", "namespace": "default",
        "root": str(app.root), "checkpoint_id": made["checkpoint_id"]}}), 409,
        "container_not_running")
