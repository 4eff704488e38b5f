"""A checkpoint on disk: the directory layout kubelet/CRI-O/checkpointctl use, plus our manifest.

    <checkpoint>/
      config.dump      JSON: id, name, rootfs image name/ref, runtime, created/checkpointed times
      spec.dump        the container's OCI config.json
      checkpoint/      CRIU images and runc's descriptors.json
      dump.log         CRIU's dump log
      stats-dump       CRIU's dump statistics
      manifest.json    ours: format, id, source, tools, options, sha256 + size of every file,
                       and the signature of all that (storage/signing.py)
      .seal.json       ours, never travels: that this helper hashed every file and found them
                       as the manifest says, and how each file stood then (seal(), below)

A checkpoint is assembled in a sibling `.tmp-<id>` directory and renamed into place only once
every file is written and synced, so a directory with a manifest is always complete.
"""
from __future__ import annotations

import ctypes
import fnmatch
import hashlib
import json
import logging
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sidecar.errors import CheckpointCorrupted, CheckpointUntrusted
from sidecar.storage.paths import within
from sidecar.storage.signing import MANIFEST_PURPOSE, SigningKey, canonical

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SEAL = ".seal.json"
SEAL_PURPOSE = b"cedana-helper checkpoint seal v1\n"
MANIFEST_FORMAT = "cedana-helper.checkpoint/v1"
IMAGES_DIR = "checkpoint"
TEMP_PREFIX = ".tmp-"
CHUNK = 1024 * 1024
HASH_BUFFER = 4 * 1024 * 1024
DIR_MODE = 0o700
FILE_MODE = 0o600  # the images hold process memory


@dataclass
class CheckpointManifest:
    checkpoint_id: str
    created: str
    source: dict[str, Any]
    tools: dict[str, str]
    criu_options: dict[str, Any]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    format: str = MANIFEST_FORMAT
    # HMAC of everything above (signing.py); None: not signed
    signature: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data["signature"] is None:
            del data["signature"]
        return data

    def signed_payload(self) -> dict[str, Any]:
        """What the signature covers: every field but the signature itself."""
        data = asdict(self)
        del data["signature"]
        return data

    def sign(self, key: SigningKey) -> None:
        self.signature = key.sign(MANIFEST_PURPOSE, self.signed_payload())

    def check_signature(self, key: SigningKey, where: str) -> None:
        """CheckpointUntrusted unless a helper holding `key` signed exactly this manifest."""
        problem = key.problem(MANIFEST_PURPOSE, self.signed_payload(), self.signature)
        if not problem:
            return
        if self.signature is None:
            why = ("is not signed: it was written by a helper older than checkpoint signing, "
                   "or by something that is not a helper")
        else:
            why = problem
        raise CheckpointUntrusted(
            f"checkpoint {self.checkpoint_id} ({where}) is not signed by a helper of this "
            f"cluster: its manifest {why}. This helper restores only checkpoints signed with "
            f"{key.describe()}; every helper of the cluster must use the same key (the Secret "
            "cedana-signing-key, or --signing-key on a helper run by hand)",
            checkpoint_id=self.checkpoint_id)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckpointManifest:
        return cls(
            checkpoint_id=str(data["checkpoint_id"]),
            created=str(data.get("created", "")),
            source=dict(data.get("source") or {}),
            tools=dict(data.get("tools") or {}),
            criu_options=dict(data.get("criu_options") or {}),
            files=dict(data["files"]),
            format=str(data["format"]),
            signature=dict(data["signature"]) if isinstance(data.get("signature"), dict)
            else None,
        )

    @property
    def size_bytes(self) -> int:
        return sum(int(f.get("size", 0)) for f in self.files.values())


def make_private_dirs(path: Path, stop_at: Path) -> None:
    """mkdir -p with mode 0700 for every directory created below `stop_at`."""
    missing = []
    current = path
    while not current.exists() and current != stop_at and current != current.parent:
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        directory.mkdir(mode=DIR_MODE)


def restrict_permissions(directory: Path) -> None:
    os.chmod(directory, DIR_MODE)
    for dirpath, dirnames, filenames in os.walk(directory):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), DIR_MODE)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, FILE_MODE)


def write_json(path: Path, data: Any) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def hash_file(path: Path) -> tuple[str, int]:
    # one reused buffer, unbuffered reads: a fresh bytes object per chunk cost ~20% of the
    # time of hashing a 1 GiB pages image
    digest = hashlib.sha256()
    size = 0
    buf = bytearray(HASH_BUFFER)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while count := f.readinto(buf):
            digest.update(view[:count])
            size += count
    return digest.hexdigest(), size


def _libc_sync_file_range() -> Any:
    try:
        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return func


_SYNC_FILE_RANGE = _libc_sync_file_range()
SYNC_FILE_RANGE_WRITE = 2
WRITEBACK_STEP = 32 * 1024 * 1024


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range to disk now, without waiting (Linux
    sync_file_range); the final fsync then finds most of a large image already written.
    Only a hint: it changes no data and its failure is ignored."""
    if _SYNC_FILE_RANGE is not None and length > 0:
        _SYNC_FILE_RANGE(fd, max(offset, 0), length, SYNC_FILE_RANGE_WRITE)


@dataclass(frozen=True)
class KnownDigest:
    """A digest computed while the file was written; valid only for that very file."""

    sha256: str
    size: int
    inode: int


class FollowingHasher:
    """sha256 of the files matching `pattern` in `directory`, computed while another process
    (CRIU, through runc) is still appending to them, so hashing overlaps the dump instead of
    following it. CRIU writes its pages images strictly sequentially (splice at the file
    position, never a seek back) and only in this directory; finish() reads each file to its
    end once the writer has exited. A file that was replaced meanwhile (another inode or
    size) is simply hashed again by hash_files."""

    def __init__(self, directory: Path, pattern: str = "pages-*.img",
                 poll_s: float = 0.005) -> None:
        self.directory = directory
        self.pattern = pattern
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._states: dict[str, list[Any]] = {}  # name -> [fd, digest, size, inode]
        self._buf = bytearray(HASH_BUFFER)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._follow, name="follow-hash", daemon=True)

    def __enter__(self) -> FollowingHasher:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        for fd, *_rest in self._states.values():
            os.close(fd)
        self._states.clear()

    def _open_new(self) -> None:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return
        for name in names:
            if name not in self._states and fnmatch.fnmatch(name, self.pattern):
                fd = os.open(self.directory / name, os.O_RDONLY)
                self._states[name] = [fd, hashlib.sha256(), 0, os.fstat(fd).st_ino]

    def _read_available(self) -> int:
        view = memoryview(self._buf)
        total = 0
        for state in self._states.values():
            while count := os.readv(state[0], [self._buf]):
                state[1].update(view[:count])
                state[2] += count
                total += count
                if state[2] % WRITEBACK_STEP < count:
                    start_writeback(state[0], state[2] - WRITEBACK_STEP, WRITEBACK_STEP)
        return total

    def _follow(self) -> None:
        try:
            while not self._stop.is_set():
                self._open_new()
                if not self._read_available():
                    self._stop.wait(self.poll_s)
        except BaseException as exc:  # noqa: BLE001 - reported by finish(), hashed again
            self._error = exc

    def finish(self) -> dict[str, KnownDigest]:
        """Call after the writer exited: the digests, by path relative to the directory's
        parent (the checkpoint's layout), or {} when following failed."""
        self._stop.set()
        self._thread.join()
        if self._error is not None:
            log.warning("hashing while dumping failed (%s); hashing afterwards", self._error)
            return {}
        self._open_new()
        self._read_available()
        prefix = self.directory.name
        return {f"{prefix}/{name}": KnownDigest(state[1].hexdigest(), state[2], state[3])
                for name, state in self._states.items()}


def list_files(directory: Path) -> list[str]:
    """Relative paths of every regular file below `directory` except the manifest."""
    found = []
    for dirpath, _dirnames, filenames in os.walk(directory):
        for name in filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(directory).as_posix()
            if rel not in (MANIFEST, SEAL) and path.is_file() and not path.is_symlink():
                found.append(rel)
    return sorted(found)


def hash_files(directory: Path, known: dict[str, KnownDigest] | None = None
                ) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file; `known` digests are used when the file is unchanged."""
    files = {}
    for rel in list_files(directory):
        digest = (known or {}).get(rel)
        st = os.stat(directory / rel)
        if digest is not None and (digest.inode, digest.size) == (st.st_ino, st.st_size):
            sha, size = digest.sha256, digest.size
        else:
            sha, size = hash_file(directory / rel)
        files[rel] = {"sha256": sha, "size": size}
    return files


def fsync_tree(directory: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(directory):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def finalize(temp_dir: Path, final_dir: Path, manifest: CheckpointManifest,
             known: dict[str, KnownDigest] | None = None, *,
             key: SigningKey) -> CheckpointManifest:
    """Hash every file (except those hashed while written), write the manifest signed with
    `key`, sync, and rename temp_dir to final_dir."""
    restrict_permissions(temp_dir)
    # the disk writes back what CRIU left in the page cache while we hash it (both release
    # the GIL): for a 1 GiB checkpoint this overlaps ~0.4 s of fsync with ~0.6 s of sha256
    with ThreadPoolExecutor(max_workers=1) as pool:
        synced = pool.submit(fsync_tree, temp_dir)
        manifest.files = hash_files(temp_dir, known)
        synced.result()
    manifest.sign(key)
    write_json(temp_dir / MANIFEST, manifest.to_dict())  # fsyncs the manifest itself
    seal(temp_dir, manifest, key)  # hashed just now: its first restore need not hash again
    fsync_dir(temp_dir)
    if final_dir.exists():
        final_dir.rmdir()  # only an empty directory may be replaced; callers check first
    os.rename(temp_dir, final_dir)
    fsync_dir(final_dir.parent)
    return manifest


def load_manifest(directory: Path) -> CheckpointManifest:
    path = directory / MANIFEST
    if not path.is_file():
        raise CheckpointCorrupted(
            f"{directory} has no {MANIFEST}: it is not a complete checkpoint written by this "
            "helper", checkpoint_path=str(directory), file=MANIFEST,
        )
    try:
        manifest = CheckpointManifest.from_dict(read_json(path))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointCorrupted(
            f"{path} is unreadable: {exc}", checkpoint_path=str(directory), file=MANIFEST,
        ) from exc
    if manifest.format != MANIFEST_FORMAT:
        raise CheckpointCorrupted(
            f"{path} has format {manifest.format!r}; this helper reads {MANIFEST_FORMAT!r}",
            checkpoint_path=str(directory), file=MANIFEST,
        )
    return manifest


# -- the seal: a checkpoint hashed once is not hashed again while nothing has touched it ------
def _stand(path: Path) -> list[int]:
    """How a file stands: size, inode, and the times of its last write and last change. Any
    write, truncation, replacement, chmod or utime changes the change time (ctime), which no
    call sets back: only a change of the system clock could."""
    st = os.stat(path, follow_symlinks=False)
    return [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]


def _seal_payload(directory: Path, manifest: CheckpointManifest,
                  manifest_sha256: str) -> dict[str, Any]:
    return {"checkpoint_id": manifest.checkpoint_id, "manifest_sha256": manifest_sha256,
            "files": {rel: _stand(directory / rel) for rel in sorted(manifest.files)}}


def seal(directory: Path, manifest: CheckpointManifest, key: SigningKey) -> None:
    """Record, signed with `key`, that every file of `directory` was hashed and matched
    `manifest` as it stands now. verify() trusts a seal whose signature checks and whose every
    file still stands exactly so, instead of hashing again: the re-hash of a whole checkpoint
    before each restore (0.8 s per GiB here) leaves the pause. A seal is a local record: it
    never travels with the checkpoint (list_files leaves it out)."""
    try:
        payload = _seal_payload(directory, manifest, hash_file(directory / MANIFEST)[0])
        write_json(directory / SEAL, {**payload, "signature": key.sign(SEAL_PURPOSE, payload)})
    except OSError as exc:  # only a later restore hashes again
        log.warning("could not seal checkpoint %s: %s", manifest.checkpoint_id, exc)


def _sealed(directory: Path, manifest: CheckpointManifest, key: SigningKey) -> bool:
    try:
        recorded = read_json(directory / SEAL)
        if not isinstance(recorded, dict):
            return False
        signature = recorded.pop("signature", None)
        manifest_sha256 = hash_file(directory / MANIFEST)[0]
        if key.problem(SEAL_PURPOSE, recorded, signature) or \
                recorded.get("checkpoint_id") != manifest.checkpoint_id or \
                recorded.get("manifest_sha256") != manifest_sha256 or \
                set(recorded.get("files") or ()) != set(manifest.files):
            return False  # (the files' names were confined when they were sealed)
        return bool(canonical(recorded) ==
                    canonical(_seal_payload(directory, manifest, manifest_sha256)))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False  # no seal, or a file gone: hash, and say what is wrong


def verify(directory: Path, key: SigningKey) -> CheckpointManifest:
    """Check the manifest's signature with `key` (CheckpointUntrusted), then every file it lists
    (CheckpointCorrupted at the first mismatch): re-hashed, unless this helper's seal says it
    hashed them and none has been touched since; a full check seals them."""
    manifest = load_manifest(directory)
    manifest.check_signature(key, str(directory))
    if _sealed(directory, manifest, key):
        return manifest
    _hash_all(directory, manifest)
    seal(directory, manifest, key)
    return manifest


def _hash_all(directory: Path, manifest: CheckpointManifest) -> None:
    base = os.path.realpath(directory)
    for rel, expected in sorted(manifest.files.items()):
        path = Path(base, rel)
        bad = None
        if not within(base, path):
            bad = "points outside the checkpoint"
        elif not path.is_file():
            bad = "is missing"
        else:
            sha, size = hash_file(path)
            if size != expected.get("size"):
                bad = f"has {size} bytes, the manifest says {expected.get('size')}"
            elif sha != expected.get("sha256"):
                bad = "does not match its sha256 in the manifest"
        if bad:
            raise CheckpointCorrupted(
                f"checkpoint {manifest.checkpoint_id} is corrupted: {rel} {bad}",
                checkpoint_path=str(directory), file=rel,
            )


def directory_size(directory: Path) -> int:
    total = 0
    for dirpath, _dirnames, filenames in os.walk(directory):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                total += os.path.getsize(path)
    return total


def filesystem_bytes(path: Path) -> int:
    """The size of the filesystem holding `path` (or, while it does not exist yet, its nearest
    existing parent)."""
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    st = os.statvfs(current)
    return st.f_blocks * st.f_frsize


def cleanup_temporaries(checkpoint_dir: Path) -> list[Path]:
    """Remove `.tmp-*` directories left by interrupted checkpoints; return what was removed."""
    removed: list[Path] = []
    if not checkpoint_dir.is_dir():
        return removed
    for dirpath, dirnames, filenames in os.walk(checkpoint_dir):
        if MANIFEST in filenames:
            dirnames[:] = []  # a finished checkpoint: nothing of ours below
            continue
        for name in list(dirnames):
            if name.startswith(TEMP_PREFIX):
                path = Path(dirpath, name)
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
                dirnames.remove(name)
    for path in removed:
        log.info("removed unfinished checkpoint %s", path)
    return removed
