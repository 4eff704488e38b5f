"""The plugin and the helper share kubectl_cedana/contract.py; these tests hold both sides (and
docs/api.md, the CRDs and the admission policy) to it: the resources' names, phases, labels,
annotations and finalizer, the routes the helper serves, the codes and statuses it answers,
the compression names it accepts."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from kubectl_cedana import contract
from kubectl_cedana.errors import CODE_EXIT, ExitCode, ResourceFailed
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
    assert set(CODE_EXIT) <= set(contract.HTTP_STATUS)
    for code, status in contract.HTTP_STATUS.items():
        exit_code = ResourceFailed("x", code=code).exit_code
        if status >= 500:  # the helper or its node failed, not the request
            assert exit_code == ExitCode.REMOTE, code
    assert ResourceFailed("x", code="a_code_of_a_newer_helper").exit_code == ExitCode.REMOTE


def _documents(name: str) -> list[dict]:
    path = REPO / "deploy" / "base" / name
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_the_crds_are_the_contracts_resources() -> None:
    crds = {d["spec"]["names"]["kind"]: d for d in _documents("crds.yaml")}
    assert set(crds) == {r.kind for r in contract.RESOURCES}
    for resource in contract.RESOURCES:
        crd = crds[resource.kind]
        assert crd["metadata"]["name"] == resource.qualified
        assert crd["spec"]["group"] == contract.API_GROUP
        assert (crd["spec"]["names"]["plural"], crd["spec"]["names"]["singular"]) == \
            (resource.plural, resource.singular)
        assert crd["spec"]["scope"] == "Namespaced"
        (version,) = crd["spec"]["versions"]
        assert version["name"] == contract.API_VERSION and version["served"]
        phase = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"][
            "phase"]
        assert tuple(phase["enum"]) == contract.PHASES
    restore_spec = crds["Restore"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"]["spec"]["properties"]
    assert restore_spec["checkpointID"]["pattern"] == contract.CHECKPOINT_ID_PATTERN


#: the keys a CRD's openAPIV3Schema may use (JSONSchemaProps) that ours do
SCHEMA_KEYS = {"type", "description", "format", "enum", "default", "pattern", "minLength",
               "maxLength", "properties", "required", "items", "x-kubernetes-validations",
               "x-kubernetes-list-type", "x-kubernetes-list-map-keys"}


def test_the_crd_schemas_use_only_schema_keys() -> None:
    """A comma in an unquoted description of a flow mapping ({type: string, description: a,
    b}) makes a stray key that `kubectl apply --validate=strict` refuses."""
    def walk(where: str, schema: dict) -> list[str]:
        found = [f"{where}: {key!r}" for key in schema if key not in SCHEMA_KEYS]
        for name, sub in (schema.get("properties") or {}).items():
            found += walk(f"{where}.{name}", sub)
        if isinstance(schema.get("items"), dict):
            found += walk(f"{where}[]", schema["items"])
        return found

    problems = [p for crd in _documents("crds.yaml")
                for p in walk(crd["metadata"]["name"],
                              crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])]
    assert problems == []


def test_the_admission_policy_uses_the_contracts_names() -> None:
    policy, binding, pods_policy, pods_binding = _documents("admission.yaml")
    text = (REPO / "deploy" / "base" / "admission.yaml").read_text()
    assert pods_binding["spec"]["policyName"] == pods_policy["metadata"]["name"]
    for name in (contract.MADE_FOR_ANNOTATION, contract.POD_DELETION_COST_ANNOTATION,
                 contract.HELPER_USER):
        assert f"'{name}'" in json.dumps(pods_policy["spec"]).replace('"', "'"), name
    assert policy["kind"] == "ValidatingAdmissionPolicy"
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule["apiGroups"] == [contract.API_GROUP]
    assert set(rule["resources"]) == {r.plural for r in contract.RESOURCES}
    assert f"'{contract.REQUESTED_BY_ANNOTATION}'" in text
    assert f"'{contract.HELPER_USER}'" in text
    # folded the same by every YAML parser (go-yaml keeps a more-indented line's break twice)
    expressions = [v["expression"] for v in policy["spec"]["validations"]]
    assert expressions and all("\n" not in e for e in expressions)


@pytest.mark.parametrize("text,is_id", [
    ("6f1d2c3b-0000-4000-8000-000000000001", True), ("counter-x7k2p", False),
    ("6F1D2C3B-0000-4000-8000-000000000001", False), ("6f1d2c3b", False),
    ("6f1d2c3b-0000-4000-8000-000000000001\n", False)])
def test_a_checkpoint_id_is_a_uuid_anything_else_a_name(text: str, is_id: bool) -> None:
    assert contract.is_checkpoint_id(text) is is_id


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


def test_member_checkpoint_ids_follow_from_the_pod_checkpoints_id() -> None:
    pod_id = "0f8fad5b-d9cb-469f-a165-70867728950e"
    first = contract.member_checkpoint_id(pod_id, 0, "side")
    second = contract.member_checkpoint_id(pod_id, 1, "app")
    assert first == pod_id
    assert contract.is_checkpoint_id(second) and second != pod_id
    assert second == contract.member_checkpoint_id(pod_id, 1, "app")  # anywhere, any time
    assert second != contract.member_checkpoint_id(pod_id, 1, "db")
