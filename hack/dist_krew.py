"""krew's checks of a plugin manifest and its install procedure, for our tests.

The `krew` binary cannot be had from the package registries this project may use (PyPI, npm,
Debian), so this follows what `kubectl krew install --manifest=M --archive=A` does, step by
step: validate the manifest (krew's own rules plus those krew-index's review applies), pick
the platform whose selector matches this os/arch, check the archive's sha256, extract it,
apply the `files` rules (each `from` glob moved into `to` under the install directory), then
link `bin` as $KREW_ROOT/bin/kubectl-NAME and write the receipt.
"""
from __future__ import annotations

import glob
import hashlib
import os
import platform
import posixpath
import re
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any

API_VERSION = "krew.googlecontainertools.github.com/v1alpha2"
KIND = "Plugin"
SELECTOR_KEYS = {"os", "arch"}
#: os/arch pairs krew publishes builds for; no two platforms of a manifest may match one
KNOWN_PLATFORMS = [(o, a) for o in ("linux", "darwin", "windows")
                   for a in ("amd64", "arm64", "386", "arm", "ppc64le", "s390x")]
SEMVER = re.compile(r"^v(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
                    r"(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$")
SHA256 = re.compile(r"^[a-f0-9]{64}$")
PLUGIN_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
SHORT_DESCRIPTION_MAX = 50
#: an option list in a description: `--flag`, `-o yaml`, or a line that starts like a list
OPTION_LIKE = re.compile(r"(^|\s)--?[A-Za-z]|^\s*[-*]\s", re.M)


class KrewError(Exception):
    """The manifest or the archive would make krew (or krew-index's review) refuse."""


def validate(manifest: dict[str, Any], *, min_python: str = "3.9") -> list[str]:
    """Every rule the manifest breaks, as one message each (empty: valid)."""
    problems: list[str] = []
    spec = manifest.get("spec") or {}
    name = (manifest.get("metadata") or {}).get("name") or ""
    if manifest.get("apiVersion") != API_VERSION:
        problems.append(f"apiVersion must be {API_VERSION}")
    if manifest.get("kind") != KIND:
        problems.append(f"kind must be {KIND}")
    if not PLUGIN_NAME.match(str(name)):
        problems.append("metadata.name must be lowercase words joined by dashes")
    if not SEMVER.match(str(spec.get("version") or "")):
        problems.append("spec.version must be semver with a leading v (v1.2.3)")
    homepage = str(spec.get("homepage") or "")
    if not homepage.startswith("https://"):
        problems.append("spec.homepage must be an https URL")
    short = str(spec.get("shortDescription") or "")
    if not short or "\n" in short.strip() or len(short) > SHORT_DESCRIPTION_MAX \
            or short.rstrip().endswith("."):
        problems.append(f"spec.shortDescription must be a few words on one line "
                        f"(at most {SHORT_DESCRIPTION_MAX} characters, no final period)")
    description = str(spec.get("description") or "")
    if not description.strip():
        problems.append("spec.description is required")
    elif OPTION_LIKE.search(description):
        problems.append("spec.description must not list options or usage")
    caveats = str(spec.get("caveats") or "")
    if "python3" not in caveats or f">= {min_python}" not in caveats:
        problems.append(f"spec.caveats must state the runtime need: python3 >= {min_python}")
    platforms = spec.get("platforms") or []
    if not platforms:
        problems.append("spec.platforms must list at least one platform")
    for index, entry in enumerate(platforms):
        problems.extend(f"spec.platforms[{index}]: {p}" for p in _platform_problems(entry))
    for os_name, arch in KNOWN_PLATFORMS:
        hits = [i for i, p in enumerate(platforms) if selector_matches(p, os_name, arch)]
        if len(hits) > 1:
            problems.append(f"platforms {hits} overlap: each matches {os_name}/{arch}")
    return problems


def _platform_problems(entry: dict[str, Any]) -> list[str]:
    problems = []
    selector = entry.get("selector") or {}
    labels = selector.get("matchLabels") or {}
    if set(selector) != {"matchLabels"} or set(labels) != SELECTOR_KEYS:
        problems.append("selector must be matchLabels with exactly os and arch")
    uri = str(entry.get("uri") or "")
    if not uri.startswith("https://") or not uri.endswith((".tar.gz", ".zip")):
        problems.append("uri must be an https URL of a .tar.gz or .zip")
    if not SHA256.match(str(entry.get("sha256") or "")):
        problems.append("sha256 must be 64 lowercase hex digits")
    bin_path = str(entry.get("bin") or "")
    if not bin_path or posixpath.isabs(bin_path) or ".." in bin_path.split("/"):
        problems.append("bin must be a relative path inside the install directory")
    for rule in entry.get("files") or []:
        if not rule.get("from") or not rule.get("to"):
            problems.append("every files rule needs from and to")
    return problems


def selector_matches(entry: dict[str, Any], os_name: str, arch: str) -> bool:
    """A Kubernetes label selector (as krew evaluates it) against {os, arch}."""
    selector = entry.get("selector") or {}
    actual = {"os": os_name, "arch": arch}
    if not all(actual.get(k) == v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression.get("key"), expression.get("operator")
        values = expression.get("values") or []
        present = key in actual
        if operator == "In" and not (present and actual[key] in values):
            return False
        if operator == "NotIn" and present and actual[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def this_platform() -> tuple[str, str]:
    """krew's os/arch names (Go's GOOS/GOARCH) for this machine."""
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
            "i686": "386", "i386": "386", "armv7l": "arm", "ppc64le": "ppc64le",
            "s390x": "s390x"}.get(machine, machine)
    return platform.system().lower(), arch


def pick_platform(manifest: dict[str, Any], os_name: str, arch: str) -> dict[str, Any]:
    for entry in (manifest.get("spec") or {}).get("platforms") or []:
        if selector_matches(entry, os_name, arch):
            return dict(entry)
    raise KrewError(f"plugin does not offer installation for {os_name}/{arch}")


def _extract(archive: Path, into: Path) -> None:
    """Unpack a .tar.gz or .zip (by content, as krew does), refusing paths that leave `into`."""
    root = into.resolve()
    with open(archive, "rb") as fh:
        magic = fh.read(4)
    if magic.startswith(b"PK"):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                target = (root / member.filename).resolve()
                if not str(target).startswith(str(root) + os.sep):
                    raise KrewError(f"archive entry {member.filename} leaves the directory")
                zf.extract(member, root)
                mode = (member.external_attr >> 16) & 0o777
                if mode and not member.is_dir():
                    os.chmod(target, mode)
        return
    if magic[:2] != b"\x1f\x8b":
        raise KrewError("archive is neither a tar.gz nor a zip")
    with tarfile.open(archive, "r:gz") as tar:
        for entry in tar.getmembers():
            target = (root / entry.name).resolve()
            if not str(target).startswith(str(root) + os.sep):
                raise KrewError(f"archive entry {entry.name} leaves the directory")
            if not (entry.isfile() or entry.isdir()):
                raise KrewError(f"archive entry {entry.name} is neither file nor directory")
            if entry.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(entry)
            if source is None:
                raise KrewError(f"archive entry {entry.name} cannot be read")
            with source, open(target, "wb") as out:
                shutil.copyfileobj(source, out)
            os.chmod(target, entry.mode & 0o777)  # krew keeps the header's mode


def _apply_files(rules: list[dict[str, str]], extracted: Path, install_dir: Path) -> None:
    """krew's file operations: each match of `from` (a glob) moves into `to`/basename."""
    if not rules:
        rules = [{"from": "*", "to": "."}]
    for rule in rules:
        source, dest = str(rule["from"]), str(rule["to"])
        if posixpath.normpath(dest) != dest or posixpath.normpath(source) != source:
            raise KrewError(f"files rule {rule}: paths must be clean")
        to_dir = (install_dir / dest).resolve()
        if to_dir != install_dir.resolve() and \
                not str(to_dir).startswith(str(install_dir.resolve()) + os.sep):
            raise KrewError(f"files rule {rule}: moves outside the install directory")
        matches = sorted(glob.glob(str(extracted / source)))
        if not matches:
            raise KrewError(f"files rule {rule}: nothing in the archive matches "
                            f"(it holds {sorted(os.listdir(extracted))})")
        to_dir.mkdir(parents=True, exist_ok=True)
        for match in matches:
            shutil.move(match, to_dir / os.path.basename(match))


def install(manifest_path: Path, archive: Path, krew_root: Path,
            os_name: str | None = None, arch: str | None = None) -> Path:
    """`kubectl krew install --manifest=manifest_path --archive=archive`; returns the link
    $KREW_ROOT/bin/kubectl-NAME."""
    import yaml

    manifest = yaml.safe_load(manifest_path.read_text(encoding="utf-8"))
    problems = validate(manifest)
    if problems:
        raise KrewError("invalid manifest: " + "; ".join(problems))
    if os_name is None or arch is None:
        os_name, arch = this_platform()
    chosen = pick_platform(manifest, os_name, arch)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != chosen["sha256"]:
        raise KrewError(f"checksum does not match: archive {digest}, manifest "
                        f"{chosen['sha256']}")
    name, version = manifest["metadata"]["name"], manifest["spec"]["version"]
    install_dir = krew_root / "store" / name / version
    if install_dir.exists():
        raise KrewError(f"{name} {version} is already installed")
    with tempfile.TemporaryDirectory(dir=krew_root.parent) as scratch:
        extracted = Path(scratch) / "extracted"
        extracted.mkdir()
        _extract(archive, extracted)
        staged = Path(scratch) / "install"
        staged.mkdir()
        _apply_files(chosen.get("files") or [], extracted, staged)
        install_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staged), install_dir)
    binary = (install_dir / chosen["bin"]).resolve()
    if not str(binary).startswith(str(install_dir.resolve()) + os.sep) or not binary.is_file():
        raise KrewError(f"bin {chosen['bin']} is not a file inside the install directory")
    link = krew_root / "bin" / f"kubectl-{name.replace('-', '_')}"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(binary)
    receipt = dict(manifest, status={"source": {"name": "detached"}})
    (krew_root / "receipts").mkdir(exist_ok=True)
    (krew_root / "receipts" / f"{name}.yaml").write_text(yaml.safe_dump(receipt),
                                                         encoding="utf-8")
    return link
