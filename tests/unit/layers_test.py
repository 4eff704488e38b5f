"""Which module may import which (docs/architecture.md): read from the source with `ast`, every
import counted, at the top of a module or inside a function.

    sidecar.cli -> sidecar.http      -> sidecar.ops -> sidecar.node | sidecar.storage |
                   sidecar.reconcile ->                sidecar.registry | sidecar.kube
    every layer -> sidecar.errors, sidecar.config, sidecar.logs -> kubectl_cedana.contract

The plugin (kubectl_cedana) and the helper (sidecar) share only kubectl_cedana/contract.py,
version.py and podspec.py (the placeholder pod, which the helper builds for a Restore's
newPod), all three standard library only; the plugin imports none of the helper's server
stack."""
from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: the plugin's modules the helper may import: standard library only, Python 3.9 syntax
SHARED = (["contract"], ["version"], ["podspec"])
#: layer -> the layers it may import (itself always)
ALLOWED: dict[str, set[str]] = {
    "entry": {"http", "reconcile", "ops", "node", "storage", "registry", "kube", "base",
              "contract"},
    "http": {"ops", "base", "contract"},
    # the other way in: cedana.io objects, watched through the API (kube), acted on by ops
    "reconcile": {"ops", "kube", "storage", "base", "contract"},
    "ops": {"node", "storage", "registry", "kube", "base", "contract"},
    # checkpoints stored as images: the archive format is storage's
    "registry": {"storage", "base", "contract"},
    "node": {"base", "contract"},
    "storage": {"base", "contract"},
    "kube": {"base", "contract"},
    "base": {"contract"},
    "contract": set(),
    "standalone": set(),
    "plugin": {"contract"},
}
#: the HTTP framework stays in the HTTP layer (and the entry point that serves it)
HTTP_FRAMEWORK = {"fastapi", "starlette", "pydantic", "uvicorn", "anyio"}
#: what only the helper's extra installs (setup.cfg [helper]); the plugin must not need it
SERVER_STACK = HTTP_FRAMEWORK | {"docker", "psutil", "zstandard", "lz4", "requests",
                                 "cryptography"}


def layer_of(module: str) -> str | None:
    """The layer of one of our modules; None for anything else (stdlib, third party)."""
    parts = module.split(".")
    if parts[0] == "kubectl_cedana":
        return "contract" if parts[1:2] in SHARED else "plugin"
    if parts[0] != "sidecar":
        return None
    if len(parts) == 1 or parts[1] in ("errors", "config", "logs"):
        return "base"
    if parts[1] == "cli":
        return "entry"
    if parts[1] == "criu_guard":
        return "standalone"
    return parts[1]


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports(source: str, module: str, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import in `source`, relative ones resolved; for
    `from X import Y`, X.Y when that is one of our modules, else X."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                known = (REPO / Path(*candidate.split("."))).with_suffix(".py").exists() or \
                    (REPO / Path(*candidate.split("."))).is_dir()
                yield node.lineno, candidate if known else base


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """What `module` (with this source) imports that its layer may not."""
    own = layer_of(module)
    assert own is not None, module
    found = []
    for line, imported in imports(source, module, is_package):
        top = imported.split(".")[0]
        theirs = layer_of(imported)
        where = f"{module}:{line} imports {imported}"
        if theirs is None:
            if own in ("contract", "standalone") and top not in sys.stdlib_module_names:
                found.append(f"{where}: standard library only")
            elif own in ("ops", "reconcile", "node", "storage", "registry", "kube", "base") and \
                    top in HTTP_FRAMEWORK | {"click"}:
                found.append(f"{where}: the HTTP framework and click stay out of core logic")
            elif own in ("plugin", "contract") and top in SERVER_STACK:
                found.append(f"{where}: the plugin installs without the helper's server stack")
        elif theirs != own and theirs not in ALLOWED[own]:
            found.append(f"{where}: {own} may import only {sorted(ALLOWED[own])}")
    return found


def our_modules() -> list[Path]:
    return sorted(p for pkg in ("sidecar", "kubectl_cedana") for p in (REPO / pkg).rglob("*.py"))


def test_every_import_goes_down_the_layers() -> None:
    found = [v for path in our_modules()
             for v in violations(path.read_text(), module_name(path), path.name == "__init__.py")]
    assert found == []


def test_every_helper_module_has_a_layer() -> None:
    names = [module_name(p) for p in our_modules()]
    assert all(layer_of(n) in ALLOWED for n in names)
    assert {layer_of(n) for n in names} == set(ALLOWED)


@pytest.mark.parametrize("module,source,problem", [
    ("sidecar.node.runc", "from sidecar.ops import checkpoint", "node may import only"),
    ("sidecar.storage.store", "from sidecar.node.proctree import start_time", "storage may"),
    ("sidecar.http.app", "from sidecar.node import discovery", "http may import only"),
    ("sidecar.http.app", "from ..storage import store", "http may import only"),
    ("sidecar.ops.checkpoint", "def f():\n    from fastapi import Request", "HTTP framework"),
    ("sidecar.errors", "from sidecar.registry import client", "base may import only"),
    ("kubectl_cedana.helper", "from sidecar.node import tool", "plugin may import only"),
    ("kubectl_cedana.operations", "import psutil", "server stack"),
    ("kubectl_cedana.contract", "import yaml", "standard library only"),
    ("kubectl_cedana.podspec", "from kubectl_cedana.errors import CedanaError",
     "contract may import only"),
    ("sidecar.ops.restore", "from kubectl_cedana.pods import select_container",
     "ops may import only"),
    ("sidecar.criu_guard", "from sidecar import errors", "standalone may import only"),
])
def test_a_wrong_import_is_caught(module: str, source: str, problem: str) -> None:
    found = violations(source, module)
    assert len(found) == 1 and problem in found[0], found


def test_allowed_imports_pass() -> None:
    assert violations("from sidecar.storage import store\nfrom kubectl_cedana import contract\n"
                      "import json\nimport psutil", "sidecar.ops.checkpoint") == []
    assert violations("from . import remote", "sidecar.registry.client") == []
    assert violations("from kubectl_cedana.contract import Code\nimport click",
                      "kubectl_cedana.errors") == []
    assert violations("from kubectl_cedana.podspec import build_placeholder_pod",
                      "sidecar.ops.restore") == []
