"""The helper's registry client against a registry that hands out Bearer tokens per scope
(tests/unit/registry_fake.py): pulling is not pushing, tokens run out, failed uploads end
promptly, connections are closed. (The lab's registry only knows Basic.)"""
from __future__ import annotations

import base64
import hashlib
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
from sidecar.registry import client as client_module
from sidecar.registry.client import ImageReference, RegistryClient
from sidecar.registry.credentials import node_access
from sidecar.registry.remote import RemoteStore
from sidecar.storage import store
from tests.unit.registry_fake import Elsewhere, FakeRegistry
from tests.unit.sidecar_support import cluster_key

USERS = {"reader": ("r-pass", {"pull"}), "writer": ("w-pass", {"pull", "push", "delete"})}
REPO = "team/checkpoints"
KEY = cluster_key()


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
    manifest.sign(KEY)
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
        pushed = remote.push(source, store.load_manifest(source), "zstd", KEY)
        assert pushed.reference == f"{registry.host}/{REPO}:ckpt-1"
        assert [e["id"] for e in remote.list()] == ["ckpt-1"]
        manifest, _image, _digest = remote.pull("ckpt-1", tmp_path / "pulled", KEY)
    assert manifest.checkpoint_id == "ckpt-1"
    assert (tmp_path / "pulled" / "checkpoint" / "pages-1.img").read_bytes() == \
        (source / "checkpoint" / "pages-1.img").read_bytes()
    # the push token also serves pulls; a client that only pulls asks for pull only
    assert {s for _u, s in registry.token_requests} == {f"repository:{REPO}:pull,push"}
    with RemoteStore(f"{registry.host}/{REPO}", settings) as remote:
        remote.pull("ckpt-1", tmp_path / "again", KEY)
    assert registry.token_requests[-1] == ("writer", f"repository:{REPO}:pull")


def test_a_token_that_expires_during_an_upload_is_renewed(registry: FakeRegistry,
                                                          tmp_path: Path) -> None:
    registry.token_lifetime_s = 1.0
    registry.patch_delay_s = 1.5  # the streamed PATCH outlives the token
    source = checkpoint_dir(tmp_path)
    with RemoteStore(f"{registry.host}/{REPO}", settings_for(tmp_path, registry, "writer")
                     ) as remote:
        pushed = remote.push(source, store.load_manifest(source), "none", KEY)
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
        remote.push(source, store.load_manifest(source), "none", KEY)
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


# -- where the node's credentials may go, and what a registry may make us read or say -----------
BLOB = b"layer bytes " * 1000
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


def test_a_token_service_on_another_host_gets_nothing(registry: FakeRegistry,
                                                      tmp_path: Path) -> None:
    with Elsewhere(tokens=True) as elsewhere:
        registry.realm = f"{elsewhere.url}/token"
        with client_for(tmp_path, registry, "writer") as client, \
                pytest.raises(RegistryAuthFailed, match="token service on another host") as err:
            client.authenticate(REPO, "pull")
        assert elsewhere.seen == []  # neither the password nor anything else went there
    assert err.value.extra["registry"] == registry.host
    assert elsewhere.host in err.value.message and registry.url in err.value.message


def test_the_token_service_may_be_anywhere_on_the_registrys_own_origin(
        registry: FakeRegistry, tmp_path: Path) -> None:
    registry.realm = f"{registry.url}/token?unused=1"  # same scheme, host and port; any path
    with client_for(tmp_path, registry, "reader") as client:
        client.authenticate(REPO, "pull")
    assert registry.token_requests == [("reader", f"repository:{REPO}:pull")]


def test_a_blob_redirected_to_storage_elsewhere_is_fetched_without_credentials(
        registry: FakeRegistry, tmp_path: Path) -> None:
    registry.blobs[(REPO, BLOB_DIGEST)] = BLOB
    with Elsewhere() as storage:
        storage.served[f"/blobs/{BLOB_DIGEST}"] = BLOB
        registry.blob_redirect = storage.url
        with client_for(tmp_path, registry, "reader") as client:
            size = client.download_blob(REPO, BLOB_DIGEST, tmp_path / "blob", max_bytes=1 << 20)
    assert size == len(BLOB) and (tmp_path / "blob").read_bytes() == BLOB
    assert [(method, path) for method, path, _headers in storage.seen] == \
        [("GET", f"/blobs/{BLOB_DIGEST}")]
    sent = {k.lower() for k in storage.seen[0][2]}
    assert "authorization" not in sent and "cookie" not in sent
    # the registry itself got the token with the first request
    assert ("GET", f"/v2/{REPO}/blobs/{BLOB_DIGEST}") in registry.requests


def test_a_redirect_on_the_registrys_own_origin_keeps_its_credentials(
        registry: FakeRegistry, tmp_path: Path) -> None:
    registry.blobs[(REPO, BLOB_DIGEST)] = BLOB
    # back to the blob itself, over and over: each hop needs the token
    registry.blob_redirect = f"{registry.url}/v2/{REPO}"
    with client_for(tmp_path, registry, "reader") as client, \
            pytest.raises(RegistryError, match="more than 5 times"):
        client.download_blob(REPO, BLOB_DIGEST, tmp_path / "blob", max_bytes=1 << 20)
    # each hop was authorized (else the registry would have answered 401, not redirected)
    hops = [r for r in registry.requests if r[1].startswith(f"/v2/{REPO}/blobs/")]
    assert len(hops) == 6 and not [r for r in registry.refused if r[1] != "/v2/"]
    assert not (tmp_path / "blob").exists()


@pytest.mark.parametrize("target", ["ftp://127.0.0.1:21/x", "file:///etc/passwd"])
def test_a_redirect_to_another_scheme_is_refused(registry: FakeRegistry, tmp_path: Path,
                                                  target: str) -> None:
    registry.blobs[(REPO, BLOB_DIGEST)] = BLOB
    registry.blob_redirect = target
    with client_for(tmp_path, registry, "reader") as client, \
            pytest.raises(RegistryError, match="only http or https is followed"):
        client.download_blob(REPO, BLOB_DIGEST, tmp_path / "blob", max_bytes=1 << 20)


def test_error_bodies_are_not_repeated(registry: FakeRegistry, tmp_path: Path) -> None:
    marker = "INJECTED-MARKER-4f1c"
    registry.broken["GET manifests"] = (500, json.dumps({"errors": [
        {"code": "MANIFEST_UNKNOWN", "message": marker, "detail": marker},
        {"code": f"NOT-A-SPEC-CODE {marker}", "message": marker}]}).encode())
    registry.broken["PUT manifests"] = (400, (marker * 100).encode())
    with client_for(tmp_path, registry, "writer") as client:
        with pytest.raises(RegistryError) as got:
            client.get_manifest(ImageReference.parse(f"{registry.host}/{REPO}:x"))
        with pytest.raises(RegistryError) as put:
            client.put_manifest(ImageReference.parse(f"{registry.host}/{REPO}:x"), b"{}",
                                "application/vnd.oci.image.manifest.v1+json")
    assert got.value.message == (f"registry {registry.host}: GET manifest {registry.host}/{REPO}"
                                 ":x failed with HTTP 500 (MANIFEST_UNKNOWN)")
    assert marker not in put.value.message and "HTTP 400" in put.value.message
    assert marker not in json.dumps(got.value.body()) + json.dumps(put.value.body())


def test_answers_are_read_only_up_to_their_limit(registry: FakeRegistry, tmp_path: Path) -> None:
    huge = b"x" * (client_module.MAX_MANIFEST_BYTES + 1)
    registry.manifests[(REPO, "big")] = (huge, "application/vnd.oci.image.manifest.v1+json")
    registry.blobs[(REPO, BLOB_DIGEST)] = BLOB
    with client_for(tmp_path, registry, "reader") as client:
        with pytest.raises(ContentTooLarge):
            client.get_manifest(ImageReference.parse(f"{registry.host}/{REPO}:big"))
        # a blob larger than its declared size is cut off, announced or not, and not kept
        with pytest.raises(ContentTooLarge) as err:
            client.download_blob(REPO, BLOB_DIGEST, tmp_path / "blob", max_bytes=len(BLOB) - 1)
        assert err.value.status == 422 and err.value.extra["limit_bytes"] == len(BLOB) - 1
        assert not (tmp_path / "blob").exists()
        with pytest.raises(ContentTooLarge):
            client.get_blob(REPO, BLOB_DIGEST, max_bytes=100)
        assert client.get_blob(REPO, BLOB_DIGEST, max_bytes=len(BLOB)) == BLOB


def test_an_upload_location_on_another_host_is_refused(registry: FakeRegistry,
                                                       tmp_path: Path) -> None:
    with Elsewhere() as elsewhere:
        registry.upload_location = f"{elsewhere.url}/upload"
        with client_for(tmp_path, registry, "writer") as client, \
                pytest.raises(RegistryError, match="upload location on another host"):
            client.upload_blob(REPO, BLOB_DIGEST, len(BLOB), BLOB)
        assert elsewhere.seen == []
    assert registry.blobs == {}


def test_a_pull_that_expands_beyond_its_limit_leaves_nothing(registry: FakeRegistry,
                                                             tmp_path: Path) -> None:
    source = checkpoint_dir(tmp_path, pages_bytes=0)
    (source / "checkpoint" / "pages-1.img").write_bytes(bytes(12 << 20))  # zeros: a bomb
    manifest = store.load_manifest(source)
    manifest.files = store.hash_files(source)
    manifest.sign(KEY)
    store.write_json(source / store.MANIFEST, manifest.to_dict())
    with RemoteStore(f"{registry.host}/{REPO}", settings_for(tmp_path, registry, "writer")
                     ) as remote:
        pushed = remote.push(source, manifest, "zstd", KEY)
        assert pushed.size_bytes < 64 << 10
        with pytest.raises(ContentTooLarge) as err:
            remote.pull("ckpt-1", tmp_path / "pulled", KEY, max_bytes=1 << 20)
    assert err.value.status == 422
    assert not (tmp_path / "pulled").exists() and not list(tmp_path.glob(".tmp-pull-*"))
