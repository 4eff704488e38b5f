"""The part of kustomize that deploy/ uses, so `install` needs no kustomize binary.

deploy/base is a plain list of resources; each overlay in deploy/overlays/ lists the base and
JSON 6902 patches (`patches:` entries with a `path` and a `target`). This module renders
exactly that and refuses any other kustomization field, so it can never quietly differ from
`kubectl kustomize` (a unit test renders every overlay both ways and compares).

Paths are POSIX paths relative to deploy/; `read` returns a file's text or None if it is
missing, which lets the same code read a checkout, an installed package or a zipapp.
"""
from __future__ import annotations

import copy
import posixpath
from collections.abc import Callable
from typing import Any

from kubectl_cedana.errors import CedanaError

ReadFn = Callable[[str], "str | None"]
KUSTOMIZATION = "kustomization.yaml"
SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "patches"}
TARGET_FIELDS = {"group", "version", "kind", "name", "namespace"}


class KustomizeError(CedanaError):
    """deploy/ holds something this renderer does not do (or does not hold what it should)."""


def build(read: ReadFn, directory: str) -> list[dict[str, Any]]:
    """The objects of the kustomization in `directory`, in resource order, patched."""
    import yaml

    directory = posixpath.normpath(directory)
    where = posixpath.join(directory, KUSTOMIZATION)
    text = read(where)
    if text is None:
        raise KustomizeError(f"{where} is missing")
    kustomization = yaml.safe_load(text) or {}
    unknown = sorted(set(kustomization) - SUPPORTED_FIELDS)
    if unknown:
        raise KustomizeError(f"{where} uses {', '.join(unknown)}, which kubectl-cedana does "
                             "not render (only resources and JSON 6902 patches)")
    objects: list[dict[str, Any]] = []
    for entry in kustomization.get("resources") or []:
        path = posixpath.normpath(posixpath.join(directory, str(entry)))
        if read(posixpath.join(path, KUSTOMIZATION)) is not None:
            objects.extend(build(read, path))
            continue
        resource = read(path)
        if resource is None:
            raise KustomizeError(f"{where}: resource {entry} is missing")
        objects.extend(doc for doc in yaml.safe_load_all(resource) if doc)
    for patch in kustomization.get("patches") or []:
        _apply_patch_entry(read, directory, where, patch, objects)
    return objects


def _apply_patch_entry(read: ReadFn, directory: str, where: str, entry: dict[str, Any],
                       objects: list[dict[str, Any]]) -> None:
    import yaml

    if set(entry) != {"path", "target"}:
        raise KustomizeError(f"{where}: each patch needs exactly `path` and `target`")
    target = entry["target"] or {}
    if not set(target) <= TARGET_FIELDS:
        raise KustomizeError(f"{where}: patch targets may only name "
                             f"{', '.join(sorted(TARGET_FIELDS))}")
    path = posixpath.normpath(posixpath.join(directory, str(entry["path"])))
    text = read(path)
    if text is None:
        raise KustomizeError(f"{where}: patch {entry['path']} is missing")
    operations = yaml.safe_load(text)
    if not isinstance(operations, list):
        raise KustomizeError(f"{path}: expected a list of JSON 6902 operations")
    matched = [i for i, obj in enumerate(objects) if matches(obj, target)]
    if not matched:
        raise KustomizeError(f"{where}: no resource matches the target of {entry['path']}")
    for index in matched:
        try:
            objects[index] = apply_json_patch(objects[index], operations)
        except KustomizeError as exc:
            raise KustomizeError(f"{path}: {exc}") from None


def matches(obj: dict[str, Any], target: dict[str, Any]) -> bool:
    api_version = str(obj.get("apiVersion") or "")
    group, _, version = api_version.rpartition("/")
    actual = {"group": group, "version": version, "kind": obj.get("kind"),
              "name": (obj.get("metadata") or {}).get("name"),
              "namespace": (obj.get("metadata") or {}).get("namespace") or ""}
    return all(actual[key] == value for key, value in target.items())


# -- JSON patch (RFC 6902): add, remove, replace, test -----------------------------------------
def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise KustomizeError(f"JSON pointer {path!r} must start with /")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _index(container: list[Any], token: str, path: str, *, for_add: bool) -> int:
    if token == "-" and for_add:
        return len(container)
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        raise KustomizeError(f"{path}: {token!r} is not a list index")
    index = int(token)
    if index > len(container) or (index == len(container) and not for_add):
        raise KustomizeError(f"{path}: index {index} is out of range")
    return index


def _parent(document: Any, tokens: list[str], path: str) -> Any:
    node = document
    for token in tokens[:-1]:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, path, for_add=False)]
        else:
            raise KustomizeError(f"{path}: nothing at {token!r}")
    return node


def apply_json_patch(document: dict[str, Any], operations: list[dict[str, Any]]
                     ) -> dict[str, Any]:
    """A patched copy of `document`; the operations apply in order, all or nothing."""
    result = copy.deepcopy(document)
    for operation in operations:
        op, path = operation.get("op"), str(operation.get("path", ""))
        tokens = _pointer(path)
        if not tokens:
            raise KustomizeError(f"{op} of the whole document is not supported")
        parent, last = _parent(result, tokens, path), tokens[-1]
        if op == "test":
            if isinstance(parent, list):
                current = parent[_index(parent, last, path, for_add=False)]
            elif isinstance(parent, dict) and last in parent:
                current = parent[last]
            else:
                raise KustomizeError(f"test {path}: nothing there")
            if current != operation.get("value"):
                raise KustomizeError(f"test {path}: found {current!r}, "
                                     f"expected {operation.get('value')!r}")
        elif op in ("add", "replace"):
            value = copy.deepcopy(operation["value"])
            if isinstance(parent, list):
                index = _index(parent, last, path, for_add=op == "add")
                if op == "add":
                    parent.insert(index, value)
                else:
                    parent[index] = value
            elif isinstance(parent, dict):
                if op == "replace" and last not in parent:
                    raise KustomizeError(f"replace {path}: nothing there")
                parent[last] = value
            else:
                raise KustomizeError(f"{op} {path}: the parent is not an object or a list")
        elif op == "remove":
            if isinstance(parent, list):
                del parent[_index(parent, last, path, for_add=False)]
            elif isinstance(parent, dict) and last in parent:
                del parent[last]
            else:
                raise KustomizeError(f"remove {path}: nothing there")
        else:
            raise KustomizeError(f"JSON patch operation {op!r} is not supported "
                                 "(add, remove, replace, test)")
    return result
