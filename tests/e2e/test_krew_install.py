"""The release archive installed the way krew installs it, used through the real kubectl.

`make dist`'s builder makes the archive and the release manifest; hack/dist_krew.py installs
them as `kubectl krew install --manifest --archive` does (krew itself is not in the package
registries this project may use). The plugin then runs in a clean environment: PATH is the
krew bin directory plus /usr/bin:/bin (the system python3 and kubectl), with no virtualenv,
no PYTHONPATH and an empty HOME.

The checkpoint/restore test installs the helper DaemonSet with the krew-installed plugin and
leaves it installed; it holds the helper DaemonSet lock, as test_plugin.py does for its whole
install ... uninstall sequence, so the two never overlap when run in parallel workers.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from kubectl_cedana.version import __version__
from tests.e2e.lab import REPO, Lab, counter_pod, helper_daemonset_lock

sys.path.insert(0, str(REPO / "hack"))
import dist_krew  # noqa: E402

SYSTEM_PATH = "/usr/bin:/bin"


@dataclass
class KrewInstall:
    root: Path
    link: Path
    manifest: dict[str, object]
    archive: Path
    home: Path

    def env(self, lab: Lab) -> dict[str, str]:
        return {"PATH": f"{self.root / 'bin'}:{SYSTEM_PATH}", "HOME": str(self.home),
                "KUBECONFIG": lab.kubeconfig, "LANG": "C.UTF-8"}

    def kubectl(self, lab: Lab, *args: str, timeout: float = 240
                ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["kubectl", *args], capture_output=True, text=True,
                              env=self.env(lab), timeout=timeout)


@pytest.fixture(scope="module")
def krew(tmp_path_factory: pytest.TempPathFactory) -> KrewInstall:
    work = tmp_path_factory.mktemp("krew")
    dist = work / "dist"
    built = subprocess.run([sys.executable, str(REPO / "hack" / "dist.py"), "--out", str(dist)],
                           capture_output=True, text=True, timeout=600, cwd=REPO)
    assert built.returncode == 0, built.stderr
    manifest_path = dist / "plugin-manifest.yaml"
    archive = dist / f"kubectl-cedana-v{__version__}.tar.gz"
    root = work / "krew-root"
    link = dist_krew.install(manifest_path, archive, root)
    home = work / "home"
    home.mkdir()
    return KrewInstall(root=root, link=link, archive=archive, home=home,
                       manifest=yaml.safe_load(manifest_path.read_text()))


def test_the_archive_lands_where_krew_puts_it(krew: KrewInstall) -> None:
    version = f"v{__version__}"
    assert krew.manifest["spec"]["version"] == version  # type: ignore[index]
    store = krew.root / "store" / "cedana" / version
    assert sorted(p.name for p in store.iterdir()) == ["LICENSE", "kubectl-cedana"]
    assert krew.link == krew.root / "bin" / "kubectl-cedana"
    assert krew.link.is_symlink() and krew.link.resolve() == store / "kubectl-cedana"
    assert os.access(krew.link, os.X_OK)
    assert (store / "LICENSE").read_bytes() == (REPO / "LICENSE").read_bytes()
    # the sha256 krew checked is the archive's, and the archive holds just those two files
    digest = hashlib.sha256(krew.archive.read_bytes()).hexdigest()
    platforms = krew.manifest["spec"]["platforms"]  # type: ignore[index]
    assert {p["sha256"] for p in platforms} == {digest}  # type: ignore[index]
    with tarfile.open(krew.archive) as tar:
        assert sorted(tar.getnames()) == ["LICENSE", "kubectl-cedana"]
    receipt = yaml.safe_load((krew.root / "receipts" / "cedana.yaml").read_text())
    assert receipt["spec"]["version"] == version


def test_a_tampered_archive_is_refused(krew: KrewInstall, tmp_path: Path) -> None:
    bad = tmp_path / krew.archive.name
    data = bytearray(krew.archive.read_bytes())
    data[-1] ^= 0xFF
    bad.write_bytes(bytes(data))
    manifest = krew.root.parent / "dist" / "plugin-manifest.yaml"
    with pytest.raises(dist_krew.KrewError, match="checksum does not match"):
        dist_krew.install(manifest, bad, tmp_path / "root")
    assert not (tmp_path / "root" / "bin").exists()


def test_kubectl_finds_and_runs_the_plugin_without_the_virtualenv(lab: Lab,
                                                                    krew: KrewInstall) -> None:
    env = krew.env(lab)
    assert ".venv" not in env["PATH"] and "VIRTUAL_ENV" not in env and "PYTHONPATH" not in env
    python = subprocess.run(["/usr/bin/env", "python3", "-c", "import sys; print(sys.prefix)"],
                            capture_output=True, text=True, env=env, check=True).stdout.strip()
    assert python == "/usr"  # the system interpreter, not the project's venv

    listed = krew.kubectl(lab, "plugin", "list", timeout=60)
    assert str(krew.link) in listed.stdout.splitlines(), listed.stdout + listed.stderr
    assert "warning" not in listed.stderr.lower(), listed.stderr

    shown = krew.kubectl(lab, "cedana", "version", "--client", "-o", "json")
    assert shown.returncode == 0, shown.stderr
    client = json.loads(shown.stdout)["client"]
    assert client["version"] == __version__
    assert f"v{client['version']}" == krew.manifest["spec"]["version"]  # type: ignore[index]
    text = krew.kubectl(lab, "cedana", "version", "--client")
    assert text.stdout.strip() == f"Client Version: kubectl-cedana {__version__}"


def test_the_code_that_runs_is_the_zipapp(lab: Lab, krew: KrewInstall, namespace: str) -> None:
    """--debug's traceback names the modules' files: they are the installed zipapp's, unpacked
    once into the user's cache, or inside the zipapp itself when the cache is refused."""
    def traceback_files(**env: str) -> set[str]:
        result = subprocess.run(["kubectl", "cedana", "--debug", "-n", namespace, "checkpoint",
                                 "no-such-pod"], capture_output=True, text=True, timeout=240,
                                env={**krew.env(lab), **env})
        assert result.returncode == 3, result.stderr
        assert result.stderr.rstrip().splitlines()[-1].startswith("error: ")
        assert str(REPO) not in result.stderr
        files = set(re.findall(r'File "([^"]+)"', result.stderr))
        assert files, result.stderr
        return files

    files = traceback_files()
    [unpacked] = (krew.home / ".cache" / "kubectl-cedana").glob("zipapp-*")
    build = zipfile.ZipFile(krew.link).read("__main__.py").decode()
    assert f'BUILD = "{unpacked.name.removeprefix("zipapp-")}"' in build
    assert all(f.startswith(f"{unpacked}/") or f.startswith(f"{krew.link}/") for f in files)
    assert f"{unpacked}/kubectl_cedana/cli.py" in files
    assert f"{unpacked}/click/core.py" in files
    # kubectl ran the krew link; without the cache Python imports from the zip behind it
    files = traceback_files(KUBECTL_CEDANA_NO_CACHE="1")
    assert all(f.startswith(f"{krew.link}/") for f in files), files
    assert f"{krew.link}/kubectl_cedana/cli.py" in files
    assert f"{krew.link}/click/core.py" in files


def test_checkpoint_and_restore_with_the_krew_installed_plugin(lab: Lab, krew: KrewInstall,
                                                               namespace: str) -> None:
    with helper_daemonset_lock():
        installed = krew.kubectl(lab, "cedana", "install", "--runtime", "containerd", "-o",
                                 "json", timeout=400)
        assert installed.returncode == 0, installed.stderr
        result = json.loads(installed.stdout)
        assert result["image"] == f"docker.io/cedana/helper:{__version__}"
        assert result["ready"]["ready"] == result["ready"]["desired"] >= 1

        # the helper pods run the image of the plugin's version
        versions = krew.kubectl(lab, "cedana", "version", "-o", "json")
        assert versions.returncode == 0, versions.stderr
        nodes = json.loads(versions.stdout)["nodes"]
        assert len(nodes) == len(lab.node_names()) and \
            {n["helper"] for n in nodes} == {__version__}, nodes

        lab.apply(counter_pod("counter", interval_ms=200), namespace)
        lab.wait_pod_running(namespace, "counter")
        lab.wait_log(namespace, "counter", r"count=\d\d")
        before = max(int(c) for c in re.findall(r"count=(\d+)", lab.logs(namespace, "counter")))

        ckpt = krew.kubectl(lab, "cedana", "-n", namespace, "checkpoint", "counter",
                            "--leave-running")
        assert ckpt.returncode == 0, ckpt.stderr
        checkpoint_id = ckpt.stdout.strip().splitlines()[-1]
        assert re.fullmatch(r"[0-9a-f-]{36}", checkpoint_id), ckpt.stdout
        # the plugin made a Checkpoint object, which kubectl alone sees
        shown = krew.kubectl(lab, "-n", namespace, "get", "checkpoints", "-l",
                             f"cedana.io/checkpoint-id={checkpoint_id}", "-o", "json")
        assert shown.returncode == 0, shown.stderr
        (obj,) = json.loads(shown.stdout)["items"]
        assert obj["status"]["phase"] == "Succeeded"

        restored = krew.kubectl(lab, "cedana", "-n", namespace, "restore", checkpoint_id,
                                "--new-pod", "restored")
        assert restored.returncode == 0, restored.stderr
        lab.wait_log(namespace, "restored", r"count=\d+")
        first = int(re.findall(r"count=(\d+)", lab.logs(namespace, "restored"))[0])
        assert first >= before  # continued from the checkpoint, not from zero
        lab.wait_log(namespace, "restored", rf"count={first + 3}\b")  # and keeps counting
