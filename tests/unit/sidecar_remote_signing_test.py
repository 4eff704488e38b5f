"""Remote checkpoints are restored only when a helper of this cluster made them: checkpoints in a
token registry (tests/unit/registry_fake.py) pushed by a helper, and others pushed by someone
who can push to the repository but holds no signing key, restored through POST /restore of
another helper. A refused pull fetches no layer, runs no CRIU and leaves nothing behind."""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.kube.api import KubeAPI
from sidecar.ops.access import build_verifier
from sidecar.registry import remote
from sidecar.registry.remote import CONFIG_KEY, RemoteStore
from sidecar.storage import signing, store
from sidecar.storage.catalogue import Catalogue
from tests.unit.authz_test import make_token
from tests.unit.plugin_fakeapi import FakeCluster
from tests.unit.registry_fake import FakeRegistry
from tests.unit.sidecar_registry_client_test import REPO, USERS, settings_for
from tests.unit.sidecar_support import (
    HelperApp,
    assert_error,
    cluster_key,
    stop,
    write_signing_key,
)

KEY = cluster_key()
ATTACKER = cluster_key(os.urandom(32))


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    with FakeRegistry(dict(USERS)) as fake:
        yield fake


class Node(HelperApp):
    """A helper whose checkpoint registry is the fake one, with the cluster's key (or none)."""

    def __init__(self, home: Path, registry: FakeRegistry, *, key: bytes | None = KEY.secret,
                 verifier: Any = None, **settings: Any) -> None:
        self.verifier = verifier
        home.mkdir()
        if key is not None:
            settings["signing_key_file"] = write_signing_key(home / "signing-key", key)
        super().__init__(home, remote_repository=f"{registry.host}/{REPO}",
                         registry=settings_for(home, registry, "writer"), **settings)

    def app_options(self) -> dict[str, Any]:
        return {"verifier": self.verifier} if self.verifier is not None else {}

    def restore_body(self, checkpoint_id: str, namespace: str = "default") -> dict[str, Any]:
        return {"checkpoint_data": {"container_name": "first", "sandbox_name": "two-containers",
                                    "namespace": namespace, "root": str(self.root),
                                    "checkpoint_id": checkpoint_id}}

    def criu_ran(self) -> bool:
        return (Path(self.config.criu_path).parent / "criu-report.json").exists()

    def left_behind(self) -> list[str]:
        """What a pull could have left in the checkpoint directory."""
        found = sorted(p.name for p in self.config.checkpoint_dir.iterdir()
                       if not p.name.startswith((".catalogue", ".restored", ".signing-key")))
        return found + [e["id"] for e in Catalogue(self.config.checkpoint_dir).list()]


@pytest.fixture
def nodes(tmp_path: Path, registry: FakeRegistry) -> Iterator[list[Node]]:
    made: list[Node] = []
    yield made
    for node in made:
        stop(node.source)


def node(nodes: list[Node], home: Path, registry: FakeRegistry, **kw: Any) -> Node:
    made = Node(home, registry, **kw)
    nodes.append(made)
    return made


def pushed_by_a_helper(nodes: list[Node], tmp_path: Path, registry: FakeRegistry) -> str:
    """A checkpoint of node A's counter (namespace default), pushed by node A."""
    a = node(nodes, tmp_path / "a", registry)
    answer = a.client.post("/checkpoint", json={**a.checkpoint_body(), "storage": "remote"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["storage"] == "remote"
    return str(answer.json()["checkpoint_id"])


def layer_fetches(registry: FakeRegistry) -> list[str]:
    """Blob GETs of checkpoint layers (configs are small and read first)."""
    configs = set()
    for (repo, _ref), (body, _type) in registry.manifests.items():
        if repo == REPO:
            configs.add(json.loads(body)["config"]["digest"])
    return [path for method, path in registry.requests if method == "GET"
            and "/blobs/sha256:" in path and path.rsplit("/", 1)[1] not in configs]


# -- what someone with push rights but no key can do to a repository ------------------------------
def image_of(registry: FakeRegistry, tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
    body, _type = registry.manifests[(REPO, tag)]
    image = json.loads(body)
    config = json.loads(registry.blobs[(REPO, image["config"]["digest"])])
    return image, config


def store_blob(registry: FakeRegistry, data: bytes) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    registry.blobs[(REPO, digest)] = data
    return {"digest": digest, "size": len(data)}


def put_image(registry: FakeRegistry, tag: str, image: dict[str, Any],
              config: dict[str, Any]) -> None:
    """What `crane`/`oras` would push: a config blob and a manifest under `tag`."""
    image["config"].update(store_blob(registry, json.dumps(config).encode()))
    body = json.dumps(image).encode()
    media = "application/vnd.oci.image.manifest.v1+json"
    registry.manifests[(REPO, tag)] = (body, media)
    registry.manifests[(REPO, "sha256:" + hashlib.sha256(body).hexdigest())] = (body, media)


def checkpoint_files(directory: Path, checkpoint_id: str, namespace: str = "default",
                     pages: bytes = b"\x01" * 4096) -> store.CheckpointManifest:
    """Files and a manifest whose sha256s all agree: what a forger can make."""
    (directory / "checkpoint").mkdir(parents=True)
    (directory / "checkpoint" / "pages-1.img").write_bytes(pages)
    (directory / "spec.dump").write_text(json.dumps({"mounts": []}))
    manifest = store.CheckpointManifest(
        checkpoint_id, "2026-01-01T00:00:00Z",
        {"namespace": namespace, "pod": "p", "container": "c", "container_id": "x" * 64},
        {}, {"leave_running": True})
    manifest.files = store.hash_files(directory)
    return manifest


def push_with(key: signing.SigningKey, tmp_path: Path, registry: FakeRegistry,
              checkpoint_id: str, namespace: str = "default") -> None:
    """A well-formed checkpoint image signed with `key`, pushed with the writer's password."""
    directory = tmp_path / f"made-{checkpoint_id}"
    manifest = checkpoint_files(directory, checkpoint_id, namespace)
    manifest.sign(key)
    store.write_json(directory / store.MANIFEST, manifest.to_dict())
    with RemoteStore(f"{registry.host}/{REPO}", settings_for(tmp_path, registry, "writer")
                     ) as repository:
        repository.push(directory, manifest, "zstd", key)


def refused_untrusted(b: Node, registry: FakeRegistry, checkpoint_id: str,
                      message: str) -> dict[str, Any]:
    body = assert_error(b.client.post("/restore", json=b.restore_body(checkpoint_id)), 422,
                        "checkpoint_untrusted")
    assert message in body["message"], body["message"]
    assert body["checkpoint_id"] == checkpoint_id
    assert layer_fetches(registry) == []  # refused before a byte of the layer
    assert not b.criu_ran()
    assert b.left_behind() == []
    return body


# -- tests -----------------------------------------------------------------------------------------
def test_a_checkpoint_a_helper_pushed_is_pulled_by_another(nodes: list[Node], tmp_path: Path,
                                                          registry: FakeRegistry) -> None:
    checkpoint_id = pushed_by_a_helper(nodes, tmp_path, registry)
    _image, config = image_of(registry, checkpoint_id)
    assert config[CONFIG_KEY]["manifest"]["signature"]["key_id"] == KEY.key_id
    b = node(nodes, tmp_path / "b", registry)
    answer = b.client.post("/restore", json=b.restore_body(checkpoint_id))
    # verified and pulled; then refused for the target, which is not a sleeping placeholder
    assert answer.status_code == 409, answer.text
    pulled = b.config.checkpoint_dir / checkpoint_id
    assert store.verify(pulled, KEY).source["namespace"] == "default"
    assert [e["id"] for e in b.client.get("/checkpoints").json()["checkpoints"]] == \
        [checkpoint_id]
    assert len(layer_fetches(registry)) == 1 and not b.criu_ran()


def test_a_forged_checkpoint_is_422_and_nothing_is_touched(nodes: list[Node], tmp_path: Path,
                                                          registry: FakeRegistry) -> None:
    push_with(ATTACKER, tmp_path, registry, "forged-1")
    b = node(nodes, tmp_path / "b", registry)
    body = refused_untrusted(b, registry, "forged-1", "signed with another key")
    assert "not signed by a helper of this cluster" in body["message"]


def test_an_unsigned_image_is_422(nodes: list[Node], tmp_path: Path,
                                  registry: FakeRegistry) -> None:
    push_with(ATTACKER, tmp_path, registry, "old-1")
    image, config = image_of(registry, "old-1")
    del config[CONFIG_KEY]  # as helpers before signing pushed them
    put_image(registry, "old-1", image, config)
    b = node(nodes, tmp_path / "b", registry)
    refused_untrusted(b, registry, "old-1", "carries no signed manifest")


def test_a_signed_checkpoint_with_another_layer_is_422(nodes: list[Node], tmp_path: Path,
                                                      registry: FakeRegistry) -> None:
    checkpoint_id = pushed_by_a_helper(nodes, tmp_path, registry)
    image, config = image_of(registry, checkpoint_id)
    evil = tmp_path / "evil"
    checkpoint_files(evil, checkpoint_id, pages=b"\xcc" * 4096)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        tar.add(evil, arcname=".")
    image["layers"][0].update(store_blob(registry, raw.getvalue()),
                              mediaType=remote.LAYER_TYPES["none"])
    put_image(registry, checkpoint_id, image, config)
    registry.requests.clear()
    b = node(nodes, tmp_path / "b", registry)
    refused_untrusted(b, registry, checkpoint_id, "not the layer")


def test_a_signed_checkpoint_under_another_id_or_namespace_is_422(
        nodes: list[Node], tmp_path: Path, registry: FakeRegistry) -> None:
    checkpoint_id = pushed_by_a_helper(nodes, tmp_path, registry)
    image, config = image_of(registry, checkpoint_id)
    image["annotations"]["io.cedana.checkpoint.id"] = "copy-1"
    put_image(registry, "copy-1", image, config)
    image, config = image_of(registry, checkpoint_id)
    image["annotations"]["io.cedana.checkpoint.namespace"] = "elsewhere"
    put_image(registry, checkpoint_id, image, config)
    registry.requests.clear()
    b = node(nodes, tmp_path / "b", registry)
    refused_untrusted(b, registry, "copy-1", "signed for that id, not copy-1")
    refused_untrusted(b, registry, checkpoint_id,
                      "is signed for namespace 'default', not 'elsewhere'")


def test_a_helper_without_the_clusters_key_pulls_nothing(nodes: list[Node], tmp_path: Path,
                                                         registry: FakeRegistry) -> None:
    checkpoint_id = pushed_by_a_helper(nodes, tmp_path, registry)
    registry.requests.clear()
    b = node(nodes, tmp_path / "b", registry, key=None)
    body = refused_untrusted(b, registry, checkpoint_id, "--signing-key")
    assert "cannot verify checkpoint" in body["message"]
    assert registry.requests == []  # not even asked
    # nor does it push: its own key means nothing to another node
    answer = b.client.post("/checkpoint", json={**b.checkpoint_body(), "storage": "remote"})
    assert "--signing-key" in assert_error(answer, 400, "invalid_request")["message"]
    assert not (b.config.checkpoint_dir / "counter").exists() and registry.requests == []


def test_more_than_the_signed_sizes_is_never_written(nodes: list[Node], tmp_path: Path,
                                                     registry: FakeRegistry) -> None:
    """A layer bound to a signed manifest by the cluster's key (as if a helper were made to
    sign it) whose pages file is a decompression bomb: 10 MiB of zeros, a few KiB on the wire,
    where the manifest says 4096 bytes."""
    directory = tmp_path / "made"
    manifest = checkpoint_files(directory, "bomb-1")
    manifest.sign(KEY)
    store.write_json(directory / store.MANIFEST, manifest.to_dict())
    (directory / "checkpoint" / "pages-1.img").write_bytes(bytes(10 << 20))
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in ["", "checkpoint", *sorted(manifest.files), store.MANIFEST]:
            tar.add(directory / rel if rel else directory, arcname=rel or ".", recursive=False)
    import zstandard
    bomb = zstandard.ZstdCompressor(level=19).compress(raw.getvalue())
    assert len(bomb) < 64 << 10
    layer = {"mediaType": remote.LAYER_TYPES["zstd"], **store_blob(registry, bomb)}
    config = {CONFIG_KEY: {"manifest": manifest.to_dict(), "layer": layer,
                           "signature": KEY.sign(signing.IMAGE_PURPOSE,
                                                 remote.image_statement(manifest, layer))}}
    image = {"schemaVersion": 2, "mediaType": remote.OCI_MANIFEST,
             "config": {"mediaType": remote.OCI_CONFIG}, "layers": [layer],
             "annotations": {"io.cedana.checkpoint.id": "bomb-1"}}
    put_image(registry, "bomb-1", image, config)
    b = node(nodes, tmp_path / "b", registry)
    body = assert_error(b.client.post("/restore", json=b.restore_body("bomb-1")), 422,
                        "checkpoint_untrusted")
    assert "'checkpoint/pages-1.img'" in body["message"] and "10485760" in body["message"]
    assert "refused before it was written" in body["message"]
    assert b.left_behind() == [] and not b.criu_ran()
    # and a checkpoint larger than the helper takes is refused before its layer is fetched
    registry.requests.clear()
    small = node(nodes, tmp_path / "c", registry, max_checkpoint_bytes=1000)
    body = assert_error(small.client.post("/restore", json=small.restore_body("bomb-1")), 422,
                        "content_too_large")
    assert body["limit_bytes"] == 1000 and "--max-checkpoint-bytes" in body["message"]
    assert layer_fetches(registry) == [] and small.left_behind() == []


def test_restoring_across_namespaces_needs_both_by_the_signed_namespace(
        nodes: list[Node], tmp_path: Path, registry: FakeRegistry, cluster: FakeCluster,
        kubeconfig: Path) -> None:
    push_with(KEY, tmp_path, registry, "team-a-1", namespace="team-a")  # a helper made it
    verifier = build_verifier("kubernetes", KubeAPI.connect(kubeconfig, "node-1"))
    b = node(nodes, tmp_path / "b", registry, verifier=verifier)
    cluster.denied_subject_reviews.add(("alice", "get", "checkpoints", "", "team-a"))
    alice = make_token(cluster, "alice")
    answer = b.client.post("/restore", json=b.restore_body("team-a-1"), headers=alice)
    body = assert_error(answer, 403, "forbidden")
    assert (body["namespace"], body["user"]) == ("team-a", "alice")
    assert body["permission"] == "get checkpoints.cedana.io in namespace team-a"
    assert layer_fetches(registry) == [] and b.left_behind() == [] and not b.criu_ran()
    # relabelled to say "default", where alice may read: the signed manifest rules
    push_with(KEY, tmp_path, registry, "team-a-2", namespace="team-a")
    image, config = image_of(registry, "team-a-2")
    image["annotations"]["io.cedana.checkpoint.namespace"] = "default"
    put_image(registry, "team-a-2", image, config)
    answer = b.client.post("/restore", json=b.restore_body("team-a-2"), headers=alice)
    assert "is signed for namespace 'team-a', not 'default'" in \
        assert_error(answer, 422, "checkpoint_untrusted")["message"]
    assert layer_fetches(registry) == [] and b.left_behind() == [] and not b.criu_ran()
    # bob may restore into default and read team-a: the check passes, the pull happens
    bob = make_token(cluster, "bob")
    answer = b.client.post("/restore", json=b.restore_body("team-a-1"), headers=bob)
    assert answer.status_code == 409, answer.text  # verified, pulled; the target is no placeholder
    assert (b.config.checkpoint_dir / "team-a-1").is_dir()
    reviews = [json.loads(r.body)["spec"]["resourceAttributes"] if isinstance(r.body, str)
               else r.body["spec"]["resourceAttributes"] for r in cluster.requests
               if r.path.endswith("/subjectaccessreviews")]
    assert {"namespace": "team-a", "verb": "get", "group": "cedana.io",
            "resource": "checkpoints"} in reviews


def test_a_pull_beyond_the_quota_is_507_before_any_layer_is_fetched(
        nodes: list[Node], tmp_path: Path, registry: FakeRegistry) -> None:
    checkpoint_id = pushed_by_a_helper(nodes, tmp_path, registry)
    b = node(nodes, tmp_path / "b", registry, max_checkpoint_dir_bytes=1024)
    answer = b.client.post("/restore", json=b.restore_body(checkpoint_id))
    body = assert_error(answer, 507, "quota_exceeded")
    assert body["checkpoint_id"] == checkpoint_id and body["limit_bytes"] == 1024
    assert body["needed_bytes"] > 1024  # the checkpoint's signed size
    assert f"pull of checkpoint {checkpoint_id}" in body["message"]
    assert layer_fetches(registry) == []
    assert b.left_behind() == [] and not b.criu_ran()


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_a_changed_layer_is_said_to_be_changed_whatever_broke_first(
        nodes: list[Node], tmp_path: Path, registry: FakeRegistry, compression: str) -> None:
    """One byte of a helper's layer changed in the registry: in a tar header (the archive then
    seems to end early) or in the compressed stream. The restore is refused as a blob that is
    not the one signed, not as the symptom its changed byte caused, and nothing is left."""
    a = node(nodes, tmp_path / "a", registry)
    answer = a.client.post("/checkpoint", json={**a.checkpoint_body(), "storage": "remote",
                                                "compression": compression})
    assert answer.status_code == 200, answer.text
    checkpoint_id = str(answer.json()["checkpoint_id"])
    image, _config = image_of(registry, checkpoint_id)
    digest = image["layers"][0]["digest"]
    blob = bytearray(registry.blobs[(REPO, digest)])
    # the name in the header of a member in the middle of the archive, or a compressed byte
    at = blob.find(b"checkpoint/") + 3 if compression == "none" else len(blob) // 2
    assert at > 512  # not the first member's header (that one fails tarfile at once)
    blob[at] ^= 0xFF
    registry.blobs[(REPO, digest)] = bytes(blob)
    b = node(nodes, tmp_path / "b", registry)
    body = assert_error(b.client.post("/restore", json=b.restore_body(checkpoint_id)), 422,
                        "checkpoint_corrupted")
    assert f"checkpoint blob {digest} does not match its digest" in body["message"], body
    if compression == "none":
        assert "unpacking it failed first" in body["message"], body
    assert b.left_behind() == [] and not b.criu_ran()
