"""`kubectl cedana --help` and `version --client` must not pay for the Kubernetes client."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("kubernetes", "yaml", "urllib3", "requests", "pydantic")

PROBE = """
import sys
from kubectl_cedana.cli import main
code = main({argv!r}, standalone_mode=False)
sys.stdout.flush()
print("LOADED=" + ",".join(sorted({{m.split(".")[0] for m in sys.modules}})), file=sys.stderr)
"""


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          check=False, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)


def _imported_by_importtime(args: list[str]) -> set[str]:
    result = _run(["-X", "importtime", *args])
    assert result.returncode == 0, result.stderr
    modules = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            modules.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    assert "kubectl_cedana" in modules  # the probe sees imports at all
    return modules


@pytest.mark.parametrize("args", [
    ["-m", "kubectl_cedana", "--help"],
    ["-m", "kubectl_cedana.cli", "--help"],
    ["-m", "kubectl_cedana", "version", "--client"],
    ["-m", "kubectl_cedana", "checkpoint", "--help"],
])
def test_help_and_client_version_import_no_heavy_module(args: list[str]) -> None:
    loaded = _imported_by_importtime(args)
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def _loaded_after(argv: list[str]) -> set[str]:
    result = _run(["-c", PROBE.format(argv=argv)])
    line = [x for x in result.stderr.splitlines() if x.startswith("LOADED=")][-1]
    return set(line[len("LOADED="):].split(","))


def test_sys_modules_after_help() -> None:
    assert "kubernetes" not in _loaded_after(["--help"])
    assert "kubernetes" not in _loaded_after(["version", "--client", "-o", "json"])


def _kubeconfig(tmp_path: Path, user: str) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {{server: "http://127.0.0.1:9"}}
users:
- name: u
  user: {user}
contexts:
- name: c
  context: {{cluster: c, user: u}}
current-context: c
""")
    return str(path)


def test_a_cluster_command_reads_a_usual_kubeconfig_without_the_client(tmp_path: Path) -> None:
    """A token, client certificate or exec plugin is read by kubeconfig.py: the official
    client's 0.26 s import is not paid (issue 19); nor is urllib3's."""
    loaded = _loaded_after(["--kubeconfig", _kubeconfig(tmp_path, "{token: abc}"),
                            "--request-timeout", "1s", "list"])
    assert "kubectl_cedana" in loaded and "http" in loaded  # it did connect
    assert not loaded & {"kubernetes", "urllib3"}, sorted(loaded & {"kubernetes", "urllib3"})


def test_an_auth_provider_kubeconfig_is_left_to_the_official_client(tmp_path: Path) -> None:
    # and the positive control: the probe notices the client when it is imported
    config = _kubeconfig(tmp_path, "{auth-provider: {name: oidc, config: {id-token: x}}}")
    assert "kubernetes" in _loaded_after(["--kubeconfig", config, "--request-timeout", "1s",
                                          "list"])
