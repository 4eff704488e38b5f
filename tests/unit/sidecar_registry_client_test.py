"""The helper's registry client against a registry that hands out Bearer tokens per scope
(tests/unit/registry_fake.py): pulling is not pushing, tokens run out, failed uploads end
promptly, connections are closed. (The lab's registry only knows Basic.)"""
from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.config import HelperConfig, NodeRegistrySettings
from sidecar.errors import (
    ContentTooLarge,
    RegistryAuthFailed,
    RegistryError,
    RegistryUnreachable,
)
from sidecar.ops import transfer
from sidecar.registry.client import RegistryClient
from sidecar.registry.credentials import node_access
from sidecar.registry.remote import RemoteStore
from sidecar.storage import store
from tests.unit.registry_fake import FakeRegistry

USERS = {"reader": ("r-pass", {"pull"}), "writer": ("w-pass", {"pull", "push", "delete"})}
REPO = "team/checkpoints"


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    with FakeRegistry(dict(USERS)) as fake:
        yield fake


def settings_for(tmp_path: Path, registry: FakeRegistry, user: str) -> NodeRegistrySettings:
    """The node's docker config with `user`'s password, and containerd's mirror saying the
    registry speaks plain HTTP."""
    docker = tmp_path / f"docker-{user}.json"
    auth = base64.b64encode(f"{user}:{USERS[user][0]}".encode()).decode()
    docker.write_text(json.dumps({"auths": {registry.host: {"auth": auth}}}))
    containerd = tmp_path / "containerd.toml"
    containerd.write_text(f'[plugins."io.containerd.grpc.v1.cri".registry.mirrors.'
                          f'"{registry.host}"]\n  endpoint = ["{registry.url}"]\n')
    return NodeRegistrySettings((docker,), containerd, ())


def client_for(tmp_path: Path, registry: FakeRegistry, user: str) -> RegistryClient:
    return RegistryClient(node_access(registry.host, settings_for(tmp_path, registry, user)))


def checkpoint_dir(tmp_path: Path, pages_bytes: int = 300_000) -> Path:
    directory = tmp_path / "ckpt"
    (directory / "checkpoint").mkdir(parents=True)
    (directory / "checkpoint" / "pages-1.img").write_bytes(os.urandom(pages_bytes))
    (directory / "config.dump").write_text("{}")
    manifest = store.CheckpointManifest("ckpt-1", "2026-01-01T00:00:00Z",
                                        {"pod": "p", "container": "c", "namespace": "ns"}, {}, {})
    manifest.files = store.hash_files(directory)
    store.write_json(directory / store.MANIFEST, manifest.to_dict())
    return directory


@pytest.mark.parametrize("opaque", [False, True], ids=["jwt", "opaque"])
def test_a_pull_token_is_never_taken_for_push(registry: FakeRegistry, tmp_path: Path,
                                              opaque: bool) -> None:
    registry.opaque_tokens = opaque
    with client_for(tmp_path, registry, "reader") as reader:
        reader.authenticate(REPO, "pull")
        assert reader.has_blob(REPO, "sha256:" + "a" * 64) is False
        # GET /v2/ answers 200 with the reader's token: that says nothing about pushing
        with pytest.raises(RegistryAuthFailed, match="reader"):
            reader.authenticate(REPO, "pull,push")
            reader.upload_blob(REPO, "sha256:" + "b" * 64, 3, b"abc")
    assert ("reader", f"repository:{REPO}:pull,push") in registry.token_requests
    assert registry.blobs == {} and registry.uploads == {}
    if opaque:  # the registry itself refused: the client sent the push-scope token
        assert [why for _m, path, why in registry.refused if path != "/v2/"] == \
            ["insufficient_scope"]
    with client_for(tmp_path, registry, "writer") as writer:
        writer.authenticate(REPO, "pull,push")
        writer.upload_blob(REPO, "sha256:" + "ba7816bf8f01cfea414140de5dae2223b00361a396177a9c"
                                            "b410ff61f20015ad", 3, b"abc")
    assert list(registry.blobs.values()) == [b"abc"]


def test_wrong_password_is_registry_auth_failed(registry: FakeRegistry, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, registry, "reader")
    docker = settings.docker_configs[0]
    docker.write_text(docker.read_text().replace(
        base64.b64encode(b"reader:r-pass").decode(), base64.b64encode(b"reader:no").decode()))
    with RegistryClient(node_access(registry.host, settings)) as client, \
            pytest.raises(RegistryAuthFailed, match="refused the node's credentials"):
        client.authenticate(REPO)


def test_a_checkpoint_round_trips_through_a_token_registry(registry: FakeRegistry,
                                                           tmp_path: Path) -> None:
    source = checkpoint_dir(tmp_path)
    settings = settings_for(tmp_path, registry, "writer")
    with RemoteStore(f"{registry.host}/{REPO}", settings) as remote:
        pushed = remote.push(source, store.load_manifest(source), "zstd")
        assert pushed.reference == f"{registry.host}/{REPO}:ckpt-1"
        assert [e["id"] for e in remote.list()] == ["ckpt-1"]
        manifest, _image, _digest = remote.pull("ckpt-1", tmp_path / "pulled")
    assert manifest.checkpoint_id == "ckpt-1"
    assert (tmp_path / "pulled" / "checkpoint" / "pages-1.img").read_bytes() == \
        (source / "checkpoint" / "pages-1.img").read_bytes()
    # the push token also serves pulls; a client that only pulls asks for pull only
    assert {s for _u, s in registry.token_requests} == {f"repository:{REPO}:pull,push"}
    with RemoteStore(f"{registry.host}/{REPO}", settings) as remote:
        remote.pull("ckpt-1", tmp_path / "again")
    assert registry.token_requests[-1] == ("writer", f"repository:{REPO}:pull")


def test_a_token_that_expires_during_an_upload_is_renewed(registry: FakeRegistry,
                                                          tmp_path: Path) -> None:
    registry.token_lifetime_s = 1.0
    registry.patch_delay_s = 1.5  # the streamed PATCH outlives the token
    source = checkpoint_dir(tmp_path)
    with RemoteStore(f"{registry.host}/{REPO}", settings_for(tmp_path, registry, "writer")
                     ) as remote:
        pushed = remote.push(source, store.load_manifest(source), "none")
    assert (REPO, pushed.layer_digest) in registry.blobs
    push_tokens = [s for _u, s in registry.token_requests if s.endswith(":pull,push")]
    assert len(push_tokens) >= 2
    assert [r for r in registry.refused if r[1] != "/v2/"] == []  # renewed in time


def test_a_failed_upload_ends_at_once_and_leaves_no_producer(registry: FakeRegistry,
                                                             tmp_path: Path) -> None:
    registry.fail_patch = True
    source = checkpoint_dir(tmp_path, pages_bytes=40 << 20)  # far more than the queue holds
    started = time.monotonic()
    with RemoteStore(f"{registry.host}/{REPO}", settings_for(tmp_path, registry, "writer")
                     ) as remote, pytest.raises((RegistryError, RegistryUnreachable)):
        remote.push(source, store.load_manifest(source), "none")
    assert time.monotonic() - started < 15
    assert not [t for t in threading.enumerate() if t.name == "checkpoint-tar"]
    assert registry.blobs == {}


def test_clients_close_their_connections(registry: FakeRegistry, tmp_path: Path) -> None:
    config = HelperConfig(checkpoint_dir=tmp_path / "c", remote_repository=f"{registry.host}/"
                          f"{REPO}", registry=settings_for(tmp_path, registry, "writer"))
    assert transfer.remote_entries(config) == []
    with RemoteStore(config.remote_repository, config.registry) as remote:
        remote.list()
        assert registry.open_connections >= 1  # kept alive while in use
    deadline = time.monotonic() + 5
    while registry.open_connections and time.monotonic() < deadline:
        time.sleep(0.02)
    assert registry.open_connections == 0


def test_a_pull_that_expands_beyond_its_limit_leaves_nothing(registry: FakeRegistry,
                                                             tmp_path: Path) -> None:
    source = checkpoint_dir(tmp_path, pages_bytes=0)
    (source / "checkpoint" / "pages-1.img").write_bytes(bytes(12 << 20))  # zeros: a bomb
    manifest = store.load_manifest(source)
    manifest.files = store.hash_files(source)
    store.write_json(source / store.MANIFEST, manifest.to_dict())
    with RemoteStore(f"{registry.host}/{REPO}", settings_for(tmp_path, registry, "writer")
                     ) as remote:
        pushed = remote.push(source, manifest, "zstd")
        assert pushed.size_bytes < 64 << 10
        with pytest.raises(ContentTooLarge) as err:
            remote.pull("ckpt-1", tmp_path / "pulled", max_bytes=1 << 20)
    assert err.value.status == 422
    assert not (tmp_path / "pulled").exists() and not list(tmp_path.glob(".tmp-pull-*"))
