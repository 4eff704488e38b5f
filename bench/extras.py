"""Compression of a real checkpoint, the machine's own limits, and CLI start-up time."""
from __future__ import annotations

import ctypes
import gzip
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.stats import summarize

CHUNK = 1024 * 1024


def _chunks(files: list[Path]) -> Iterator[bytes]:
    for path in files:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk


def codecs() -> dict[str, tuple[Callable[[], Any], Callable[[bytes], bytes]]]:
    """name -> (make a streaming compressor, decompress a whole buffer); defaults of each tool."""
    import lz4.frame
    import zstandard

    return {
        "gzip-6": (lambda: _GzipStream(6), gzip.decompress),
        "lz4": (_Lz4Stream, lz4.frame.decompress),
        "zstd-3": (lambda: zstandard.ZstdCompressor(level=3).compressobj(),
                   lambda data: zstandard.ZstdDecompressor().decompressobj().decompress(data)),
    }


class _Lz4Stream:
    """lz4 frame (default level) with the compress()/flush() shape of the other codecs."""

    def __init__(self) -> None:
        import lz4.frame
        self._c = lz4.frame.LZ4FrameCompressor()
        self._header: bytes | None = self._c.begin()

    def compress(self, data: bytes) -> bytes:
        head, self._header = self._header or b"", None
        return head + bytes(self._c.compress(data))

    def flush(self) -> bytes:
        head, self._header = self._header or b"", None
        return head + bytes(self._c.flush())


class _GzipStream:
    """gzip with the compress()/flush() shape of the other codecs."""

    def __init__(self, level: int) -> None:
        import zlib
        self._z = zlib.compressobj(level, zlib.DEFLATED, 31)

    def compress(self, data: bytes) -> bytes:
        return self._z.compress(data)

    def flush(self) -> bytes:
        return self._z.flush()


def compress_files(files: list[Path], repeat: int = 3) -> dict[str, dict[str, Any]]:
    """Per codec: MB/s compressing and decompressing (best of `repeat`) and the ratio.

    "none" is the cost of only reading the files (from the page cache)."""
    total = sum(p.stat().st_size for p in files)
    results: dict[str, dict[str, Any]] = {}
    read_times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _chunk in _chunks(files):
            pass
        read_times.append(time.perf_counter() - start)
    results["none"] = {"compress_mb_s": total / 1e6 / min(read_times),
                       "decompress_mb_s": None, "ratio": 1.0, "bytes_in": total,
                       "bytes_out": total}
    for name, (make, decompress) in codecs().items():
        times, dtimes, out_size = [], [], 0
        for _ in range(repeat):
            parts: list[bytes] = []
            start = time.perf_counter()
            comp = make()
            for chunk in _chunks(files):
                parts.append(comp.compress(chunk))
            parts.append(comp.flush())
            times.append(time.perf_counter() - start)
            blob = b"".join(parts)
            out_size = len(blob)
            start = time.perf_counter()
            restored = decompress(blob)
            dtimes.append(time.perf_counter() - start)
            if len(restored) != total:
                raise RuntimeError(f"{name} round trip lost bytes: {len(restored)} != {total}")
            del blob, restored, parts
        results[name] = {"compress_mb_s": total / 1e6 / min(times),
                         "decompress_mb_s": total / 1e6 / min(dtimes),
                         "ratio": total / out_size if out_size else None,
                         "bytes_in": total, "bytes_out": out_size}
    return results


def checkpoint_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and not p.is_symlink())


def random_sample(work: Path, mib: int) -> list[Path]:
    """Incompressible bytes: the other end of the scale from memhog's mostly-zero pages."""
    path = work / "random.bin"
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(CHUNK))
    return [path]


# -- the machine ---------------------------------------------------------------------------------
def sequential_write(directory: Path, mib: int, repeat: int = 3) -> dict[str, Any]:
    """MB/s writing `mib` MiB in 1 MiB blocks: into the page cache (what CRIU and runc do, no
    fsync) and to the disk (with fsync at the end, what the helper's finalize does)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "bench-write.bin"
    block = os.urandom(CHUNK)
    cached: list[float] = []
    synced: list[float] = []
    try:
        for _ in range(repeat):
            for sink in (cached, synced):
                path.unlink(missing_ok=True)
                start = time.perf_counter()
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    for _ in range(mib):
                        os.write(fd, block)
                    if sink is synced:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                sink.append(mib * CHUNK / 1e6 / (time.perf_counter() - start))
                path.unlink()
                if sink is cached:  # do not let the next run wait for this one's writeback
                    os.sync()
    finally:
        path.unlink(missing_ok=True)
    return {"mib": mib, "directory": str(directory),
            "page_cache_mb_s": summarize(cached).to_dict(),  # type: ignore[union-attr]
            "fsync_mb_s": summarize(synced).to_dict()}  # type: ignore[union-attr]


def memcpy_speed(mib: int = 256, repeat: int = 5) -> dict[str, Any]:
    """MB/s of libc memmove between two touched buffers of `mib` MiB."""
    size = mib * CHUNK
    src = (ctypes.c_char * size)()
    dst = (ctypes.c_char * size)()
    ctypes.memset(src, 1, size)
    ctypes.memset(dst, 2, size)
    speeds = []
    for _ in range(repeat):
        start = time.perf_counter()
        ctypes.memmove(dst, src, size)
        speeds.append(size / 1e6 / (time.perf_counter() - start))
    return {"mib": mib, "mb_s": summarize(speeds).to_dict()}  # type: ignore[union-attr]


# -- start-up -------------------------------------------------------------------------------------
def first_byte(args: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(ms to the first byte on stdout, ms to exit, exit status) of one run."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    first = proc.stdout.read(1)
    ttfb = time.perf_counter() - start
    proc.stdout.read()
    code = proc.wait()
    total = time.perf_counter() - start
    return (ttfb * 1000 if first else total * 1000), total * 1000, code


def startup(commands: dict[str, list[str]], env: dict[str, str], runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, args in commands.items():
        first_byte(args, env)  # warm the page cache and Python's bytecode cache
        ttfb, total, codes = [], [], set()
        for _ in range(runs):
            a, b, code = first_byte(args, env)
            ttfb.append(a)
            total.append(b)
            codes.add(code)
        out[label] = {"args": args, "ttfb_ms": summarize(ttfb).to_dict(),  # type: ignore[union-attr]
                      "total_ms": summarize(total).to_dict(),  # type: ignore[union-attr]
                      "exit_codes": sorted(codes)}
    return out
