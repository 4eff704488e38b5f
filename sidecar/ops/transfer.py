"""Checkpoints in the helper's checkpoint registry: whether a checkpoint goes there, pushing it,
and pulling one this node does not hold before a restore. Every checkpoint that goes there or
comes back is signed with the cluster's key (--signing-key): a helper with only its node's own
key neither pushes nor pulls."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from sidecar.config import HelperConfig
from sidecar.errors import CheckpointNotFound, CheckpointUntrusted, InvalidRequest
from sidecar.ops.limits import Limits
from sidecar.registry.remote import (
    ANN,
    Authorize,
    RemoteCheckpoint,
    RemoteStore,
    check_compression,
    remote_entry,
)
from sidecar.storage import signing, store
from sidecar.storage.catalogue import Catalogue

NO_SHARED_KEY = ("this helper was started without the cluster's checkpoint signing key "
                 "(cedana-helper serve --signing-key FILE; in the cluster the Secret "
                 "cedana-signing-key that kubectl cedana install creates), so ")


@contextmanager
def checkpoint_registry(config: HelperConfig) -> Iterator[RemoteStore | None]:
    """The helper's checkpoint registry (None: it has none) for the length of the block."""
    if not config.remote_repository:
        yield None
        return
    with RemoteStore(config.remote_repository, config.registry) as remote:
        yield remote


def remote_entries(config: HelperConfig) -> list[dict[str, Any]]:
    """The checkpoints in the registry, as catalogue entries."""
    with checkpoint_registry(config) as remote:
        return remote.list() if remote is not None else []


def cluster_key(config: HelperConfig, refusal: type[InvalidRequest | CheckpointUntrusted],
                why: str, **extra: Any) -> signing.SigningKey:
    """The cluster's signing key, which every checkpoint in the registry is signed with;
    `refusal` (with `extra`) when the helper has only its node's own."""
    if config.signing_key_file is None:
        raise refusal(NO_SHARED_KEY + why, **extra)
    return signing.helper_key(config)


def remote_source(config: HelperConfig, checkpoint_id: str) -> str | None:
    """The source namespace of a checkpoint in the registry, as its signed manifest names it
    (checked before any of it is downloaded); None when it is not there or the helper has no
    registry. CheckpointUntrusted when it is not signed with the cluster's key."""
    with checkpoint_registry(config) as remote:
        if remote is None:
            return None
        key = cluster_key(config, CheckpointUntrusted,
                          f"it cannot verify checkpoint {checkpoint_id} from the registry",
                          checkpoint_id=checkpoint_id)
        try:
            signed = remote.signed(checkpoint_id, key)
        except CheckpointNotFound:
            return None
        return str(signed.manifest.source.get("namespace") or "")


def remote_checkpoint(config: HelperConfig, checkpoint_id: str
                      ) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(catalogue entry, image manifest) of a checkpoint in the registry; None when the helper
    has no registry; CheckpointNotFound when it is not there."""
    with checkpoint_registry(config) as remote:
        if remote is None:
            return None
        image, digest = remote.manifest(checkpoint_id)
        return remote_entry(image, digest, remote.name(checkpoint_id)), image


def delete_remote(config: HelperConfig, checkpoint_id: str) -> bool:
    """Delete the registry's copy; False when there is none (or no registry)."""
    with checkpoint_registry(config) as remote:
        return remote.delete(checkpoint_id) if remote is not None else False


def wants_remote(config: HelperConfig, storage: str | None, checkpoint_path: str | None) -> bool:
    """The seed's rule: an empty checkpoint_path means remote (when this node has a registry).
    `storage` says it explicitly; checked before anything is dumped."""
    if storage == "remote" and not config.remote_repository:
        raise InvalidRequest("storage \"remote\" needs a checkpoint registry; this helper has "
                             "none configured (cedana-helper serve --checkpoint-repository)",
                             fields=["storage"])
    if storage in ("local", "remote"):
        remote = storage == "remote"
    else:
        remote = not checkpoint_path and bool(config.remote_repository)
    if remote:
        cluster_key(config, InvalidRequest,
                    "it does not push checkpoints that no other node could verify; store it "
                    "on this node (storage \"local\" or a checkpoint_path)", fields=["storage"])
    return remote


def push(config: HelperConfig, checkpoint_id: str, directory: Path, compression: str | None
         ) -> RemoteCheckpoint:
    """Push a local checkpoint to the registry and record where it went."""
    key = cluster_key(config, InvalidRequest, "it does not push checkpoints")
    manifest = store.load_manifest(directory)
    with checkpoint_registry(config) as remote:
        assert remote is not None
        pushed = remote.push(directory, manifest, check_compression(compression), key)
    Catalogue(config.checkpoint_dir).merge(checkpoint_id, {
        "remote": {"reference": pushed.reference, "digest": pushed.digest,
                   "size_bytes": pushed.size_bytes, "compression": pushed.compression}})
    return pushed


def ensure_local(config: HelperConfig, checkpoint_id: str, *,
                 authorize: Authorize | None = None,
                 limits: Limits | None = None) -> dict[str, Any] | None:
    """Pull a checkpoint this node does not hold from the registry; returns what was pulled.
    Its signatures are checked, `authorize` sees its signed manifest, and its signed size is
    reserved against the checkpoint directory's quota (in `limits`: the helper's, with what its
    other operations hold), before any of its layer is fetched."""
    catalogue = Catalogue(config.checkpoint_dir)
    try:
        entry = catalogue.get(checkpoint_id)
        if Path(entry["path"]).is_dir():
            return None
    except CheckpointNotFound:
        entry = None
    if not config.remote_repository:
        if entry is None:
            raise CheckpointNotFound(
                f"no checkpoint with id {checkpoint_id} on node {config.node_name}, and this "
                "helper has no checkpoint registry to look in", checkpoint_id=checkpoint_id)
        return None
    check_id(checkpoint_id)
    key = cluster_key(config, CheckpointUntrusted,
                      f"it cannot verify checkpoint {checkpoint_id} from the registry",
                      checkpoint_id=checkpoint_id)
    final_dir = config.checkpoint_dir / checkpoint_id
    with ExitStack() as until_listed:
        def authorize_and_reserve(signed: store.CheckpointManifest) -> None:
            if authorize is not None:
                authorize(signed)
            # 507 quota_exceeded before anything is downloaded; held until it is listed
            until_listed.enter_context((limits or Limits()).reserve(
                config, signed.size_bytes, f"pull of checkpoint {checkpoint_id}",
                checkpoint_id=checkpoint_id))

        with checkpoint_registry(config) as remote:
            assert remote is not None
            manifest, image, digest = remote.pull(checkpoint_id, final_dir, key,
                                                  authorize=authorize_and_reserve,
                                                  max_bytes=config.max_checkpoint_bytes)
            reference = remote.name(checkpoint_id)
        _list_pulled(catalogue, config, checkpoint_id, final_dir, manifest, image, digest,
                     reference)
    layer = image["layers"][0]
    return {"reference": reference, "digest": digest, "size_bytes": int(layer.get("size") or 0)}


def _list_pulled(catalogue: Catalogue, config: HelperConfig, checkpoint_id: str,
                 final_dir: Path, manifest: store.CheckpointManifest, image: dict[str, Any],
                 digest: str, reference: str) -> None:
    layer = image["layers"][0]
    list_arrived(catalogue, config, checkpoint_id, final_dir, manifest, pulled=True, remote={
        "reference": reference, "digest": digest, "size_bytes": int(layer.get("size") or 0),
        "compression": (image.get("annotations") or {}).get(ANN + "compression", "")})


def list_arrived(catalogue: Catalogue, config: HelperConfig, checkpoint_id: str,
                 final_dir: Path, manifest: store.CheckpointManifest, **extra: Any) -> None:
    """List a verified checkpoint that came from elsewhere (the registry, another helper) as
    its signed manifest describes it; `extra` says how it came."""
    source = manifest.source
    catalogue.add({
        "id": checkpoint_id, "path": str(final_dir), "namespace": source.get("namespace", ""),
        "pod": source.get("pod", ""), "container": source.get("container", ""),
        "container_id": source.get("container_id", ""), "image": source.get("image", ""),
        "node": source.get("node", ""), "size_bytes": store.directory_size(final_dir),
        "created": manifest.created, "status": "complete", "pulled_to": config.node_name,
        "options": manifest.criu_options, "restores": [], **extra,
    })


def check_id(checkpoint_id: str) -> None:
    if not checkpoint_id or "/" in checkpoint_id or checkpoint_id.startswith(".") or len(
            checkpoint_id) > 128 or not all(c.isalnum() or c in "-_." for c in checkpoint_id):
        raise InvalidRequest(f"checkpoint_id {checkpoint_id!r} is not a checkpoint id",
                             fields=["checkpoint_data.checkpoint_id"])
