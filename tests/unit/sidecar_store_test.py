"""The on-disk checkpoint format: manifest, verification, permissions, the catalogue."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from sidecar.errors import CheckpointCorrupted, CheckpointNotFound
from sidecar.ops.restore import restore_is_live
from sidecar.storage import store
from sidecar.storage.catalogue import Catalogue, RestoredRegistry
from tests.unit.sidecar_support import cluster_key

KEY = cluster_key()


def make_checkpoint(tmp_path: Path, name: str = "ckpt") -> Path:
    final = tmp_path / name
    temp = tmp_path / f".tmp-{name}"
    (temp / "checkpoint").mkdir(parents=True)
    (temp / "checkpoint" / "pages-1.img").write_bytes(os.urandom(2 * 1024 * 1024 + 17))
    (temp / "checkpoint" / "descriptors.json").write_text('["/dev/null"]')
    (temp / "spec.dump").write_text('{"ociVersion": "1.0.2-dev"}')
    (temp / "config.dump").write_text('{"id": "x"}')
    (temp / "dump.log").write_text("done\n")
    manifest = store.CheckpointManifest(
        checkpoint_id="11111111-2222-3333-4444-555555555555", created="2024-05-02T09:00:00Z",
        source={"namespace": "default"}, tools={"helper": "0.1.0"},
        criu_options={"tcp_established": False},
    )
    store.finalize(temp, final, manifest, key=KEY)
    return final


def test_finalize_renames_into_place_with_manifest(tmp_path: Path) -> None:
    final = make_checkpoint(tmp_path)
    assert not (tmp_path / ".tmp-ckpt").exists()
    manifest = json.loads((final / "manifest.json").read_text())
    assert manifest["format"] == store.MANIFEST_FORMAT
    assert set(manifest["files"]) == {
        "checkpoint/pages-1.img", "checkpoint/descriptors.json", "spec.dump", "config.dump",
        "dump.log",
    }
    pages = manifest["files"]["checkpoint/pages-1.img"]
    assert pages["size"] == 2 * 1024 * 1024 + 17
    assert store.verify(final, KEY).checkpoint_id == "11111111-2222-3333-4444-555555555555"


def test_files_and_dirs_are_private(tmp_path: Path) -> None:
    final = make_checkpoint(tmp_path)
    for path in [final, *final.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), path


def test_flipped_byte_is_named(tmp_path: Path) -> None:
    final = make_checkpoint(tmp_path)
    pages = final / "checkpoint" / "pages-1.img"
    data = bytearray(pages.read_bytes())
    data[1024 * 1024 + 3] ^= 0x01
    pages.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorrupted) as err:
        store.verify(final, KEY)
    assert err.value.status == 422
    assert err.value.extra["file"] == "checkpoint/pages-1.img"
    assert "checkpoint/pages-1.img" in err.value.message


def test_missing_or_truncated_file(tmp_path: Path) -> None:
    final = make_checkpoint(tmp_path)
    (final / "dump.log").unlink()
    with pytest.raises(CheckpointCorrupted, match="dump.log is missing"):
        store.verify(final, KEY)
    final2 = make_checkpoint(tmp_path, "ckpt2")
    (final2 / "spec.dump").write_text("{}")
    with pytest.raises(CheckpointCorrupted, match="spec.dump has 2 bytes"):
        store.verify(final2, KEY)


def test_missing_manifest_is_corrupted(tmp_path: Path) -> None:
    (tmp_path / "bare").mkdir()
    with pytest.raises(CheckpointCorrupted) as err:
        store.verify(tmp_path / "bare", KEY)
    assert err.value.extra["file"] == "manifest.json"


def test_manifest_cannot_point_outside(tmp_path: Path) -> None:
    final = make_checkpoint(tmp_path)
    manifest = json.loads((final / "manifest.json").read_text())
    manifest["files"]["../outside"] = {"sha256": "0" * 64, "size": 0}
    signed = store.CheckpointManifest.from_dict(manifest)
    signed.sign(KEY)  # a helper signed it: the paths are still confined
    (final / "manifest.json").write_text(json.dumps(signed.to_dict()))
    with pytest.raises(CheckpointCorrupted, match="outside"):
        store.verify(final, KEY)


def test_cleanup_temporaries(tmp_path: Path) -> None:
    final = make_checkpoint(tmp_path)
    (tmp_path / ".tmp-abandoned" / "checkpoint").mkdir(parents=True)
    (tmp_path / "team" / ".tmp-nested").mkdir(parents=True)
    removed = store.cleanup_temporaries(tmp_path)
    assert {p.name for p in removed} == {".tmp-abandoned", ".tmp-nested"}
    assert not (tmp_path / ".tmp-abandoned").exists()
    assert store.verify(final, KEY)


def entry(checkpoint_id: str, path: Path) -> dict[str, object]:
    return {"id": checkpoint_id, "path": str(path), "namespace": "default", "pod": "p",
            "container": "c", "node": "n", "size_bytes": 1, "created": "2024-05-02T09:00:00Z",
            "leave_running": True, "status": "complete", "restores": []}


def test_catalogue_survives_reopen_and_deletes_directory(tmp_path: Path) -> None:
    final = make_checkpoint(tmp_path)
    Catalogue(tmp_path).add(entry("id-1", final))
    Catalogue(tmp_path).record_restore("id-1", {"container_id": "t", "pid": 5})
    reopened = Catalogue(tmp_path)  # as after a helper restart
    assert [e["id"] for e in reopened.list()] == ["id-1"]
    assert reopened.get("id-1")["restores"] == [{"container_id": "t", "pid": 5}]
    assert stat.S_IMODE((tmp_path / ".catalogue.json").stat().st_mode) == 0o600
    reopened.delete("id-1")
    assert not final.exists()
    with pytest.raises(CheckpointNotFound):
        Catalogue(tmp_path).get("id-1")
    with pytest.raises(CheckpointNotFound):
        Catalogue(tmp_path).delete("id-1")


def test_catalogue_never_deletes_outside_its_directory(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    outside = tmp_path / "precious"
    outside.mkdir()
    Catalogue(base).add(entry("id-2", outside))
    Catalogue(base).delete("id-2")
    assert outside.is_dir()


def test_restored_registry_liveness(tmp_path: Path) -> None:
    registry = RestoredRegistry(tmp_path, restore_is_live)
    registry.record("target-1", {"pid": os.getpid(), "pid_start_time": None})
    assert registry.live_restore("target-1") is not None
    registry.record("target-2", {"pid": 999_999_999})
    assert RestoredRegistry(tmp_path, restore_is_live).live_restore("target-2") is None
    assert RestoredRegistry(tmp_path, restore_is_live).live_restore("unknown") is None
    # a record whose tree has gone is dropped with the next one written
    registry.record("target-3", {"pid": os.getpid()})
    assert set(json.loads((tmp_path / ".restored.json").read_text())) == {"target-1",
                                                                          "target-3"}


def test_following_hasher_hashes_a_file_while_it_is_appended_to(tmp_path: Path) -> None:
    import hashlib
    import threading
    import time

    images = tmp_path / "checkpoint"
    images.mkdir()
    data = os.urandom(3 * 1024 * 1024 + 5)

    def writer() -> None:  # like CRIU: sequential writes into a growing pages image
        with open(images / "pages-1.img", "wb", buffering=0) as f:
            for start in range(0, len(data), 256 * 1024):
                f.write(data[start:start + 256 * 1024])
                time.sleep(0.002)

    with store.FollowingHasher(images, poll_s=0.001) as hasher:
        thread = threading.Thread(target=writer)
        thread.start()
        thread.join()
        (images / "inventory.img").write_bytes(b"not followed")
        known = hasher.finish()
    assert set(known) == {"checkpoint/pages-1.img"}
    assert known["checkpoint/pages-1.img"].sha256 == hashlib.sha256(data).hexdigest()
    assert known["checkpoint/pages-1.img"].size == len(data)


def test_hash_files_uses_a_known_digest_only_for_the_same_file(tmp_path: Path) -> None:
    (tmp_path / "checkpoint").mkdir()
    page = tmp_path / "checkpoint" / "pages-1.img"
    page.write_bytes(b"x" * 100)
    inode = page.stat().st_ino
    same = {"checkpoint/pages-1.img": store.KnownDigest("f" * 64, 100, inode)}
    assert store.hash_files(tmp_path, same)["checkpoint/pages-1.img"]["sha256"] == "f" * 64
    stale = {"checkpoint/pages-1.img": store.KnownDigest("f" * 64, 99, inode)}
    real = store.hash_file(page)[0]
    assert store.hash_files(tmp_path, stale)["checkpoint/pages-1.img"]["sha256"] == real


def test_a_catalogue_locked_elsewhere_is_waited_for_then_refused(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    import subprocess
    import sys

    from sidecar.errors import InternalError
    from sidecar.storage import catalogue

    Catalogue(tmp_path).add({"id": "a", "created": "1"})
    lock = tmp_path / ".catalogue.json.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(lock)!r}, os.O_RDWR)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "time.sleep(float(sys.stdin.readline()))\n")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        monkeypatch.setattr(catalogue, "LOCK_WAIT_S", 0.3)
        with pytest.raises(InternalError, match="locked by another process"):
            Catalogue(tmp_path).add({"id": "b", "created": "2"})
    finally:
        assert holder.stdin is not None
        holder.stdin.write("0\n")
        holder.stdin.close()
        holder.wait(timeout=10)
    Catalogue(tmp_path).add({"id": "b", "created": "2"})  # free again
    assert [e["id"] for e in Catalogue(tmp_path).list()] == ["a", "b"]


def test_a_sealed_checkpoint_is_not_hashed_again_while_untouched(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    final = make_checkpoint(tmp_path)  # finalize hashed every file and sealed them
    assert (final / store.SEAL).is_file()
    assert store.SEAL not in store.list_files(final)  # never archived, pushed or sent
    hashed: list[str] = []
    real = store.hash_file

    def counting(path: Path) -> tuple[str, int]:
        hashed.append(path.name)
        return real(path)

    monkeypatch.setattr(store, "hash_file", counting)
    assert store.verify(final, KEY).checkpoint_id == "11111111-2222-3333-4444-555555555555"
    assert hashed == ["manifest.json"]  # only the manifest, to match the seal


def test_a_file_changed_behind_the_seal_is_found(tmp_path: Path) -> None:
    final = make_checkpoint(tmp_path)
    pages = final / "checkpoint" / "pages-1.img"
    before = pages.stat()
    data = bytearray(pages.read_bytes())
    data[5] ^= 0x01
    with open(pages, "r+b") as f:  # the same file, size and (put back) modification time
        f.write(bytes(data))
    os.utime(pages, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (pages.stat().st_size, pages.stat().st_ino, pages.stat().st_mtime_ns) == \
        (before.st_size, before.st_ino, before.st_mtime_ns)
    with pytest.raises(CheckpointCorrupted, match="pages-1.img does not match its sha256"):
        store.verify(final, KEY)


def test_a_forged_or_foreign_seal_is_not_trusted(tmp_path: Path) -> None:
    final = make_checkpoint(tmp_path)
    other = make_checkpoint(tmp_path, "other")
    # dump.log changed (same size), and the seal edited to say it stands as it does now: its
    # signature no longer fits, so every file is hashed and the change found
    (final / "dump.log").write_text("evil\n")
    forged = json.loads((final / store.SEAL).read_text())
    now = os.stat(final / "dump.log")
    forged["files"]["dump.log"] = [now.st_size, now.st_ino, now.st_mtime_ns, now.st_ctime_ns]
    (final / store.SEAL).write_text(json.dumps(forged))
    with pytest.raises(CheckpointCorrupted, match="dump.log does not match"):
        store.verify(final, KEY)
    # another checkpoint's valid seal copied in does not vouch for this one: hashed in full
    # (intact again) and sealed anew
    (final / "dump.log").write_text("done\n")
    (final / store.SEAL).write_bytes((other / store.SEAL).read_bytes())
    store.verify(final, KEY)
    assert json.loads((final / store.SEAL).read_text())["files"]["dump.log"][3] == \
        os.stat(final / "dump.log").st_ctime_ns
