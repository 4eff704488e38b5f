"""Checkpoint authenticity: every checkpoint manifest carries an HMAC-SHA256 made with a key
only the helpers hold, and nothing of a checkpoint is used before that signature is checked.

The manifest lists the sha256 of every file, the checkpoint id and the source pod (namespace
included), so a valid signature vouches for all of it. What is signed is the manifest without
its `signature` field, serialized canonically (sorted keys, no blanks, ASCII), after a line
naming the purpose, so a signature made for one kind of statement never passes for another:

    HMAC-SHA256(key, b"cedana-helper checkpoint manifest v1\\n" + canonical(manifest))

The key is `cedana-helper serve --signing-key FILE` (the cluster's, shared by every helper; in
a cluster the Secret cedana-signing-key). A helper started without one signs with a key of its
own node, `CHECKPOINT_DIR/.signing-key` (made on first use, 0600): its local checkpoints keep
working, while checkpoints of other nodes, and remote checkpoints, need the shared key.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar.config import HelperConfig
from sidecar.errors import InternalError

log = logging.getLogger(__name__)

ALGORITHM = "hmac-sha256"
KEY_MIN_BYTES = 32
KEY_MAX_BYTES = 4096
NODE_KEY_NAME = ".signing-key"
MANIFEST_PURPOSE = b"cedana-helper checkpoint manifest v1\n"
IMAGE_PURPOSE = b"cedana-helper checkpoint image v1\n"
_KEY_ID_PURPOSE = b"cedana-helper signing key id v1\n"


class KeyUnusable(ValueError):
    """A signing key file that cannot be used (missing, unreadable, too short)."""


def canonical(payload: Any) -> bytes:
    """The one byte form of a JSON value that is signed and checked."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


@dataclass(frozen=True)
class SigningKey:
    secret: bytes = field(repr=False)
    source: str  # where it came from, for messages and logs (never the bytes)
    shared: bool  # the cluster's key (--signing-key), not a node's own

    @property
    def key_id(self) -> str:
        """A short public name of the key: helpers that share a key show the same id."""
        return hashlib.sha256(_KEY_ID_PURPOSE + self.secret).hexdigest()[:16]

    def _mac(self, purpose: bytes, payload: Any) -> str:
        return hmac.new(self.secret, purpose + canonical(payload), hashlib.sha256).hexdigest()

    def sign(self, purpose: bytes, payload: Any) -> dict[str, str]:
        return {"algorithm": ALGORITHM, "key_id": self.key_id,
                "value": self._mac(purpose, payload)}

    def problem(self, purpose: bytes, payload: Any, signature: Any) -> str:
        """Why `signature` does not vouch for `payload` ('' when it does)."""
        if not isinstance(signature, Mapping):
            return "is not signed"
        if signature.get("algorithm") != ALGORITHM:
            return f"carries a signature of unknown algorithm {signature.get('algorithm')!r}"
        value = signature.get("value")
        if isinstance(value, str) and hmac.compare_digest(
                value.encode("ascii", "replace"), self._mac(purpose, payload).encode("ascii")):
            return ""
        key_id = signature.get("key_id")
        if key_id != self.key_id:
            return (f"was signed with another key (key id {str(key_id)[:32]!r}; this helper's "
                    f"is {self.key_id!r})")
        return "does not match its signature: it was changed after it was signed"

    def describe(self) -> str:
        if self.shared:
            return f"the cluster's signing key {self.key_id} ({self.source})"
        return (f"this node's own signing key {self.key_id} ({self.source}; the helper was "
                "started without --signing-key)")


def _read_key(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(KEY_MAX_BYTES + 1)
    except OSError as exc:
        raise KeyUnusable(f"cannot read the signing key {path}: {exc.strerror or exc}") from exc
    if len(data) < KEY_MIN_BYTES:
        raise KeyUnusable(f"the signing key {path} holds {len(data)} bytes; it needs at least "
                          f"{KEY_MIN_BYTES} random bytes (e.g. head -c 32 /dev/urandom)")
    if len(data) > KEY_MAX_BYTES:
        raise KeyUnusable(f"the signing key {path} is larger than {KEY_MAX_BYTES} bytes; is it "
                          "the right file?")
    return data


def load_key(path: Path) -> SigningKey:
    """The cluster's key from `path` (--signing-key)."""
    key = SigningKey(_read_key(path), f"file {path}", shared=True)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = 0
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("the signing key %s can be read by group or others (mode %o)", path,
                    mode & 0o777)
    return key


def node_local_key(checkpoint_dir: Path) -> SigningKey:
    """This node's own key, `checkpoint_dir/.signing-key`: read, or made once (32 random
    bytes, 0600, written aside and linked into place, so a racing helper reads a whole key)."""
    path = checkpoint_dir / NODE_KEY_NAME
    if not os.path.lexists(path):
        _make_node_key(checkpoint_dir, path)
    # a key that exists is never replaced, however damaged: that is for a person to judge
    return SigningKey(_read_key(path), f"node-local {path}", shared=False)


def _make_node_key(checkpoint_dir: Path, path: Path) -> None:
    checkpoint_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    aside = checkpoint_dir / f"{NODE_KEY_NAME}.{uuid.uuid4().hex}.new"
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEY_MIN_BYTES))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(aside, path)  # appears whole, or not at all
            log.info("made this node's own checkpoint signing key %s", path)
        except FileExistsError:
            pass  # another helper on this directory made it first: theirs is the key
    finally:
        os.unlink(aside)


def helper_key(config: HelperConfig) -> SigningKey:
    """The key this helper signs and verifies with: --signing-key, else its node's own."""
    try:
        if config.signing_key_file is not None:
            return load_key(config.signing_key_file)
        return node_local_key(config.checkpoint_dir)
    except (KeyUnusable, OSError) as exc:
        raise InternalError(f"the helper cannot use its checkpoint signing key: {exc}") from exc
