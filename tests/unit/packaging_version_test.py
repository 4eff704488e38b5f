"""One version everywhere: kubectl_cedana/version.py is the source; the krew manifest, the
helper image tag (base and every overlay), the CHANGELOG's newest entry, the helper's own
version and every `cedana/helper:X.Y.Z` or release-archive name in the docs must agree."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from kubectl_cedana import install
from kubectl_cedana.kustomize import build
from kubectl_cedana.version import __version__
from tests.unit.plugin_fakeapi import run_cli

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "hack"))
import dist  # noqa: E402

SEMVER = re.compile(r"^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$")
#: files whose mentions of a concrete version must be the current one
MENTIONS = ["README.md", "docs/install.md", "deploy/Dockerfile", "plugin-manifest.yaml"]
MENTION = re.compile(r"cedana/helper:(\d+\.\d+\.\d+)|kubectl-cedana-v(\d+\.\d+\.\d+)\.tar\.gz"
                     r"|/releases/download/v(\d+\.\d+\.\d+)/")


def version_disagreements(repo: Path) -> list[str]:
    """Where a copy of `repo` disagrees with its kubectl_cedana/version.py."""
    version = dist.read_version(repo)
    found: list[str] = []
    if not SEMVER.match(version):
        found.append(f"version.py: {version} is not semver")
    manifest = yaml.safe_load((repo / "plugin-manifest.yaml").read_text())
    if manifest["spec"]["version"] != f"v{version}":
        found.append(f"plugin-manifest.yaml: spec.version {manifest['spec']['version']}")
    for entry in manifest["spec"]["platforms"]:
        if entry["uri"] != dist.release_uri(version):
            found.append(f"plugin-manifest.yaml: uri {entry['uri']}")

    def read(path: str) -> str | None:
        file = repo / "deploy" / path
        return file.read_text() if file.is_file() else None

    for runtime in install.RUNTIMES:
        for obj in build(read, f"overlays/{runtime}"):
            if obj["kind"] == "DaemonSet":
                for container in obj["spec"]["template"]["spec"]["containers"]:
                    if container["image"] != f"docker.io/cedana/helper:{version}":
                        found.append(f"deploy/overlays/{runtime}: image {container['image']}")
    top, _date = dist.changelog_top(repo)
    if top != version:
        found.append(f"CHANGELOG.md: newest entry {top}")
    for name in MENTIONS:
        path = repo / name
        if not path.is_file():
            continue
        for match in MENTION.finditer(path.read_text()):
            mentioned = next(g for g in match.groups() if g)
            if mentioned != version:
                found.append(f"{name}: {match.group(0)}")
    return found


def test_every_copy_of_the_version_agrees() -> None:
    assert version_disagreements(REPO) == []


def test_a_stale_copy_is_caught(tmp_path: Path) -> None:
    """Bump version.py in a copy of the tree: every place that still says the old version is
    reported, one by one."""
    copy = tmp_path / "repo"
    for name in ["plugin-manifest.yaml", "CHANGELOG.md", *MENTIONS]:
        if (REPO / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(REPO / name, copy / name)
    shutil.copytree(REPO / "deploy", copy / "deploy", dirs_exist_ok=True)
    (copy / "kubectl_cedana").mkdir()
    major, minor, _patch = __version__.split("-")[0].split(".")
    (copy / "kubectl_cedana" / "version.py").write_text(
        f'__version__ = "{major}.{int(minor) + 1}.0"\n')
    found = version_disagreements(copy)
    assert any(f.startswith("plugin-manifest.yaml: spec.version") for f in found)
    assert any(f.startswith("plugin-manifest.yaml: uri") for f in found)
    assert {f.split(":")[0] for f in found if f.startswith("deploy/overlays/")} == \
        {f"deploy/overlays/{r}" for r in install.RUNTIMES}
    assert f"CHANGELOG.md: newest entry {__version__}" in found
    assert any(f.startswith("deploy/Dockerfile:") for f in found)


def test_the_plugin_and_the_helper_report_the_same_version() -> None:
    import sidecar

    assert sidecar.version == __version__
    result = run_cli(None, "version", "--client")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == f"Client Version: kubectl-cedana {__version__}"


def test_the_helper_image_is_tagged_with_the_version_of_version_py(tmp_path: Path) -> None:
    """The lines of hack/build-helper-image.sh that name the image, run against a copy whose
    version.py says something else; and setup.cfg's version, as setuptools reads it."""
    script = (REPO / "hack" / "build-helper-image.sh").read_text().splitlines()
    naming = [line for line in script if line.startswith(("version=", "image="))]
    (tmp_path / "kubectl_cedana").mkdir()
    (tmp_path / "kubectl_cedana" / "version.py").write_text('__version__ = "7.8.9"\n')
    shown = subprocess.run(["bash", "-c", "\n".join([f"repo={tmp_path}", *naming,
                                                     'echo "$image"'])],
                           capture_output=True, text=True, check=True, timeout=30)
    assert shown.stdout == "docker.io/cedana/helper:7.8.9\n"
    from setuptools.config.setupcfg import read_configuration

    metadata = read_configuration(str(REPO / "setup.cfg"))["metadata"]
    assert metadata["version"] == __version__
