"""Writing into a root filesystem a running container controls (docs/security.md): image layers,
a checkpoint's changed files and its deletions never create, change or delete anything outside
it, not even when the container swaps a directory for a symlink while they are applied; setuid
and setgid bits are dropped, device nodes refused.

Every test that resolves a path runs twice: with openat2 (RESOLVE_BENEATH) and with the
component-by-component walk used where openat2 is missing."""
from __future__ import annotations

import ctypes
import errno
import io
import json
import os
import stat
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sidecar.errors import ContentRefused, RestoreFailed
from sidecar.storage import beneath, oci_layer, rootfs_diff

LEADS_OUTSIDE = "^refusing .*leads outside the container's root filesystem"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="owners, device nodes and mounts "
                                                           "need root")


@pytest.fixture(params=["openat2", "walk"])
def resolution(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
               tmp_path: Path) -> str:
    if request.param == "walk":
        monkeypatch.setattr(beneath, "_openat2_works", False)
    else:
        try:
            os.close(beneath.openat2(os.open(tmp_path, os.O_PATH), ".", os.O_PATH,
                                     beneath.BENEATH))
        except OSError as exc:
            pytest.skip(f"no openat2 here: {exc}")
    return str(request.param)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    out = tmp_path / "outside"
    (out / "dir").mkdir(parents=True)
    (out / "victim.txt").write_bytes(b"keep me\n")
    (out / "dir" / "child.txt").write_bytes(b"keep me too\n")
    return out


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    root.mkdir()
    return root


def _snapshot(root: Path) -> dict[str, tuple[int, int, int, bytes | str | None]]:
    """Everything below root: (mode, uid, nlink, content) by relative path."""
    found: dict[str, tuple[int, int, int, bytes | str | None]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            content: bytes | str | None = None
            if stat.S_ISREG(st.st_mode):
                content = path.read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            found[path.relative_to(root).as_posix()] = (st.st_mode, st.st_uid, st.st_nlink,
                                                        content)
    return found


def _member(name: str, kind: bytes = tarfile.REGTYPE, *, data: bytes = b"pwned\n",
            mode: int = 0o644, linkname: str = "", uid: int = 0,
            dev: tuple[int, int] = (0, 0)) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid = info.gid = uid
    info.mtime = 1_700_000_000
    info.linkname = linkname
    info.devmajor, info.devminor = dev
    if kind == tarfile.REGTYPE:
        info.size = len(data)
    return info, data


def _tar(path: Path, *members: tuple[tarfile.TarInfo, bytes], gz: bool = True) -> Path:
    with tarfile.open(path, "w:gz" if gz else "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _apply_layer(tmp_path: Path, rootfs: Path, *members: tuple[tarfile.TarInfo, bytes]
                 ) -> oci_layer.AppliedLayer:
    blob = _tar(tmp_path / "layer.tar.gz", *members)
    return oci_layer.apply_layer(blob, oci_layer.OCI_LAYER_GZIP, rootfs)


def _checkpoint(path: Path, *members: tuple[tarfile.TarInfo, bytes],
                deleted: list[str] | None = None) -> Path:
    path.mkdir()
    _tar(path / rootfs_diff.DIFF_TAR, *members, gz=False)
    (path / rootfs_diff.DELETED_FILES).write_text(json.dumps(deleted or []))
    return path


# --- (a) a member below a symlink that leads out ---------------------------------------------


@pytest.mark.parametrize("link", ["absolute", "relative", "chained"])
def test_a_member_below_a_symlink_leading_out_is_refused(resolution: str, link: str,
                                                         tmp_path: Path, rootfs: Path,
                                                         outside: Path) -> None:
    if link == "absolute":
        (rootfs / "a").symlink_to(outside)
    elif link == "relative":
        (rootfs / "a").symlink_to("../outside")
    else:  # inside, inside again, then out with `..`
        (rootfs / "x" / "y").mkdir(parents=True)
        (rootfs / "b").symlink_to("x/y")
        (rootfs / "a").symlink_to("b/../../../outside")
    before = _snapshot(outside)
    for name in ("a/b", "a/dir/child.txt", "a/new/deeper.txt"):
        with pytest.raises(RestoreFailed, match=LEADS_OUTSIDE):
            _apply_layer(tmp_path, rootfs, _member(name))
        ckpt = _checkpoint(tmp_path / f"ckpt-{name.replace('/', '-')}", _member(name))
        with pytest.raises(RestoreFailed, match=LEADS_OUTSIDE):
            rootfs_diff.apply_diff(ckpt, rootfs)
    assert _snapshot(outside) == before
    assert (rootfs / "a").is_symlink()


@needs_root
def test_a_proc_magic_link_inside_the_root_is_never_followed(resolution: str, tmp_path: Path,
                                                             rootfs: Path, outside: Path) -> None:
    """A relative symlink into a procfs below the root reaches / through /proc/self/root: the
    magic link is refused (openat2) or read as text that leads out (the walk)."""
    (rootfs / "proc").mkdir()
    mounted = subprocess.run(["mount", "-t", "proc", "proc", str(rootfs / "proc")],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount proc here: {mounted.stderr!r}")
    try:
        (rootfs / "esc").symlink_to("proc/self/root" + str(outside))
        assert (rootfs / "esc" / "victim.txt").read_bytes() == b"keep me\n"  # the way out
        with pytest.raises(RestoreFailed, match="^refusing path 'esc/victim.txt'"):
            _apply_layer(tmp_path, rootfs, _member("esc/victim.txt"))
        with pytest.raises(RestoreFailed, match="^refusing path 'esc/x'"):
            _apply_layer(tmp_path, rootfs, _member("esc/x"))
    finally:
        subprocess.run(["umount", str(rootfs / "proc")], check=True)
    assert (outside / "victim.txt").read_bytes() == b"keep me\n"
    assert not (outside / "x").exists()


def test_a_symlinked_directory_that_stays_inside_is_followed(resolution: str, tmp_path: Path,
                                                             rootfs: Path) -> None:
    (rootfs / "usr" / "lib").mkdir(parents=True)
    (rootfs / "lib").symlink_to("usr/lib")  # a merged-/usr image
    (rootfs / "usr" / "bin").mkdir()
    (rootfs / "usr" / "bin" / "up").symlink_to("../lib")
    _apply_layer(tmp_path, rootfs, _member("lib/libx.so", data=b"x"),
                 _member("usr/bin/up/new/liby.so", data=b"y"))
    assert (rootfs / "usr" / "lib" / "libx.so").read_bytes() == b"x"
    assert (rootfs / "usr" / "lib" / "new" / "liby.so").read_bytes() == b"y"
    assert (rootfs / "lib").is_symlink()


# --- (b) a container that swaps a directory for a symlink meanwhile --------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> None:
    """Swap two names atomically (renameat2 RENAME_EXCHANGE), as a container process could."""
    if _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b),
                       _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def _swapping(rootfs: Path, outside: Path) -> Iterator[list[int]]:
    """rootfs/data, a directory, and rootfs/evil, a symlink to `outside`, swapped as fast as
    possible in another thread until the block ends: data is a symlink every other moment.
    Yields [swaps so far]."""
    (rootfs / "data").mkdir()
    (rootfs / "evil").symlink_to(outside)
    stop = threading.Event()
    swaps = [0]
    failures: list[OSError] = []

    def run() -> None:
        while not stop.is_set():
            try:
                _exchange(rootfs / "data", rootfs / "evil")
            except OSError as exc:
                failures.append(exc)
                return
            swaps[0] += 1

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield swaps
    finally:
        stop.set()
        thread.join()
    assert not failures, failures


RACE_SECONDS = 2.0
RACE_FILES = 200


@pytest.mark.parametrize("what", ["layer", "rootfs-diff", "deleted.files", "whiteouts"])
def test_a_racing_symlink_swap_never_reaches_outside(resolution: str, what: str,
                                                     tmp_path: Path, rootfs: Path,
                                                     outside: Path) -> None:
    """Fails against a check-then-use by path: between the check of `data` and the write
    (or deletion) of `data/fN`, `data` becomes the symlink to `outside`."""
    names = [f"f{i:04d}" for i in range(RACE_FILES)]
    for name in names:  # what a deletion must never reach
        (outside / name).write_bytes(b"keep me\n")
    files = [_member(f"data/{n}") for n in names]
    if what == "layer":
        blob = _tar(tmp_path / "layer.tar.gz", *files)
    elif what == "whiteouts":
        blob = _tar(tmp_path / "layer.tar.gz", *[_member(f"data/.wh.{n}", data=b"")
                                                 for n in names])
    else:
        ckpt = _checkpoint(tmp_path / "ckpt", *(files if what == "rootfs-diff" else []),
                           deleted=[f"/data/{n}" for n in names]
                           if what == "deleted.files" else [])
    before = _snapshot(outside)
    done = refused = 0
    failed: list[str] = []  # a name changing under the helper may fail it otherwise
    with _swapping(rootfs, outside) as swaps:
        deadline = time.monotonic() + RACE_SECONDS
        while time.monotonic() < deadline:
            try:
                if what in ("layer", "whiteouts"):
                    oci_layer.apply_layer(blob, oci_layer.OCI_LAYER_GZIP, rootfs)
                else:
                    rootfs_diff.apply_diff(ckpt, rootfs)
                done += 1
            except RestoreFailed as exc:
                if "leads outside" in exc.message:
                    refused += 1
                else:
                    failed.append(exc.message)
    assert _snapshot(outside) == before  # nothing written, changed or deleted there
    assert swaps[0] > 1000 and refused > 0, (swaps, done, refused, failed[:3])


# --- (c) deletions: deleted.files and whiteouts ----------------------------------------------


@pytest.mark.parametrize("how", ["deleted.files", "whiteout", "opaque"])
@pytest.mark.parametrize("target", ["victim.txt", "dir", "dir/child.txt"])
def test_deletions_through_a_symlinked_parent_never_delete_outside(
        resolution: str, how: str, target: str, tmp_path: Path, rootfs: Path,
        outside: Path) -> None:
    (rootfs / "data").symlink_to("../outside")
    (rootfs / "abs").symlink_to(outside)
    before = _snapshot(outside)
    for link in ("data", "abs"):
        if how == "deleted.files":
            ckpt = _checkpoint(tmp_path / f"ckpt-{link}", deleted=[f"/{link}/{target}"])
            with pytest.raises(RestoreFailed, match=LEADS_OUTSIDE):
                rootfs_diff.apply_diff(ckpt, rootfs)
            continue
        parent, _, leaf = f"{link}/{target}".rpartition("/")
        marker = (f"{parent}/.wh.{leaf}" if how == "whiteout"
                  else f"{link}/{target}/.wh..wh..opq")
        with pytest.raises(RestoreFailed, match=LEADS_OUTSIDE):
            _apply_layer(tmp_path, rootfs, _member(marker, data=b""))
    assert _snapshot(outside) == before


def test_deleting_a_directory_removes_its_symlinks_not_their_targets(
        resolution: str, tmp_path: Path, rootfs: Path, outside: Path) -> None:
    for d in ("gone", "opaque"):
        (rootfs / d / "sub").mkdir(parents=True)
        (rootfs / d / "sub" / "out").symlink_to(outside)
        (rootfs / d / "victim").symlink_to(outside / "victim.txt")
        (rootfs / d / "sub" / "file").write_bytes(b"inside\n")
    before = _snapshot(outside)
    ckpt = _checkpoint(tmp_path / "ckpt", deleted=["/gone"])
    assert rootfs_diff.apply_diff(ckpt, rootfs)
    applied = _apply_layer(tmp_path, rootfs, _member("opaque/.wh..wh..opq", data=b""))
    assert applied.opaque == ["/opaque"]
    assert not (rootfs / "gone").exists() and os.listdir(rootfs / "opaque") == []
    assert _snapshot(outside) == before


def test_a_deep_directory_is_deleted(resolution: str, tmp_path: Path, rootfs: Path) -> None:
    deep = rootfs / "deep"
    path = deep
    for _ in range(300):  # deeper than a recursive removal would like
        path = path / "d"
    path.mkdir(parents=True)
    (path / "leaf").write_bytes(b"x")
    ckpt = _checkpoint(tmp_path / "ckpt", deleted=["/deep"])
    assert rootfs_diff.apply_diff(ckpt, rootfs)
    assert os.listdir(rootfs) == []


# --- (d) setuid, setgid, device nodes --------------------------------------------------------


@needs_root
@pytest.mark.parametrize("via", ["layer", "rootfs-diff"])
def test_setuid_and_setgid_are_dropped_owners_and_times_kept(via: str, tmp_path: Path,
                                                             rootfs: Path) -> None:
    members = [
        _member("bin", tarfile.DIRTYPE, mode=0o755),
        _member("bin/su", mode=0o4755, uid=0),
        _member("bin/wall", mode=0o2755, uid=5),
        _member("bin/both", mode=0o6711, uid=1234),
        _member("shared", tarfile.DIRTYPE, mode=0o6775, uid=1234),  # setgid: group inheritance
        _member("tmp", tarfile.DIRTYPE, mode=0o1777),
        _member("bin/sh", tarfile.SYMTYPE, linkname="su", uid=1234),
        _member("fifo", tarfile.FIFOTYPE, mode=0o2640, uid=1234),
        _member("whiteout", tarfile.CHRTYPE, mode=0o600, dev=(0, 0)),
        _member("bin/su2", tarfile.LNKTYPE, linkname="bin/su"),
    ]
    if via == "layer":
        _apply_layer(tmp_path, rootfs, *members)
    else:
        assert rootfs_diff.apply_diff(_checkpoint(tmp_path / "ckpt", *members), rootfs)

    def mode(name: str) -> int:
        return stat.S_IMODE((rootfs / name).lstat().st_mode)

    assert (mode("bin/su"), mode("bin/wall"), mode("bin/both")) == (0o755, 0o755, 0o711)
    assert (mode("shared"), mode("tmp"), mode("fifo")) == (0o2775, 0o1777, 0o640)
    assert (rootfs / "bin" / "su").read_bytes() == b"pwned\n"
    assert (rootfs / "bin" / "su2").stat().st_ino == (rootfs / "bin" / "su").stat().st_ino
    for name, uid in (("bin/both", 1234), ("bin/wall", 5), ("shared", 1234), ("bin/sh", 1234),
                      ("fifo", 1234)):
        assert ((rootfs / name).lstat().st_uid, (rootfs / name).lstat().st_gid) == (uid, uid)
    assert os.readlink(rootfs / "bin" / "sh") == "su"
    assert stat.S_ISFIFO((rootfs / "fifo").lstat().st_mode)
    whiteout = (rootfs / "whiteout").lstat()
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert all((rootfs / n).lstat().st_mtime == 1_700_000_000
               for n in ("bin", "bin/su", "shared", "fifo", "whiteout"))


@pytest.mark.parametrize("via", ["layer", "rootfs-diff"])
@pytest.mark.parametrize("kind,dev", [(tarfile.BLKTYPE, (8, 0)), (tarfile.CHRTYPE, (1, 3)),
                                      (tarfile.CHRTYPE, (0, 1))])
def test_device_nodes_are_refused_before_anything_is_written(
        via: str, kind: bytes, dev: tuple[int, int], tmp_path: Path, rootfs: Path) -> None:
    (rootfs / "old.txt").write_bytes(b"old\n")
    members = [_member("first.txt"), _member("dev/sda", kind, mode=0o666, dev=dev)]
    with pytest.raises(ContentRefused) as refused:
        if via == "layer":
            _apply_layer(tmp_path, rootfs, *members, _member(".wh.old.txt", data=b""))
        else:
            rootfs_diff.apply_diff(_checkpoint(tmp_path / "ckpt", *members,
                                               deleted=["/old.txt"]), rootfs)
    error = refused.value
    assert (error.status, error.code, error.extra) == (422, "content_refused",
                                                        {"member": "dev/sda"})
    assert "'dev/sda'" in error.message and f"device {dev}" in error.message
    assert sorted(os.listdir(rootfs)) == ["old.txt"]  # not even the deletion was made


# --- (e) hardlinks ---------------------------------------------------------------------------


@pytest.mark.parametrize("linkname", ["data/victim.txt", "abs/victim.txt", "../outside/victim.txt",
                                      "/victim.txt", "data/dir/child.txt"])
def test_a_hardlink_to_outside_is_refused(resolution: str, linkname: str, tmp_path: Path,
                                          rootfs: Path, outside: Path) -> None:
    (rootfs / "data").symlink_to("../outside")
    (rootfs / "abs").symlink_to(outside)
    before = _snapshot(outside)
    with pytest.raises(RestoreFailed, match=LEADS_OUTSIDE):
        _apply_layer(tmp_path, rootfs, _member("h", tarfile.LNKTYPE, linkname=linkname))
    with pytest.raises(RestoreFailed, match=LEADS_OUTSIDE):
        rootfs_diff.apply_diff(_checkpoint(tmp_path / "ckpt", _member(
            "h", tarfile.LNKTYPE, linkname=linkname)), rootfs)
    assert _snapshot(outside) == before
    assert (outside / "victim.txt").stat().st_nlink == 1
    assert not (rootfs / "h").exists()


def test_a_hardlink_inside_links_what_is_there(resolution: str, tmp_path: Path, rootfs: Path,
                                               outside: Path) -> None:
    (rootfs / "lib").mkdir()
    (rootfs / "lib" / "real").write_bytes(b"real\n")
    (rootfs / "via").symlink_to("lib")
    (rootfs / "lnk").symlink_to(outside / "victim.txt")
    _apply_layer(tmp_path, rootfs, _member("h1", tarfile.LNKTYPE, linkname="via/real"),
                 _member("h2", tarfile.LNKTYPE, linkname="lnk"))
    assert (rootfs / "h1").stat().st_ino == (rootfs / "lib" / "real").stat().st_ino
    assert (rootfs / "h2").is_symlink()  # the symlink itself, not what it points to
    assert (outside / "victim.txt").stat().st_nlink == 1


# --- the resolution itself -------------------------------------------------------------------


def test_openat2_and_the_walk_resolve_alike(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "file").write_bytes(b"")
    (root / "rel").symlink_to("a/b")
    (root / "a" / "up").symlink_to("..")
    (root / "abs").symlink_to("/")
    (root / "out").symlink_to("../outside")
    (root / "loop").symlink_to("loop")
    (root / "dangling").symlink_to("nowhere")
    expected: dict[str, str | int] = {
        "a/b": "a/b", "rel": "a/b", "a/up/rel": "a/b", "a/../a/b/..": "a", "rel/..": "a",
        "": ".", "abs": errno.EXDEV, "out": errno.EXDEV, "..": errno.EXDEV,
        "a/../..": errno.EXDEV, "a/up/a/up/..": errno.EXDEV, "loop": errno.ELOOP,
        "dangling": errno.ENOENT, "missing": errno.ENOENT, "file": errno.ENOTDIR,
        "file/x": errno.ENOTDIR,
    }
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        for path, want in expected.items():
            for how in ("openat2", "walk"):
                try:
                    if how == "walk":
                        fd = beneath.walk(root_fd, path)
                    else:
                        fd = beneath.resolve(root_fd, path)
                except OSError as exc:
                    assert exc.errno == want, (path, how, exc)
                    continue
                try:
                    got = os.path.relpath(os.readlink(f"/proc/self/fd/{fd}"), root)
                finally:
                    os.close(fd)
                assert got == want, (path, how)
    finally:
        os.close(root_fd)


def test_missing_directories_are_made_beneath_the_root(resolution: str, rootfs: Path,
                                                       outside: Path) -> None:
    (rootfs / "in").symlink_to(".")
    (rootfs / "out").symlink_to(outside)
    with beneath.Root(rootfs) as root:
        os.close(root.directory("in/x/y", create=True))
        with pytest.raises(OSError) as refused:
            root.directory("out/new/deeper", create=True)
        assert refused.value.errno == errno.EXDEV
    assert (rootfs / "x" / "y").is_dir() and not (outside / "new").exists()
