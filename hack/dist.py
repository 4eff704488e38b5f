#!/usr/bin/env python3
"""`make dist`: the release archive that plugin-manifest.yaml points at, byte for byte
reproducible.

    dist/kubectl-cedana                   a zipapp: our package, deploy/'s YAML and the pure
                                          Python of hack/dist-requirements.txt; needs python3
    dist/kubectl-cedana-vVERSION.tar.gz   kubectl-cedana + LICENSE, what krew downloads
    dist/plugin-manifest.yaml             plugin-manifest.yaml with that archive's sha256

Same sources and pins give the same bytes: entries are sorted, every timestamp is
SOURCE_DATE_EPOCH (default: the date of the CHANGELOG entry of this version, so the archive
does not change with each commit), owners and modes are fixed, and nothing the installer
writes per machine (RECORD, INSTALLER, __pycache__, scripts) goes in. Runs with the standard
library and the running interpreter's pip; wheels are cached in build/dist-wheels.
"""
from __future__ import annotations

import argparse
import calendar
import configparser
import contextlib
import datetime
import fcntl
import gzip
import hashlib
import io
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parents[1]
PLUGIN_BIN = "kubectl-cedana"
RELEASE_DOWNLOADS = "https://github.com/cedana/kubectl-cedana/releases/download"


def python_floor(repo: Path = REPO) -> tuple[int, int]:
    """The oldest Python the plugin supports: setup.cfg's python_requires (>=X.Y)."""
    config = configparser.ConfigParser()
    config.read(repo / "setup.cfg", encoding="utf-8")
    match = re.fullmatch(r">=\s*(\d+)\.(\d+)", config.get("options", "python_requires").strip())
    if not match:
        raise ValueError("setup.cfg: python_requires must read >=X.Y")
    return int(match.group(1)), int(match.group(2))


MIN_PYTHON = python_floor()
SHEBANG = b"#!/usr/bin/env python3\n"
#: the wheels to bundle: those for the oldest Python we promise (pure Python ones are the same
#: for every version; the C extensions of the two platform wheels are dropped)
WHEEL_TARGET = ["--python-version", "{}.{}".format(*MIN_PYTHON), "--implementation", "cp",
                "--abi", "cp{}{}".format(*MIN_PYTHON), "--platform", "manylinux2014_x86_64",
                "--only-binary=:all:"]
ZIP_EPOCH_MIN = 315532800  # 1980-01-01, the earliest time a zip entry can hold
OUR_PACKAGE = "kubectl_cedana"
MAIN_TEMPLATE = Path(__file__).resolve().with_name("zipapp_main.py")


def main_py(others: dict[str, bytes]) -> bytes:
    """The zipapp's __main__.py: hack/zipapp_main.py with the Python floor and the build's
    identity (a digest of every other entry, names and bytes: it names the directory the
    zipapp unpacks itself into, so another build never uses this one's)."""
    digest = hashlib.sha256()
    for name in sorted(others):
        digest.update(b"%d:%s%d:" % (len(name.encode()), name.encode(), len(others[name])))
        digest.update(others[name])
    text = MAIN_TEMPLATE.read_text(encoding="utf-8")
    floor = f"MIN_PYTHON = {MIN_PYTHON!r}\n"
    build = f'BUILD = "{digest.hexdigest()[:24]}"\n'
    for old, new in ((r"^MIN_PYTHON = \(\d+, \d+\)\n", floor), (r'^BUILD = "dev"\n', build)):
        text, count = re.subn(old, new, text, count=1, flags=re.M)  # no backslash in new
        if count != 1:
            raise DistError(f"hack/zipapp_main.py: no line {old!r} to fill")
    return text.encode()


class DistError(Exception):
    """Why no archive was made, for the person running `make dist`."""


def read_version(repo: Path = REPO) -> str:
    text = (repo / OUR_PACKAGE / "version.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    if not match:
        raise DistError("no __version__ in kubectl_cedana/version.py")
    return match.group(1)


def archive_name(version: str) -> str:
    return f"{PLUGIN_BIN}-v{version}.tar.gz"


def release_uri(version: str) -> str:
    return f"{RELEASE_DOWNLOADS}/v{version}/{archive_name(version)}"


def changelog_top(repo: Path = REPO) -> tuple[str, datetime.date]:
    """(version, date) of the newest released entry: `## [0.1.0] - 2026-11-26`."""
    text = (repo / "CHANGELOG.md").read_text(encoding="utf-8")
    for match in re.finditer(r"^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?", text, re.M):
        if match.group(1).lower() == "unreleased":
            continue
        if not match.group(2):
            raise DistError(f"CHANGELOG.md: entry {match.group(1)} has no date")
        return match.group(1), datetime.date.fromisoformat(match.group(2))
    raise DistError("CHANGELOG.md has no released entry")


def source_date_epoch(version: str, repo: Path = REPO) -> int:
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    top, date = changelog_top(repo)
    if top != version:
        raise DistError(f"CHANGELOG.md's newest entry is {top}, the package is {version}")
    return calendar.timegm(date.timetuple())


# -- dependencies -------------------------------------------------------------------------------
def _pins(requirements: Path) -> list[tuple[str, str]]:
    pins = []
    for line in requirements.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line)
            if not match:
                raise DistError(f"{requirements.name}: not an exact pin: {line}")
            pins.append((match.group(1), match.group(2)))
    return pins


def _wheel_prefix(name: str, version: str) -> str:
    return f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}-"


def _pip(*args: str) -> None:
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True,
                          text=True, env=env, check=False)
    if proc.returncode != 0:
        raise DistError(f"pip {args[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def fetch_wheels(requirements: Path, cache: Path) -> None:
    """Download the pinned wheels (hash-checked) unless the cache has them all."""
    with _locked(cache):
        have = {p.name.lower() for p in cache.glob("*.whl")}
        missing = [n for n, v in _pins(requirements)
                   if not any(h.startswith(_wheel_prefix(n, v)) for h in have)]
        if missing:
            print(f"dist: downloading {', '.join(missing)}", file=sys.stderr)
            _pip("download", "--quiet", "--no-deps", "--require-hashes", "-r",
                 str(requirements), "-d", str(cache), *WHEEL_TARGET)


def install_dependencies(requirements: Path, cache: Path, target: Path) -> None:
    _pip("install", "--quiet", "--no-index", "--find-links", str(cache), "--no-deps",
         "--require-hashes", "--no-compile", "--no-warn-conflicts", "--target", str(target),
         *WHEEL_TARGET, "-r", str(requirements))


def keep_dependency_file(rel: PurePosixPath) -> bool:
    """What of `pip install --target` goes into the zipapp."""
    parts = rel.parts
    if parts[0] in ("bin", "_yaml") or "__pycache__" in parts:
        return False  # scripts; PyYAML's C-extension shim; bytecode
    if rel.suffix in (".so", ".pyd", ".pyc", ".pyo"):
        return False
    if parts[0].endswith(".dist-info"):
        # the metadata and licences stay; RECORD/INSTALLER/direct_url.json are per install
        return len(parts) > 1 and (parts[1] == "METADATA" or parts[1] == "licenses"
                                   or re.match(r"(LICEN[CS]E|COPYING|NOTICE|AUTHORS)",
                                               parts[1]) is not None)
    return True


# -- the archive's contents ---------------------------------------------------------------------
def _files_under(root: Path) -> Iterator[tuple[PurePosixPath, Path]]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            yield PurePosixPath(path.relative_to(root).as_posix()), path


def collect(repo: Path, site: Path) -> dict[str, bytes]:
    """Every file of the zipapp: archive name -> bytes."""
    entries: dict[str, bytes] = {}
    package = repo / OUR_PACKAGE
    for rel, path in _files_under(package):
        if rel.parts[0] in ("manifests", "overlays") or "__pycache__" in rel.parts:
            continue
        if rel.suffix == ".py":
            entries[f"{OUR_PACKAGE}/{rel}"] = path.read_bytes()
    # deploy/ as the package names it (kubectl_cedana/install.py: _PACKAGE_DIRS)
    for source, name in (("base", "manifests"), ("overlays", "overlays")):
        for rel, path in _files_under(repo / "deploy" / source):
            if rel.suffix == ".yaml":
                entries[f"{OUR_PACKAGE}/{name}/{rel}"] = path.read_bytes()
    for rel, path in _files_under(site):
        if rel.parts[0] == OUR_PACKAGE:
            raise DistError("a dependency would overwrite kubectl_cedana")
        if keep_dependency_file(rel):
            entries[str(rel)] = path.read_bytes()
    entries["__main__.py"] = main_py(entries)
    return entries


def _zip_time(epoch: int) -> tuple[int, int, int, int, int, int]:
    return tuple(time.gmtime(max(epoch, ZIP_EPOCH_MIN))[:6])  # type: ignore[return-value]


def zipapp_bytes(entries: dict[str, bytes], epoch: int) -> bytes:
    out = io.BytesIO()
    out.write(SHEBANG)  # zipimport finds the archive behind it, as with `python -m zipapp`
    with zipfile.ZipFile(out, "w") as archive:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=_zip_time(epoch))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # unix, whatever builds it
            info.external_attr = (0o100644 & 0xFFFF) << 16
            archive.writestr(info, entries[name], compresslevel=9)
    return out.getvalue()


def tarball_bytes(members: list[tuple[str, bytes, int]], epoch: int) -> bytes:
    """A tar.gz of (name, bytes, mode), with no trace of who built it where, or when."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data, mode in sorted(members):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, epoch
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    packed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=packed, compresslevel=9,
                       mtime=epoch) as gz:
        gz.write(raw.getvalue())
    return packed.getvalue()


# -- the manifest -------------------------------------------------------------------------------
_SHA_LINE = re.compile(r'^(\s*sha256:\s*)"?[0-9a-f]{64}"?\s*$', re.M)
_URI_LINE = re.compile(r"^\s*uri:\s*(\S+)\s*$", re.M)
_VERSION_LINE = re.compile(r"^\s*version:\s*(\S+)\s*$", re.M)


def release_manifest(template: str, version: str, sha256: str) -> str:
    """plugin-manifest.yaml with the archive's sha256 in every platform."""
    versions = _VERSION_LINE.findall(template)
    if versions != [f"v{version}"]:
        raise DistError(f"plugin-manifest.yaml: spec.version is {versions}, expected "
                        f"v{version} (kubectl_cedana/version.py)")
    uris = _URI_LINE.findall(template)
    if not uris or any(uri != release_uri(version) for uri in uris):
        raise DistError(f"plugin-manifest.yaml: every uri must be {release_uri(version)}")
    shas = _SHA_LINE.findall(template)
    if len(shas) != len(uris):
        raise DistError("plugin-manifest.yaml: every platform needs a sha256 line")
    body = "\n".join(line for line in template.splitlines()
                     if not line.startswith("#")).lstrip("\n")
    header = (f"# Written by `make dist` from plugin-manifest.yaml for v{version}: the sha256 "
              f"is that of\n# {archive_name(version)}. Install it without the index:\n"
              f"#   kubectl krew install --manifest=plugin-manifest.yaml "
              f"--archive={archive_name(version)}\n")
    return header + _SHA_LINE.sub(lambda m: f'{m.group(1)}"{sha256}"', body) + "\n"


# -- main ---------------------------------------------------------------------------------------
def build(out: Path, repo: Path = REPO, wheel_cache: Path | None = None) -> dict[str, str]:
    version = read_version(repo)
    epoch = source_date_epoch(version, repo)
    requirements = repo / "hack" / "dist-requirements.txt"
    cache = wheel_cache or repo / "build" / "dist-wheels"
    fetch_wheels(requirements, cache)
    (repo / "build").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dist-", dir=repo / "build") as scratch:
        site = Path(scratch) / "site"
        install_dependencies(requirements, cache, site)
        zipapp = zipapp_bytes(collect(repo, site), epoch)
    license_text = (repo / "LICENSE").read_bytes()
    tarball = tarball_bytes([(PLUGIN_BIN, zipapp, 0o755), ("LICENSE", license_text, 0o644)],
                            epoch)
    sha256 = hashlib.sha256(tarball).hexdigest()
    manifest = release_manifest((repo / "plugin-manifest.yaml").read_text(encoding="utf-8"),
                                version, sha256)
    out.mkdir(parents=True, exist_ok=True)
    written = {"zipapp": out / PLUGIN_BIN, "archive": out / archive_name(version),
               "manifest": out / "plugin-manifest.yaml"}
    for key, data in (("zipapp", zipapp), ("archive", tarball), ("manifest", manifest.encode())):
        tmp = written[key].with_name(written[key].name + ".tmp")
        tmp.write_bytes(data)
        tmp.chmod(0o755 if key == "zipapp" else 0o644)
        os.replace(tmp, written[key])
    return {"version": version, "sha256": sha256, "source_date_epoch": str(epoch),
            **{k: str(v) for k, v in written.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist",
                        help="output directory (default: dist/)")
    parser.add_argument("--wheel-cache", type=Path, default=None,
                        help="where the pinned wheels are kept (default: build/dist-wheels)")
    args = parser.parse_args(argv)
    try:
        result = build(args.out.resolve(), wheel_cache=args.wheel_cache)
    except DistError as exc:
        print(f"dist: error: {exc}", file=sys.stderr)
        return 1
    for key in ("archive", "zipapp", "manifest"):
        print(f"{key:9} {result[key]}")
    print(f"sha256    {result['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
