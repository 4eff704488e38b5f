"""Checkpoint signing: the keys (the cluster's, a node's own), the signed manifest, and what a
helper refuses: a changed file, a changed manifest, another key's signature, no signature."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sidecar.errors import CheckpointCorrupted, CheckpointUntrusted
from sidecar.storage import signing, store
from tests.unit.sidecar_support import REPO, cluster_key

KEY = cluster_key()
OTHER = cluster_key(bytes(range(100, 148)))


def make_checkpoint(tmp_path: Path, key: signing.SigningKey = KEY,
                    namespace: str = "team-a") -> Path:
    temp, final = tmp_path / ".tmp-c", tmp_path / "c"
    (temp / "checkpoint").mkdir(parents=True)
    (temp / "checkpoint" / "pages-1.img").write_bytes(bytes(range(256)) * 64)
    (temp / "spec.dump").write_text('{"ociVersion": "1.0.2"}')
    manifest = store.CheckpointManifest(
        checkpoint_id="7aa03f3d-eeaf-4a9f-a158-6b88f1be7f03", created="2026-01-01T00:00:00Z",
        source={"namespace": namespace, "pod": "counter", "container": "main"},
        tools={"helper": "0.1.0"}, criu_options={"leave_running": True})
    store.finalize(temp, final, manifest, key=key)
    return final


def edit_manifest(directory: Path, **changes: object) -> None:
    data = json.loads((directory / store.MANIFEST).read_text())
    for path, value in changes.items():
        *parents, last = path.split("__")
        target = data
        for part in parents:
            target = target[part]
        if value is None:
            del target[last]
        else:
            target[last] = value
    (directory / store.MANIFEST).write_text(json.dumps(data))


# -- the manifest ---------------------------------------------------------------------------------
def test_a_manifest_signed_with_the_key_verifies(tmp_path: Path) -> None:
    final = make_checkpoint(tmp_path)
    written = json.loads((final / store.MANIFEST).read_text())
    assert written["signature"]["algorithm"] == "hmac-sha256"
    assert written["signature"]["key_id"] == KEY.key_id
    # the checkpoint id and the source namespace are among what is signed
    payload = store.CheckpointManifest.from_dict(written).signed_payload()
    assert payload["checkpoint_id"] == "7aa03f3d-eeaf-4a9f-a158-6b88f1be7f03"
    assert payload["source"]["namespace"] == "team-a" and "signature" not in payload
    assert store.verify(final, KEY).source["namespace"] == "team-a"
    # the file's layout is not what is signed: reformatted, it still verifies
    (final / store.MANIFEST).write_text(json.dumps(written, indent=None, sort_keys=False))
    assert store.verify(final, KEY).checkpoint_id == written["checkpoint_id"]


def test_one_byte_changed_in_a_file_is_refused_by_its_hash(tmp_path: Path) -> None:
    final = make_checkpoint(tmp_path)
    pages = final / "checkpoint" / "pages-1.img"
    data = bytearray(pages.read_bytes())
    data[1000] ^= 0x40
    pages.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorrupted, match="pages-1.img does not match its sha256"):
        store.verify(final, KEY)


@pytest.mark.parametrize("change", [
    {"source__namespace": "team-b"}, {"checkpoint_id": "another-id"},
    {"criu_options__leave_running": False},
    # a file re-hashed by whoever changed it: consistent sha256s, no valid signature
    {"files__spec.dump": {"sha256": "0" * 64, "size": 3}},
])
def test_a_changed_manifest_is_refused_by_its_signature(tmp_path: Path,
                                                        change: dict[str, object]) -> None:
    final = make_checkpoint(tmp_path)
    edit_manifest(final, **change)
    with pytest.raises(CheckpointUntrusted) as err:
        store.verify(final, KEY)
    assert err.value.status == 422 and err.value.code == "checkpoint_untrusted"
    assert "changed after it was signed" in err.value.message
    assert "not signed by a helper of this cluster" in err.value.message


def test_a_manifest_signed_with_another_key_is_refused(tmp_path: Path) -> None:
    final = make_checkpoint(tmp_path, key=OTHER)
    assert store.verify(final, OTHER)
    with pytest.raises(CheckpointUntrusted, match="signed with another key") as err:
        store.verify(final, KEY)
    assert OTHER.key_id in err.value.message and KEY.key_id in err.value.message
    assert "--signing-key" in err.value.message  # what to do about it


def test_an_unsigned_manifest_is_refused_with_what_it_is(tmp_path: Path) -> None:
    final = make_checkpoint(tmp_path)
    edit_manifest(final, signature=None)  # as helpers before signing wrote them
    with pytest.raises(CheckpointUntrusted, match="is not signed: it was written by a helper "
                                                  "older than checkpoint signing"):
        store.verify(final, KEY)
    edit_manifest(final, signature={"algorithm": "none", "value": ""})
    with pytest.raises(CheckpointUntrusted, match="unknown algorithm 'none'"):
        store.verify(final, KEY)


def test_the_signature_is_checked_before_any_file_is_read(tmp_path: Path) -> None:
    final = make_checkpoint(tmp_path)
    edit_manifest(final, source__namespace="team-b")
    (final / "checkpoint" / "pages-1.img").unlink()
    with pytest.raises(CheckpointUntrusted):  # not "pages-1.img is missing"
        store.verify(final, KEY)


# -- the keys -------------------------------------------------------------------------------------
def test_a_nodes_own_key_is_made_once_private_and_shared_by_racing_helpers(
        tmp_path: Path) -> None:
    directory = tmp_path / "checkpoints"
    keys: list[signing.SigningKey] = []
    start = threading.Barrier(8)

    def helper_starts() -> None:
        start.wait()
        keys.append(signing.node_local_key(directory))

    threads = [threading.Thread(target=helper_starts) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 8  # none failed
    assert len({k.secret for k in keys}) == 1 and not keys[0].shared
    path = directory / ".signing-key"
    assert path.stat().st_mode & 0o777 == 0o600 and path.read_bytes() == keys[0].secret
    assert len(keys[0].secret) == 32 and sorted(p.name for p in directory.iterdir()) == \
        [".signing-key"]
    assert signing.node_local_key(directory).key_id == keys[0].key_id
    assert keys[0].secret.hex() not in repr(keys[0])


def test_a_damaged_node_key_is_an_error_not_replaced(tmp_path: Path) -> None:
    (tmp_path / ".signing-key").write_bytes(b"short")
    with pytest.raises(signing.KeyUnusable, match="holds 5 bytes"):
        signing.node_local_key(tmp_path)
    assert (tmp_path / ".signing-key").read_bytes() == b"short"


@pytest.mark.parametrize("content,problem", [(b"x" * 31, "at least 32"), (None, "cannot read")])
def test_an_unusable_key_file_is_refused(tmp_path: Path, content: bytes | None,
                                         problem: str) -> None:
    path = tmp_path / "key"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(signing.KeyUnusable, match=problem):
        signing.load_key(path)


def test_key_ids_name_keys_without_revealing_them() -> None:
    assert KEY.key_id == cluster_key().key_id != OTHER.key_id
    assert len(KEY.key_id) == 16 and KEY.secret.hex()[:16] != KEY.key_id


def test_a_helper_with_an_unusable_key_does_not_start(tmp_path: Path) -> None:
    (tmp_path / "key").write_bytes(b"too short")
    proc = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "serve", "--checkpoint-dir",
         str(tmp_path / "checkpoints"), "--signing-key", str(tmp_path / "key"), "--port", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert f"the signing key {tmp_path / 'key'} holds 9 bytes; it needs at least 32" in \
        proc.stderr
