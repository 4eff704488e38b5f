"""`make dist`: twice gives the same bytes, the manifest's sha256 is the archive's, and the
zipapp inside runs on a bare python3 (no site-packages, no virtualenv)."""
from __future__ import annotations

import calendar
import glob
import gzip
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from kubectl_cedana import install
from kubectl_cedana.version import __version__

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "hack"))
import dist  # noqa: E402
import dist_krew  # noqa: E402

ARCHIVE = f"kubectl-cedana-v{__version__}.tar.gz"
OUTPUTS = ("kubectl-cedana", ARCHIVE, "plugin-manifest.yaml")
SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


@dataclass
class Builds:
    first: Path
    second: Path

    @property
    def archive(self) -> Path:
        return self.first / ARCHIVE

    @property
    def zipapp(self) -> Path:
        return self.first / "kubectl-cedana"


def make_dist(out: Path, **env: str) -> None:
    proc = subprocess.run(["make", "-s", "dist", f"DIST_DIR={out}"], cwd=REPO, check=False,
                          capture_output=True, text=True, timeout=900,
                          env={k: v for k, v in {**os.environ, **env}.items()
                               if k != "SOURCE_DATE_EPOCH" or "SOURCE_DATE_EPOCH" in env})
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    root = tmp_path_factory.mktemp("dist")
    make_dist(root / "first")
    make_dist(root / "second")
    return Builds(root / "first", root / "second")


def release_epoch() -> int:
    _version, date = dist.changelog_top(REPO)
    return calendar.timegm(date.timetuple())


def test_make_dist_twice_gives_identical_bytes(builds: Builds) -> None:
    for name in OUTPUTS:
        first, second = (builds.first / name).read_bytes(), (builds.second / name).read_bytes()
        assert first == second, name
        assert len(first) > 0


def test_the_manifest_carries_the_archives_sha256(builds: Builds) -> None:
    manifest = yaml.safe_load((builds.first / "plugin-manifest.yaml").read_text())
    digest = hashlib.sha256(builds.archive.read_bytes()).hexdigest()
    assert {p["sha256"] for p in manifest["spec"]["platforms"]} == {digest}
    assert dist_krew.validate(manifest) == []
    assert manifest["spec"]["version"] == f"v{__version__}"
    assert all(p["uri"].endswith(f"/v{__version__}/{ARCHIVE}")
               for p in manifest["spec"]["platforms"])


def test_the_archive_holds_the_zipapp_and_the_licence_with_fixed_metadata(
        builds: Builds) -> None:
    epoch = release_epoch()
    raw = builds.archive.read_bytes()
    assert raw[:2] == b"\x1f\x8b" and struct.unpack("<I", raw[4:8])[0] == epoch  # gzip mtime
    with gzip.open(builds.archive) as gz:
        assert b"/work/" not in gz.read()[:1024]  # no build paths in the headers
    with tarfile.open(builds.archive) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["LICENSE", "kubectl-cedana"]
        assert [m.mode for m in members] == [0o644, 0o755]
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == \
            {(epoch, 0, 0, "", "")}
        assert tar.extractfile("LICENSE").read() == (REPO / "LICENSE").read_bytes()  # type: ignore[union-attr]
        assert tar.extractfile("kubectl-cedana").read() == builds.zipapp.read_bytes()  # type: ignore[union-attr]


def test_the_zipapp_has_sorted_timeless_entries_and_nothing_machine_made(
        builds: Builds) -> None:
    data = builds.zipapp.read_bytes()
    assert data.startswith(b"#!/usr/bin/env python3\n")
    assert os.access(builds.zipapp, os.X_OK)
    with zipfile.ZipFile(builds.zipapp) as archive:
        infos = archive.infolist()
        names = [i.filename for i in infos]
        assert names == sorted(names)
        assert {i.date_time for i in infos} == {dist._zip_time(release_epoch())}
        assert {i.external_attr >> 16 for i in infos} == {0o100644}
        for name in names:
            assert "__pycache__" not in name and not name.endswith((".pyc", ".so"))
            assert not name.endswith(("/RECORD", "/INSTALLER", "/direct_url.json"))
            assert not name.startswith("bin/")
        # our package as in the checkout, deploy/ as the package names it
        for path in (REPO / "kubectl_cedana").glob("*.py"):
            assert archive.read(f"kubectl_cedana/{path.name}") == path.read_bytes()
        for path in (REPO / "deploy").rglob("*.yaml"):
            rel = path.relative_to(REPO / "deploy")
            if rel.parts[0] in ("base", "overlays"):
                inner = ("manifests" if rel.parts[0] == "base" else "overlays",
                         *rel.parts[1:])
                assert archive.read("kubectl_cedana/" + "/".join(inner)) == path.read_bytes()
        for package in ("click", "kubernetes", "requests", "urllib3", "yaml", "certifi"):
            assert f"{package}/__init__.py" in names
        # the plugin alone: neither the helper nor its server stack
        for package in ("sidecar", "fastapi", "starlette", "pydantic", "uvicorn", "docker",
                        "psutil", "zstandard", "lz4", "cryptography"):
            assert not [n for n in names if n.startswith(f"{package}/")], package
        # the dependencies' licences travel with them
        assert any(n.startswith("kubernetes-") and "LICENSE" in n for n in names)


def run_zipapp(python: str, zipapp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # -I: no user site, no PYTHON* variables; -S: not even the system's site-packages
    return subprocess.run([python, "-I", "-S", str(zipapp), *args], capture_output=True,
                          check=False,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin",
                                                       "HOME": "/nonexistent"})


def check_runs_alone(python: str, zipapp: Path) -> None:
    shown = run_zipapp(python, zipapp, "version", "--client")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == f"Client Version: kubectl-cedana {__version__}"
    for runtime in install.RUNTIMES:
        printed = run_zipapp(python, zipapp, "install", "--runtime", runtime, "--dry-run",
                             "-o", "yaml")
        assert printed.returncode == 0, printed.stderr
        objects = [d for d in yaml.safe_load_all(printed.stdout) if d]
        assert objects == install.render_manifests(runtime=runtime), runtime


def test_the_zipapp_runs_on_the_system_python_alone(builds: Builds) -> None:
    check_runs_alone(SYSTEM_PYTHON, builds.zipapp)


def _pyenv_python(minor: str) -> str | None:
    found = shutil.which(f"python{minor}")
    candidates = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{minor}.*/bin/python3")))
    return candidates[-1] if candidates else found


def test_the_zipapp_runs_on_the_oldest_python_it_promises(builds: Builds) -> None:
    python = _pyenv_python("3.9")
    if python is None:
        pytest.skip("no Python 3.9 on this machine")
    check_runs_alone(python, builds.zipapp)


def test_an_older_python_is_told_what_is_needed(builds: Builds) -> None:
    python = _pyenv_python("3.8")
    if python is None:
        pytest.skip("no Python 3.8 on this machine")
    result = run_zipapp(python, builds.zipapp, "version")
    assert result.returncode == 1
    assert result.stderr == "error: kubectl-cedana needs python3 >= 3.9 (this is 3.8)\n"


def test_source_date_epoch_sets_every_timestamp(builds: Builds, tmp_path: Path) -> None:
    make_dist(tmp_path, SOURCE_DATE_EPOCH="1700000000")
    with tarfile.open(tmp_path / ARCHIVE) as tar:
        assert {m.mtime for m in tar.getmembers()} == {1700000000}
    with zipfile.ZipFile(tmp_path / "kubectl-cedana") as archive:
        assert {i.date_time for i in archive.infolist()} == {(2023, 11, 14, 22, 13, 20)}
    assert (tmp_path / ARCHIVE).read_bytes() != builds.archive.read_bytes()


# -- the zipapp's cache: unpacked once, compiled once ---------------------------------------
def run_with_cache(zipapp: Path, cache: Path, *args: str, python: str = SYSTEM_PYTHON,
                   **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([python, "-I", "-S", str(zipapp), *args], capture_output=True,
                          check=False, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(cache.parent),
                               "XDG_CACHE_HOME": str(cache), **env})


def unpacked_builds(cache: Path) -> list[Path]:
    return sorted((cache / "kubectl-cedana").glob("zipapp-*"))


def plant_version(unpacked: Path, version: str) -> None:
    """Change the unpacked copy only: a run that prints this version imported from there."""
    (unpacked / "kubectl_cedana" / "version.py").write_text(f'__version__ = "{version}"\n')
    for compiled in (unpacked / "kubectl_cedana" / "__pycache__").glob("version.*.pyc"):
        compiled.unlink()


def shown_version(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().rsplit(" ", 1)[-1]


@pytest.mark.parametrize("minor", ["3.9", "3.11"])
def test_the_zipapp_unpacks_itself_once_and_runs_from_there(builds: Builds, tmp_path: Path,
                                                            minor: str) -> None:
    python = _pyenv_python(minor) if minor != "3.11" else SYSTEM_PYTHON
    if python is None:
        pytest.skip(f"no Python {minor} on this machine")
    cache = tmp_path / "cache"
    assert shown_version(run_with_cache(builds.zipapp, cache, "version", "--client",
                                        python=python)) == __version__
    [unpacked] = unpacked_builds(cache)
    build = zipfile.ZipFile(builds.zipapp).read("__main__.py").decode()
    assert f'BUILD = "{unpacked.name.removeprefix("zipapp-")}"' in build
    assert (unpacked.stat().st_mode & 0o777) == 0o700
    assert (unpacked / "kubectl_cedana" / "cli.py").read_bytes() == \
        (REPO / "kubectl_cedana" / "cli.py").read_bytes()
    assert not (unpacked / "__main__.py").exists()
    # Python compiled what it imported there, for the next run
    assert list((unpacked / "kubectl_cedana" / "__pycache__").glob("cli.*.pyc"))
    assert not list((cache / "kubectl-cedana").glob(".unpack-*"))
    plant_version(unpacked, "9.9.9-unpacked")
    again = run_with_cache(builds.zipapp, cache, "version", "--client", python=python)
    assert shown_version(again) == "9.9.9-unpacked"
    assert unpacked_builds(cache) == [unpacked]


def test_a_cache_another_user_could_change_is_not_used(builds: Builds, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert run_with_cache(builds.zipapp, cache, "version", "--client").returncode == 0
    [unpacked] = unpacked_builds(cache)
    plant_version(unpacked, "6.6.6-planted")
    root = cache / "kubectl-cedana"

    def version() -> str:
        return shown_version(run_with_cache(builds.zipapp, cache, "version", "--client"))

    assert version() == "6.6.6-planted"  # the cache is used while it is ours alone
    for path, mode in ((root, 0o777), (root, 0o720), (unpacked, 0o757), (cache, 0o777)):
        before = path.stat().st_mode & 0o7777
        path.chmod(mode)
        assert version() == __version__, (path, oct(mode))  # the archive's own code
        path.chmod(before)
    cache.chmod(0o1777)  # a sticky directory like /tmp: no one may rename our entries
    assert version() == "6.6.6-planted"
    cache.chmod(0o700)
    os.chown(unpacked, 65534, 65534)  # another user's unpacked copy
    assert version() == __version__
    os.chown(unpacked, os.geteuid(), os.getegid())
    moved = tmp_path / "elsewhere"
    root.rename(moved)
    root.symlink_to(moved)  # a link may point anywhere later
    assert version() == __version__


def test_concurrent_first_runs_unpack_once(builds: Builds, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CACHE_HOME": str(cache)}
    procs = [subprocess.Popen([SYSTEM_PYTHON, "-I", "-S", str(builds.zipapp), "version",
                               "--client"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(4)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out.strip() == f"Client Version: kubectl-cedana {__version__}"
    assert len(unpacked_builds(cache)) == 1
    assert sorted(p.name for p in (cache / "kubectl-cedana").iterdir()) == \
        [unpacked_builds(cache)[0].name]


def test_no_cache_when_asked_or_when_there_is_none(builds: Builds, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    asked = run_with_cache(builds.zipapp, cache, "version", "--client",
                           KUBECTL_CEDANA_NO_CACHE="1")
    assert shown_version(asked) == __version__ and not unpacked_builds(cache)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    assert shown_version(run_with_cache(builds.zipapp, not_a_dir, "version", "--client")) == \
        __version__
    # no home: nothing is created for it
    homeless = subprocess.run([SYSTEM_PYTHON, "-I", "-S", str(builds.zipapp), "version",
                               "--client"], capture_output=True, text=True, check=False,
                              env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "nohome")})
    assert shown_version(homeless) == __version__
    assert not (tmp_path / "nohome").exists()
    # another user's home (sudo keeps HOME): nothing is created in it
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    visitor = subprocess.run([SYSTEM_PYTHON, "-I", "-S", str(builds.zipapp), "version",
                              "--client"], capture_output=True, text=True, check=False,
                             env={"PATH": "/usr/bin:/bin", "HOME": str(theirs)})
    assert shown_version(visitor) == __version__
    assert list(theirs.iterdir()) == []


def test_builds_unused_for_a_month_and_stale_unpacks_are_removed(builds: Builds,
                                                                 tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    root = cache / "kubectl-cedana"
    ages = {"zipapp-old": 31 * 86400, "zipapp-recent": 86400, ".unpack-killed": 2 * 3600,
            ".unpack-running": 60}
    for name, age in ages.items():
        (root / name / "kubectl_cedana").mkdir(parents=True)
        os.utime(root / name, (time.time() - age, time.time() - age))
    root.chmod(0o700)
    cache.chmod(0o700)
    assert run_with_cache(builds.zipapp, cache, "version", "--client").returncode == 0
    left = sorted(p.name for p in root.iterdir())
    assert "zipapp-old" not in left and ".unpack-killed" not in left
    assert {"zipapp-recent", ".unpack-running"} <= set(left) and len(left) == 3


def test_the_build_identity_follows_every_byte() -> None:
    entries = {"a.py": b"x = 1\n", "b/c.py": b"y = 2\n"}

    def build(of: dict[str, bytes]) -> str:
        return dist.main_py(of).decode().split('BUILD = "', 1)[1].split('"', 1)[0]

    assert build(entries) == build(dict(reversed(list(entries.items()))))
    assert build(entries) != build({**entries, "b/c.py": b"y = 3\n"})
    assert build(entries) != build({"a.py": b"x = 1\n", "b/d.py": b"y = 2\n"})
    assert len(build(entries)) == 24 and build(entries) != "dev"
