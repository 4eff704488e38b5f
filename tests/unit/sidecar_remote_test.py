"""The pure parts of remote checkpoints and the catalogue: streamed compression, the archive's
member rules, retention planning, CRIU statistics, where a checkpoint goes."""
from __future__ import annotations

import io
import os
import queue
import tarfile
from pathlib import Path

import pytest

from sidecar.config import HelperConfig
from sidecar.errors import CheckpointCorrupted, InvalidRequest
from sidecar.node import criu_stats
from sidecar.ops import retention, transfer
from sidecar.registry import remote
from sidecar.storage import store
from tests.unit.sidecar_support import cluster_key, write_signing_key

FIXTURES = Path(__file__).parent / "fixtures"
KEY = cluster_key()


@pytest.mark.parametrize("kind", remote.COMPRESSIONS)
def test_streamed_compression_round_trips(kind: str) -> None:
    data = os.urandom(300_000) + b"\0" * 3_000_000 + b"tail"
    compressor = remote._Compressor(kind)
    packed = b"".join(compressor.compress(data[i:i + 65536])
                      for i in range(0, len(data), 65536)) + compressor.flush()
    if kind != "none":
        assert len(packed) < len(data)
    reader = remote.decompressed(kind, io.BytesIO(packed))
    pieces = []
    while piece := reader.read(4096):
        assert len(piece) <= 4096  # bounded output, however well the input compresses
        pieces.append(piece)
    assert b"".join(pieces) == data


def _checkpoint_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ckpt"
    (d / "checkpoint").mkdir(parents=True)
    (d / "checkpoint" / "pages-1.img").write_bytes(os.urandom(2_500_000))
    (d / "config.dump").write_text("{}")
    manifest = store.CheckpointManifest("id-1", "2026-01-01T00:00:00Z", {"pod": "p"}, {}, {})
    manifest.files = store.hash_files(d)
    manifest.sign(KEY)
    store.write_json(d / store.MANIFEST, manifest.to_dict())
    return d


@pytest.mark.parametrize("kind", ["none", "zstd"])
def test_tar_stream_holds_every_file_and_the_manifest(tmp_path: Path, kind: str) -> None:
    source = _checkpoint_dir(tmp_path)
    body, writer, thread = remote._stream(source, kind)
    thread.start()
    chunks = list(body)
    thread.join()
    assert max(len(c) for c in chunks) <= remote.CHUNK
    raw = remote.decompressed(kind, io.BytesIO(b"".join(chunks))).read()
    assert writer.uncompressed == len(raw)
    dest = tmp_path / "out"
    dest.mkdir()
    unpack = remote.checkpoint_extractor(dest)
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r|") as tar:
        for member in tar:
            assert member.uid == 0 and member.uname == ""
            unpack.extract(tar, member)
    unpack.finish()
    assert store.verify(dest, KEY).checkpoint_id == "id-1"
    assert (dest / "checkpoint" / "pages-1.img").stat().st_mode & 0o777 == 0o600


def test_a_failing_producer_reaches_the_uploader(tmp_path: Path) -> None:
    body, _writer, thread = remote._stream(tmp_path / "missing", "gzip")
    thread.start()
    with pytest.raises(FileNotFoundError):
        list(body)
    thread.join()


@pytest.mark.parametrize("name,kind", [("../escape", tarfile.REGTYPE),
                                       ("/etc/passwd", tarfile.REGTYPE),
                                       ("link", tarfile.SYMTYPE),
                                       ("dev", tarfile.CHRTYPE)])
def test_archive_members_outside_or_special_are_refused(tmp_path: Path, name: str,
                                                        kind: bytes) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = "/etc/shadow" if kind == tarfile.SYMTYPE else ""
        tar.addfile(info, io.BytesIO(b""))
    buffer.seek(0)
    unpack = remote.checkpoint_extractor(tmp_path)
    with tarfile.open(fileobj=buffer, mode="r|") as tar, pytest.raises(CheckpointCorrupted):
        for member in tar:
            unpack.extract(tar, member)
    assert not (tmp_path.parent / "escape").exists()


def _entry(ident: str, created: str, pod: str = "p", size: int = 100) -> dict[str, object]:
    return {"id": ident, "created": created, "namespace": "ns", "pod": pod, "container": "c",
            "size_bytes": size}


def test_plan_retention_oldest_first_per_container_then_bytes() -> None:
    entries = [_entry("a", "1"), _entry("b", "2"), _entry("c", "3"), _entry("x", "4", "q"),
               _entry("d", "5")]
    assert [e["id"] for e in retention.plan_retention(entries, 2, 0)] == ["a", "b"]
    assert retention.plan_retention(entries, 0, 0) == []
    assert [e["id"] for e in retention.plan_retention(entries, 0, 250)] == ["a", "b", "c"]
    # both limits: per container first, then bytes among the rest
    assert [e["id"] for e in retention.plan_retention(entries, 2, 150)] == ["a", "b", "c", "x"]
    assert [e["id"] for e in retention.plan_retention(entries, 1, 0)] == ["a", "b", "c"]


def test_where_a_checkpoint_goes(tmp_path: Path) -> None:
    plain = HelperConfig(checkpoint_dir=tmp_path)
    assert transfer.wants_remote(plain, None, "") is False
    assert transfer.wants_remote(plain, "local", "") is False
    with pytest.raises(InvalidRequest) as refused:
        transfer.wants_remote(plain, "remote", "")
    assert "checkpoint-repository" in refused.value.message
    with_registry = HelperConfig(checkpoint_dir=tmp_path, remote_repository="r.example/c",
                                 signing_key_file=write_signing_key(tmp_path / "key"))
    assert transfer.wants_remote(with_registry, None, "") is True
    assert transfer.wants_remote(with_registry, None, "some/dir") is False
    assert transfer.wants_remote(with_registry, "local", "") is False
    assert transfer.wants_remote(with_registry, "remote", "some/dir") is True
    # without the cluster's key nothing goes to the registry: no other node could verify it
    unkeyed = HelperConfig(checkpoint_dir=tmp_path, remote_repository="r.example/c")
    for storage, path in ((None, ""), ("remote", "some/dir")):
        with pytest.raises(InvalidRequest, match="--signing-key"):
            transfer.wants_remote(unkeyed, storage, path)
    assert transfer.wants_remote(unkeyed, "local", "") is False


def test_criu_dump_statistics() -> None:
    stats = criu_stats.parse((FIXTURES / "stats-dump").read_bytes())["dump"]
    assert stats["freezing_time_us"] == 416 and stats["frozen_time_us"] == 140702
    assert stats["pages_scanned"] == 23 and stats["pages_written"] == 16
    assert criu_stats.read(FIXTURES / "no-such-file") is None
    with pytest.raises(ValueError):
        criu_stats.parse(b"\0" * 4)


def test_compression_names() -> None:
    assert remote.check_compression(None) == "zstd"
    assert remote.check_compression("LZ4") == "lz4"
    with pytest.raises(InvalidRequest):
        remote.check_compression("brotli")


def test_queue_bound() -> None:
    chunks: queue.Queue[bytes | None | BaseException] = queue.Queue(maxsize=2)
    writer = remote._QueueWriter(chunks, "none")
    writer.write(b"x" * remote.CHUNK)
    writer.write(b"y" * 10)
    assert chunks.qsize() == 1 and len(writer.buffer) == 10
