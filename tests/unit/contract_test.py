"""The plugin and the helper share kubectl_cedana/contract.py; these tests hold both sides (and
docs/api.md) to it: the routes the helper serves, the codes and statuses it answers, the
compression names it accepts."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from kubectl_cedana import contract
from kubectl_cedana.errors import ExitCode, HelperReplyError
from sidecar import errors
from sidecar.http.app import create_app
from sidecar.registry.remote import LAYER_TYPES
from tests.unit.sidecar_support import HelperApp, assert_error, make_config, route_table

REPO = Path(__file__).resolve().parents[2]
ROUTES = {contract.LIST, contract.CHECKPOINT, contract.RESTORE, contract.CHECKPOINT_ROOTFS,
          contract.CHECKPOINT_ROOTFS_CRIO, contract.RESTORE_ROOTFS, contract.HEALTHZ,
          contract.VERSION, contract.CHECKPOINTS, contract.CHECKPOINTS_PRUNE,
          contract.CHECKPOINT_ENTRY}


def _error_classes() -> list[type[errors.HelperError]]:
    found: list[type[errors.HelperError]] = []
    todo = [errors.HelperError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_the_helper_serves_exactly_the_contracts_routes(tmp_path: Path) -> None:
    app = create_app(make_config(tmp_path), kube=None)
    served = {path for _method, path in route_table()}
    assert served == ROUTES
    client = TestClient(app)
    assert client.get(contract.HEALTHZ).json() == {"status": "ok"}
    assert client.get(contract.route(contract.LIST, namespace="x")).status_code == 400  # root
    assert client.get(contract.route(contract.CHECKPOINT_ENTRY, checkpoint_id="nope")
                      ).json()["code"] == contract.Code.CHECKPOINT_NOT_FOUND


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__name__)
def test_each_helper_error_answers_its_codes_status(cls: type[errors.HelperError]) -> None:
    error = cls("what went wrong", extra_key=1)
    assert error.status == contract.HTTP_STATUS[error.code]
    assert error.body() == {"code": error.code, "message": "what went wrong", "extra_key": 1}


def test_every_code_has_one_error_class_and_one_row_in_the_docs() -> None:
    by_code: dict[str, list[str]] = {}
    for cls in _error_classes():
        by_code.setdefault(cls.code, []).append(cls.__name__)
    assert set(by_code) == set(contract.HTTP_STATUS)
    assert all(len(names) == 1 or code == contract.Code.INTERNAL_ERROR
               for code, names in by_code.items()), by_code
    table = re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", (REPO / "docs" / "api.md").read_text(),
                       re.M)
    assert dict((code, int(status)) for code, status in table) == contract.HTTP_STATUS
    assert len(table) == len(contract.HTTP_STATUS)


def test_the_plugin_maps_only_codes_the_helper_has() -> None:
    assert set(HelperReplyError.CODE_EXIT) <= set(contract.HTTP_STATUS)
    for code, status in contract.HTTP_STATUS.items():
        exit_code = HelperReplyError("x", code=code).exit_code
        if status >= 500:  # the helper or its node failed, not the request
            assert exit_code == ExitCode.REMOTE, code


def test_the_helper_accepts_exactly_the_contracts_compressions(app: HelperApp) -> None:
    assert set(LAYER_TYPES) == set(contract.COMPRESSIONS)
    for name in (*contract.COMPRESSIONS, "brotli", "ZSTD"):
        body = {**app.checkpoint_body(container_name="ghost"), "compression": name}
        answer = app.client.post(contract.CHECKPOINT, json=body)
        if name in contract.COMPRESSIONS:
            assert_error(answer, 404, contract.Code.CONTAINER_NOT_FOUND)  # got past validation
        else:
            assert "compression" in assert_error(answer, 400, "invalid_request")["fields"]


@pytest.mark.parametrize("path,is_open", [("healthz", True), ("/version", True),
                                          ("version?x=1", True), ("/list/default", False),
                                          ("checkpoints", False)])
def test_open_routes(path: str, is_open: bool) -> None:
    assert contract.is_open(path) is is_open


def test_route_parameters_are_one_quoted_segment() -> None:
    assert contract.route(contract.LIST, namespace="a/b c") == "/list/a%2Fb%20c"
