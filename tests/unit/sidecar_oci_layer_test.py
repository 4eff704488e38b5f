"""Image layers: an overlay upper dir written as a layer blob, applied onto a rootfs, and the
config and manifest that add it to an image."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sidecar.errors import ContentTooLarge, ImageUnsupported, RestoreFailed
from sidecar.storage import oci_layer
from sidecar.storage.oci_layer import LayerBlob

LEADS_OUTSIDE = "^refusing .*leads outside the container's root filesystem"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="overlay mounts and whiteouts need root")


@dataclass
class Overlay:
    lower: Path
    upper: Path
    merged: Path


def _lower(lower: Path) -> None:
    (lower / "keep.txt").write_bytes(b"kept\n")
    (lower / "mod.txt").write_bytes(b"old\n")
    (lower / "perm.txt").write_bytes(b"chmodded\n")
    (lower / "gone.txt").write_bytes(b"deleted by the container\n")
    (lower / "gonedir" / "sub").mkdir(parents=True)
    (lower / "gonedir" / "sub" / "x.txt").write_bytes(b"x\n")
    (lower / "replaced" / "oldsub").mkdir(parents=True)
    (lower / "replaced" / "old.txt").write_bytes(b"hidden by the opaque dir\n")
    (lower / "replaced" / "oldsub" / "y.txt").write_bytes(b"y\n")
    (lower / "swap").symlink_to("keep.txt")          # becomes a directory
    (lower / "dir2file").mkdir()                     # becomes a file
    (lower / "dir2file" / "z.txt").write_bytes(b"z\n")
    (lower / "file2link").write_bytes(b"becomes a symlink\n")


def _change(merged: Path) -> None:
    (merged / "new.txt").write_bytes(b"new\n")
    (merged / "mod.txt").write_bytes(b"modified\n")
    os.chmod(merged / "perm.txt", 0o600)
    (merged / "gone.txt").unlink()
    shutil.rmtree(merged / "gonedir")
    shutil.rmtree(merged / "replaced")
    (merged / "replaced").mkdir()
    (merged / "replaced" / "fresh.txt").write_bytes(b"fresh\n")
    (merged / "newdir" / "inner").mkdir(parents=True)
    (merged / "newdir" / "inner" / "f.txt").write_bytes(b"f\n")
    os.link(merged / "new.txt", merged / "newdir" / "hard")
    (merged / "newlink").symlink_to("keep.txt")
    (merged / "abslink").symlink_to("/etc/hostname")
    (merged / "swap").unlink()
    (merged / "swap").mkdir()
    (merged / "swap" / "in.txt").write_bytes(b"in swap\n")
    shutil.rmtree(merged / "dir2file")
    (merged / "dir2file").write_bytes(b"now a file\n")
    (merged / "file2link").unlink()
    (merged / "file2link").symlink_to("new.txt")
    os.mkfifo(merged / "fifo", 0o640)
    (merged / "sticky").mkdir()
    os.chmod(merged / "sticky", 0o1777)
    (merged / "setuid").write_bytes(b"#!/bin/true\n")
    os.chmod(merged / "setuid", 0o4755)


@pytest.fixture
def overlay(tmp_path: Path) -> Iterator[Overlay]:
    if os.geteuid() != 0:
        pytest.skip("mounting overlay needs root")
    dirs = {name: tmp_path / name for name in ("lower", "upper", "work", "merged")}
    for path in dirs.values():
        path.mkdir()
    _lower(dirs["lower"])
    opts = f"lowerdir={dirs['lower']},upperdir={dirs['upper']},workdir={dirs['work']}"
    done = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(dirs["merged"])],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount overlay here: {done.stderr.strip()}")
    try:
        _change(dirs["merged"])
        yield Overlay(dirs["lower"], dirs["upper"], dirs["merged"])
    finally:
        subprocess.run(["umount", str(dirs["merged"])], check=True)


def _tree(root: Path) -> dict[str, tuple[object, ...]]:
    """rel path -> (kind, mode, uid, gid, content) for everything under root."""
    tree: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = path.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                content: object = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                content = path.read_bytes()
            else:
                content = None
            tree[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                         content)
    return tree


def _applied_view(merged: Path) -> dict[str, tuple[object, ...]]:
    """What applying the layer onto the lower dir gives: the merged view, but for the setuid
    file, which loses its setuid bit (docs/security.md); the sticky directory keeps its bit."""
    tree = _tree(merged)
    kind, mode, uid, gid, content = tree["setuid"]
    assert mode == 0o4755 and tree["sticky"][1] == 0o1777
    tree["setuid"] = (kind, 0o755, uid, gid, content)
    return tree


def _names(blob: LayerBlob) -> list[str]:
    with tarfile.open(blob.path, "r:gz") as tar:
        return tar.getnames()


@needs_root
def test_upper_dir_becomes_a_layer_with_whiteouts(overlay: Overlay, tmp_path: Path) -> None:
    blob = oci_layer.write_layer(overlay.upper, tmp_path / "layer.tar.gz")
    names = _names(blob)
    assert ".wh.gone.txt" in names and ".wh.gonedir" in names
    assert "gone.txt" not in names and not any(n.startswith("gonedir/") for n in names)
    # an opaque directory: its entry, then the marker, then its new content
    i = names.index("replaced")
    assert names[i:i + 3] == ["replaced", "replaced/.wh..wh..opq", "replaced/fresh.txt"]
    assert "swap/.wh..wh..opq" in names  # a directory made where a lower symlink was
    assert "dir2file/.wh..wh..opq" not in names
    assert names == sorted(set(names), key=names.index)  # no duplicates
    assert "keep.txt" not in names  # unchanged lower files stay out
    with tarfile.open(blob.path, "r:gz") as tar:
        wh = tar.getmember(".wh.gone.txt")
        assert wh.isreg() and wh.size == 0 and (wh.uid, wh.gid) == (0, 0)
        hard = tar.getmember("newdir/hard")
        assert hard.islnk() and hard.linkname == "new.txt"
        assert tar.getmember("abslink").linkname == "/etc/hostname"
        assert tar.getmember("fifo").isfifo()
        assert tar.getmember("setuid").mode == 0o4755
        assert tar.getmember("sticky").mode == 0o1777
        # overlay's own bookkeeping does not leak into the layer
        assert not any("overlay" in k for m in tar.getmembers() for k in m.pax_headers)
    assert all(not n.startswith(("/", "./")) for n in names)


@needs_root
def test_digests_and_determinism(overlay: Overlay, tmp_path: Path) -> None:
    blob = oci_layer.write_layer(overlay.upper, tmp_path / "a.tar.gz")
    data = blob.path.read_bytes()
    assert blob.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert blob.diff_id == "sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest()
    assert blob.size == len(data)
    assert blob.media_type == oci_layer.OCI_LAYER_GZIP
    assert stat.S_IMODE(blob.path.stat().st_mode) == 0o600
    assert data[3] == 0 and data[4:8] == b"\0\0\0\0"  # gzip header: no name, no mtime
    again = oci_layer.write_layer(overlay.upper, tmp_path / "b.tar.gz",
                                  media_type=oci_layer.DOCKER_LAYER_GZIP)
    assert again.path.read_bytes() == data
    assert (again.digest, again.diff_id) == (blob.digest, blob.diff_id)
    assert blob.descriptor() == {"mediaType": oci_layer.OCI_LAYER_GZIP, "digest": blob.digest,
                                 "size": len(data)}


@needs_root
def test_layer_applied_onto_the_lower_dir_gives_the_merged_view(overlay: Overlay,
                                                                tmp_path: Path) -> None:
    blob = oci_layer.write_layer(overlay.upper, tmp_path / "layer.tar.gz")
    rootfs = tmp_path / "rootfs"
    shutil.copytree(overlay.lower, rootfs, symlinks=True)
    applied = oci_layer.apply_layer(blob.path, blob.media_type, rootfs)
    assert _tree(rootfs) == _applied_view(overlay.merged)
    assert (rootfs / "new.txt").stat().st_ino == (rootfs / "newdir" / "hard").stat().st_ino
    assert applied.deleted == ["/gone.txt", "/gonedir"]
    assert applied.opaque == ["/replaced"]  # /swap was a symlink: replaced, not emptied
    with tarfile.open(blob.path, "r:gz") as tar:
        whiteouts = [n for n in tar.getnames() if "/.wh." in "/" + n]
        assert applied.entries == len(tar.getnames()) - len(whiteouts)


@needs_root
def test_plain_tar_layer(overlay: Overlay, tmp_path: Path) -> None:
    blob = oci_layer.write_layer(overlay.upper, tmp_path / "layer.tar",
                                 media_type=oci_layer.OCI_LAYER_TAR)
    assert blob.digest == blob.diff_id == oci_layer.digest_of(blob.path.read_bytes())
    rootfs = tmp_path / "rootfs"
    shutil.copytree(overlay.lower, rootfs, symlinks=True)
    oci_layer.apply_layer(blob.path, oci_layer.DOCKER_LAYER_TAR, rootfs)
    assert _tree(rootfs) == _applied_view(overlay.merged)


def test_empty_upper_is_an_empty_layer(tmp_path: Path) -> None:
    (tmp_path / "upper").mkdir()
    blob = oci_layer.write_layer(tmp_path / "upper", tmp_path / "layer.tar.gz")
    assert _names(blob) == []
    (tmp_path / "rootfs").mkdir()
    applied = oci_layer.apply_layer(blob.path, blob.media_type, tmp_path / "rootfs")
    assert (applied.deleted, applied.opaque, applied.entries) == ([], [], 0)


def test_unreadable_upper_is_a_dump_failure(tmp_path: Path) -> None:
    from sidecar.errors import DumpFailed
    with pytest.raises(DumpFailed, match="missing"):
        oci_layer.write_layer(tmp_path / "missing", tmp_path / "layer.tar.gz")
    assert not (tmp_path / "layer.tar.gz").exists()


def test_unsupported_media_type_is_refused(tmp_path: Path) -> None:
    (tmp_path / "rootfs").mkdir()
    with pytest.raises(RestoreFailed, match="unsupported layer media type"):
        oci_layer.apply_layer(tmp_path / "x", oci_layer.OCI_LAYER_GZIP.replace("gzip", "zstd"),
                              tmp_path / "rootfs")


# --- hostile layers ------------------------------------------------------------------------


def _layer(path: Path, *members: tarfile.TarInfo) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info in members:
            tar.addfile(info, io.BytesIO(b"pwned\n") if info.isreg() else None)
    return path


def _file(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 0 if ".wh." in name else len(b"pwned\n")
    return info


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    out = tmp_path / "outside"
    out.mkdir()
    (out / "victim.txt").write_bytes(b"keep me\n")
    (out / "dir").mkdir()
    (out / "dir" / "child.txt").write_bytes(b"keep me too\n")
    return out


@pytest.mark.parametrize("name", ["hostile-dotdot", "hostile-abs", "whiteout-via-symlink",
                                  "opaque-via-symlink", "hardlink-dotdot", "hardlink-via-symlink",
                                  "file-via-new-symlink"])
def test_hostile_layers_are_refused(name: str, tmp_path: Path, outside: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "data").symlink_to(outside)  # the target's own rootfs may hold such a symlink
    members = {
        "hostile-dotdot": [_file("../outside/victim.txt")],
        "hostile-abs": [_file(str(outside / "victim.txt"))],
        "whiteout-via-symlink": [_file("data/.wh.victim.txt")],
        "opaque-via-symlink": [_file("data/dir/.wh..wh..opq")],
        "hardlink-dotdot": [_link("h", "../outside/victim.txt", tarfile.LNKTYPE)],
        "hardlink-via-symlink": [_link("h", "data/victim.txt", tarfile.LNKTYPE)],
        "file-via-new-symlink": [_link("esc", str(outside), tarfile.SYMTYPE),
                                 _file("esc/new.txt")],
    }[name]
    before = _tree(outside)
    blob = _layer(tmp_path / "layer.tar.gz", *members)
    with pytest.raises(RestoreFailed, match=LEADS_OUTSIDE):
        oci_layer.apply_layer(blob, oci_layer.OCI_LAYER_GZIP, rootfs)
    assert _tree(outside) == before


def _bomb(path: Path, zeros: int) -> Path:
    """A gzip'ed layer holding one file of `zeros` zero bytes: a thousandth of it on disk."""
    info = tarfile.TarInfo("big.img")
    info.size = zeros
    with gzip.open(path, "wb", compresslevel=9) as gz, \
            tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(bytes(zeros)))
    return path


def test_a_decompression_bomb_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    blob = _bomb(tmp_path / "bomb.tar.gz", 10 << 20)
    assert blob.stat().st_size < 64 << 10
    with pytest.raises(ContentTooLarge) as err:
        oci_layer.apply_layer(blob, oci_layer.OCI_LAYER_GZIP, rootfs, max_bytes=1 << 20)
    assert err.value.status == 422 and err.value.extra["limit_bytes"] == 1 << 20
    assert list(rootfs.iterdir()) == []  # refused in the first pass, before any write
    with pytest.raises(ContentTooLarge):
        oci_layer.uncompressed_digest(blob, oci_layer.OCI_LAYER_GZIP, max_bytes=1 << 20)
    # under the limit the same layer applies
    applied = oci_layer.apply_layer(blob, oci_layer.OCI_LAYER_GZIP, rootfs, max_bytes=11 << 20)
    assert applied.entries == 1 and (rootfs / "big.img").stat().st_size == 10 << 20


def test_an_oversized_pax_header_is_refused_before_it_is_read(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    info = tarfile.TarInfo("small.txt")
    info.size = 3
    info.pax_headers = {"comment": "x" * (2 << 20)}  # held in memory whole by tarfile
    with tarfile.open(tmp_path / "layer.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(ContentTooLarge, match="extended header"):
        oci_layer.apply_layer(tmp_path / "layer.tar", oci_layer.OCI_LAYER_TAR, rootfs)
    assert list(rootfs.iterdir()) == []


def test_dotdot_inside_a_name_is_refused(tmp_path: Path, outside: Path) -> None:
    (tmp_path / "rootfs").mkdir()
    blob = _layer(tmp_path / "layer.tar.gz", _file("ok/../../outside/new.txt"))
    with pytest.raises(RestoreFailed, match=LEADS_OUTSIDE):
        oci_layer.apply_layer(blob, oci_layer.OCI_LAYER_GZIP, tmp_path / "rootfs")
    assert not (outside / "new.txt").exists()


def test_opaque_dir_that_is_a_symlink_is_not_emptied(tmp_path: Path, outside: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "data").symlink_to(outside)
    directory = tarfile.TarInfo("data")
    directory.type = tarfile.DIRTYPE
    directory.mode = 0o755
    blob = _layer(tmp_path / "layer.tar.gz", directory, _file("data/.wh..wh..opq"),
                  _file("data/new.txt"))
    before = _tree(outside)
    applied = oci_layer.apply_layer(blob, oci_layer.OCI_LAYER_GZIP, rootfs)
    assert _tree(outside) == before
    assert applied.opaque == []
    assert not (rootfs / "data").is_symlink()
    assert sorted(os.listdir(rootfs / "data")) == ["new.txt"]


def test_existing_symlink_is_replaced_not_written_through(tmp_path: Path, outside: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "shadow").symlink_to(outside / "victim.txt")
    (rootfs / "lib").symlink_to(outside / "dir")
    directory = tarfile.TarInfo("lib")
    directory.type = tarfile.DIRTYPE
    directory.mode = 0o755
    blob = _layer(tmp_path / "layer.tar.gz", _file("etc/shadow"), directory, _file("lib/x"))
    before = _tree(outside)
    oci_layer.apply_layer(blob, oci_layer.OCI_LAYER_GZIP, rootfs)
    assert _tree(outside) == before
    assert (rootfs / "etc" / "shadow").read_bytes() == b"pwned\n"
    assert not (rootfs / "lib").is_symlink() and (rootfs / "lib" / "x").is_file()


def test_hardlink_to_a_symlink_links_the_symlink(tmp_path: Path, outside: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "lnk").symlink_to(outside / "victim.txt")  # fine inside the container
    blob = _layer(tmp_path / "layer.tar.gz", _link("h", "lnk", tarfile.LNKTYPE))
    assert oci_layer.apply_layer(blob, oci_layer.OCI_LAYER_GZIP, rootfs).entries == 1
    assert (rootfs / "h").is_symlink()
    assert (rootfs / "h").lstat().st_ino != (outside / "victim.txt").stat().st_ino
    assert (outside / "victim.txt").stat().st_nlink == 1


def test_whiteouts_act_on_lower_layers_only(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "d").mkdir(parents=True)
    (rootfs / "d" / "old.txt").write_bytes(b"old\n")
    (rootfs / "gone").write_bytes(b"gone\n")
    # the whiteout and the opaque marker come after this layer's own entries in the tar
    blob = _layer(tmp_path / "layer.tar.gz", _file("d/new.txt"), _file("gone"),
                  _file(".wh.gone"), _file("d/.wh..wh..opq"), _file(".wh.never-existed"))
    applied = oci_layer.apply_layer(blob, oci_layer.OCI_LAYER_GZIP, rootfs)
    assert sorted(os.listdir(rootfs / "d")) == ["new.txt"]
    assert (rootfs / "gone").read_bytes() == b"pwned\n"
    assert applied.deleted == ["/gone"] and applied.opaque == ["/d"] and applied.entries == 2


def test_malformed_whiteout_is_refused(tmp_path: Path) -> None:
    (tmp_path / "rootfs" / "d").mkdir(parents=True)
    blob = _layer(tmp_path / "layer.tar.gz", _file("d/.wh."))
    with pytest.raises(RestoreFailed, match="whiteout"):
        oci_layer.apply_layer(blob, oci_layer.OCI_LAYER_GZIP, tmp_path / "rootfs")
    assert (tmp_path / "rootfs" / "d").is_dir()


# --- config and manifest -------------------------------------------------------------------

DOCKER_BASE_CONFIG = {
    "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
    "config": {"Env": ["PATH=/usr/bin"], "Cmd": ["sh"]},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "a" * 64]},
    "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "ADD rootfs.tar /"}],
}
OCI_BASE_CONFIG = {
    "architecture": "arm64", "os": "linux",
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "a" * 64, "sha256:" + "b" * 64]},
}


def _blob(tmp_path: Path, media_type: str) -> LayerBlob:
    return LayerBlob(path=tmp_path / "l", digest="sha256:" + "c" * 64,
                     diff_id="sha256:" + "d" * 64, size=123, media_type=media_type)


def _manifest(media_type: str, config_type: str, layer_type: str) -> dict[str, object]:
    return {
        "schemaVersion": 2, "mediaType": media_type,
        "config": {"mediaType": config_type, "digest": "sha256:" + "e" * 64, "size": 7},
        "layers": [{"mediaType": layer_type, "digest": "sha256:" + "f" * 64, "size": 9}],
    }


def test_config_with_layer_appends_diff_id_and_history() -> None:
    new = oci_layer.config_with_layer(DOCKER_BASE_CONFIG, "sha256:" + "d" * 64,
                                      created="2025-05-05T05:05:05Z", created_by="kubectl cedana",
                                      comment="rootfs checkpoint")
    assert new["rootfs"]["diff_ids"] == ["sha256:" + "a" * 64, "sha256:" + "d" * 64]
    assert new["history"][-1] == {"created": "2025-05-05T05:05:05Z",
                                  "created_by": "kubectl cedana", "comment": "rootfs checkpoint"}
    assert len(new["history"]) == 2 and new["created"] == "2025-05-05T05:05:05Z"
    assert new["config"] == DOCKER_BASE_CONFIG["config"]
    assert len(DOCKER_BASE_CONFIG["rootfs"]["diff_ids"]) == 1  # type: ignore[index]
    assert len(DOCKER_BASE_CONFIG["history"]) == 1  # the base is untouched


def test_config_without_history_gets_none() -> None:
    new = oci_layer.config_with_layer(OCI_BASE_CONFIG, "sha256:" + "d" * 64,
                                      created="2025-05-05T05:05:05Z", created_by="x")
    assert new["rootfs"]["diff_ids"][-1] == "sha256:" + "d" * 64
    assert len(new["rootfs"]["diff_ids"]) == 3 and "history" not in new
    assert new["created"] == "2025-05-05T05:05:05Z"


@pytest.mark.parametrize("family", ["docker", "oci"])
def test_manifest_with_layer(family: str, tmp_path: Path) -> None:
    if family == "docker":
        base = _manifest(oci_layer.DOCKER_MANIFEST, oci_layer.DOCKER_CONFIG,
                         oci_layer.DOCKER_LAYER_GZIP)
    else:
        base = _manifest(oci_layer.OCI_MANIFEST, oci_layer.OCI_CONFIG, oci_layer.OCI_LAYER_GZIP)
    layer_type = oci_layer.layer_media_type_for(str(base["mediaType"]))
    assert layer_type == (oci_layer.DOCKER_LAYER_GZIP if family == "docker"
                          else oci_layer.OCI_LAYER_GZIP)
    config_blob = json.dumps({"rootfs": {"type": "layers", "diff_ids": []}}).encode()
    layer = _blob(tmp_path, layer_type)
    manifest, data = oci_layer.manifest_with_layer(base, config_blob, layer)
    assert json.loads(data) == manifest and b" " not in data
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == base["mediaType"]
    assert manifest["config"] == {"mediaType": base["config"]["mediaType"],  # type: ignore[index]
                                  "digest": "sha256:" + hashlib.sha256(config_blob).hexdigest(),
                                  "size": len(config_blob)}
    assert manifest["layers"][:-1] == base["layers"]
    assert manifest["layers"][-1] == {"mediaType": layer_type, "digest": layer.digest,
                                      "size": 123}
    assert len(base["layers"]) == 1  # type: ignore[arg-type]


def test_layer_media_type_defaults_to_oci() -> None:
    assert oci_layer.layer_media_type_for("") == oci_layer.OCI_LAYER_GZIP


@pytest.mark.parametrize("base", [
    {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []},
    {"schemaVersion": 2,
     "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json", "manifests": []},
    {"schemaVersion": 2, "manifests": []},
    {"schemaVersion": 1, "fsLayers": []},
])
def test_index_and_old_manifests_are_refused(base: dict[str, object], tmp_path: Path) -> None:
    with pytest.raises(ImageUnsupported) as caught:
        oci_layer.manifest_with_layer(base, b"{}", _blob(tmp_path, oci_layer.OCI_LAYER_GZIP))
    assert caught.value.code == "image_unsupported" and caught.value.status == 422
    assert isinstance(caught.value, ValueError)
