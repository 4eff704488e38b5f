"""One Python floor for the plugin, written once (setup.cfg's python_requires): the zipapp is
built for it, the krew caveats and the docs promise it, and every module of the plugin runs on
it; and the plugin installs without the node helper's server stack."""
from __future__ import annotations

import ast
import configparser
import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "hack"))
import dist  # noqa: E402

from tests.unit.layers_test import SERVER_STACK, imports, module_name  # noqa: E402

#: names the standard library gained after 3.9 (a module, or (module, name) imported from it)
NEWER_MODULES = {"tomllib": (3, 11)}
NEWER_NAMES = {
    ("datetime", "UTC"): (3, 11), ("typing", "Self"): (3, 11), ("enum", "StrEnum"): (3, 11),
    ("typing", "TypeAlias"): (3, 10), ("typing", "ParamSpec"): (3, 10),
    ("typing", "TypeGuard"): (3, 10), ("typing", "Concatenate"): (3, 10),
    ("typing", "Never"): (3, 11), ("typing", "assert_never"): (3, 11),
    ("typing", "LiteralString"): (3, 11), ("typing", "NotRequired"): (3, 11),
    ("typing", "Required"): (3, 11), ("contextlib", "chdir"): (3, 11),
    ("hashlib", "file_digest"): (3, 11), ("itertools", "pairwise"): (3, 10),
}
NEWER_KEYWORDS = {("zip", "strict"): (3, 10), ("dataclass", "slots"): (3, 10),
                  ("dataclass", "kw_only"): (3, 10)}
#: import name -> distribution, for the third-party modules the plugin and the helper import
DISTRIBUTIONS = {"yaml": "pyyaml", "docker": "docker", "kubernetes": "kubernetes",
                 "click": "click", "urllib3": "urllib3", "fastapi": "fastapi",
                 "starlette": "fastapi", "anyio": "fastapi", "pydantic": "pydantic",
                 "uvicorn": "uvicorn", "requests": "requests", "psutil": "psutil",
                 "zstandard": "zstandard", "lz4": "lz4", "cryptography": "cryptography"}


def setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg", encoding="utf-8")
    return config


def floor() -> tuple[int, int]:
    match = re.fullmatch(r">=(\d+)\.(\d+)", setup_cfg().get("options", "python_requires"))
    assert match, "python_requires must read >=X.Y"
    return int(match.group(1)), int(match.group(2))


def requirements(option: str, key: str) -> set[str]:
    text = setup_cfg().get(option, key)
    names = set()
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(re.split(r"[\s<>=!~\[;]", line, maxsplit=1)[0].lower())
    return names


def plugin_modules() -> list[Path]:
    return sorted((REPO / "kubectl_cedana").rglob("*.py"))


def test_the_floor_is_the_same_everywhere_it_is_written() -> None:
    wanted = "{}.{}".format(*floor())
    assert dist.MIN_PYTHON == floor()
    assert dist.WHEEL_TARGET[dist.WHEEL_TARGET.index("--python-version") + 1] == wanted
    caveats = yaml.safe_load((REPO / "plugin-manifest.yaml").read_text())["spec"]["caveats"]
    assert f"python3 >= {wanted}" in caveats
    for name in ("plugin-manifest.yaml", "README.md", "docs/install.md", "CHANGELOG.md",
                 "Makefile", "hack/dist-requirements.txt"):
        text = (REPO / name).read_text()
        promised = re.findall(r"python3? >= (\d+\.\d+)|--python-version (\d+\.\d+)"
                              r"|for Python (\d+\.\d+)|promise \((\d+\.\d+)\)", text)
        assert {next(v for v in m if v) for m in promised} <= {wanted}, name


@pytest.mark.parametrize("path", plugin_modules(), ids=lambda p: p.name)
def test_each_plugin_module_is_written_for_the_floor(path: Path) -> None:
    source = path.read_text()
    tree = ast.parse(source, feature_version=floor())  # syntax: no match, no except*, ...
    future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and
                 any(a.name == "annotations" for a in n.names) for n in tree.body)
    type_checking: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_checking |= {id(n) for n in ast.walk(node)}
    problems = []
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                needs = NEWER_NAMES.get((node.module, alias.name))
                if needs and needs > floor():
                    problems.append(f"line {node.lineno}: {node.module}.{alias.name}")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for name in [a.name for a in node.names] + [getattr(node, "module", None) or ""]:
                needs = NEWER_MODULES.get(name.split(".")[0])
                if needs and needs > floor():
                    problems.append(f"line {node.lineno}: import {name}")
        if isinstance(node, ast.Call):
            called = ast.unparse(node.func).split(".")[-1]
            for keyword in node.keywords:
                needs = NEWER_KEYWORDS.get((called, keyword.arg or ""))
                if needs and needs > floor():
                    problems.append(f"line {node.lineno}: {called}({keyword.arg}=)")
        annotations = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            annotations = [a.annotation for a in (*node.args.args, *node.args.kwonlyargs)
                           if a.annotation] + ([node.returns] if node.returns else [])
        elif isinstance(node, ast.AnnAssign):
            annotations = [node.annotation]
        if not future and any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr)
                              for a in annotations for n in ast.walk(a)):
            problems.append(f"line {getattr(node, 'lineno', '?')}: X | Y annotation without "
                            "`from __future__ import annotations`")
    assert problems == []


def _oldest_python() -> str | None:
    wanted = "{}.{}".format(*floor())
    candidates = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{wanted}.*/bin/"
                                                     "python3")))
    found = candidates[-1] if candidates else shutil.which(f"python{wanted}")
    if found and subprocess.run([found, "-c", "pass"], capture_output=True,
                                check=False).returncode == 0:
        return found
    return None


def test_the_plugin_imports_on_the_floor_python() -> None:
    """Where that interpreter is at hand (the zipapp test runs it too): every module of the
    plugin that needs no third-party package imports; the others fail only for lack of one."""
    python = _oldest_python()
    if python is None:
        pytest.skip("no python{}.{} on this machine (the checks above still ran)".format(
            *floor()))
    names = [module_name(p) for p in plugin_modules() if p.name != "__main__.py"]
    probe = ("import importlib, os, sys\n"
             "sys.path.insert(0, os.getcwd())\n"
             "for name in sys.argv[1:]:\n"
             "    try:\n"
             "        importlib.import_module(name)\n"
             "    except ModuleNotFoundError as exc:\n"
             "        print(name, 'needs', exc.name)\n")
    result = subprocess.run([python, "-I", "-c", probe, *names], cwd=REPO, capture_output=True,
                            text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    missing = {line.split()[-1].split(".")[0] for line in result.stdout.splitlines()}
    assert missing <= set(DISTRIBUTIONS) - SERVER_STACK, result.stdout


def test_install_requires_is_what_the_plugin_imports_and_no_more() -> None:
    needed = {DISTRIBUTIONS[i.split(".")[0]]
              for p in plugin_modules()
              for _line, i in imports(p.read_text(), module_name(p))
              if i.split(".")[0] in DISTRIBUTIONS}
    declared = requirements("options", "install_requires")
    assert declared == needed
    assert not declared & {DISTRIBUTIONS[m] for m in SERVER_STACK}


def test_the_helper_extra_brings_what_the_helper_imports() -> None:
    needed = {DISTRIBUTIONS[i.split(".")[0]]
              for p in sorted((REPO / "sidecar").rglob("*.py"))
              for _line, i in imports(p.read_text(), module_name(p))
              if i.split(".")[0] in DISTRIBUTIONS}
    assert needed <= requirements("options", "install_requires") | \
        requirements("options.extras_require", "helper")
