"""Image references, the node's registry credentials and TLS trust, containerd listings, and which
layers an image adds over a base."""
from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import HelperConfig
from sidecar.errors import (
    ContainerdUnavailable,
    ContentTooLarge,
    ImageNotFound,
    InvalidRequest,
    RegistryAuthFailed,
    RegistryError,
    TargetIncompatible,
)
from sidecar.node.containerd import ContainerdImages
from sidecar.ops.rootfs import _diff_id, added_layers
from sidecar.registry.client import ImageReference
from sidecar.registry.credentials import NodeRegistrySettings, node_access


@pytest.mark.parametrize("text,host,repo,ref", [
    ("127.0.0.1:5000/lab/app:1", "127.0.0.1:5000", "lab/app", "1"),
    ("registry.example.com/team/app", "registry.example.com", "team/app", "latest"),
    ("busybox", "docker.io", "library/busybox", "latest"),
    ("cedana/helper:0.1.0", "docker.io", "cedana/helper", "0.1.0"),
    ("docker.io/cedana-lab/workload:1", "docker.io", "cedana-lab/workload", "1"),
    ("localhost/x:y", "localhost", "x", "y"),
    ("localhost:5000/a/b/c@sha256:" + "a" * 64, "localhost:5000", "a/b/c", "sha256:" + "a" * 64),
])
def test_image_reference_parse(text: str, host: str, repo: str, ref: str) -> None:
    parsed = ImageReference.parse(text)
    assert (parsed.host, parsed.repository, parsed.reference) == (host, repo, ref)


@pytest.mark.parametrize("text", ["", "UPPER/case", "a b", "x:y:z", "repo@sha256:short",
                                  "/leading", "host:5000/"])
def test_image_reference_refuses(text: str) -> None:
    with pytest.raises(InvalidRequest):
        ImageReference.parse(text)


def _settings(tmp_path: Path, docker: list[Path] | None = None,
              containerd: str | None = None) -> NodeRegistrySettings:
    toml = tmp_path / "containerd.toml"
    if containerd is not None:
        toml.write_text(containerd)
    return NodeRegistrySettings(tuple(docker or []), toml, (tmp_path / "certs.d",))


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_docker_config_auths(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"auths": {"reg.example:5000": {"auth": _auth("u", "p:w")}}}))
    access = node_access("reg.example:5000", _settings(tmp_path, [tmp_path / "none.json", cfg]))
    assert (access.username, access.password) == ("u", "p:w")
    assert str(cfg) in access.source and access.endpoint == "https://reg.example:5000"
    assert access.verify is True
    assert not node_access("other.example", _settings(tmp_path, [cfg])).has_credentials


def _credential_helper(tmp_path: Path, name: str, body: str) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    script = bindir / f"docker-credential-{name}"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return bindir


def test_docker_credential_helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = _credential_helper(tmp_path, "unit", 'read s; printf \'{"ServerURL":"%s",'
                                '"Username":"helper-user","Secret":"s3cret"}\' "$s"\n')
    _credential_helper(tmp_path, "broken", "echo 'backend is locked' >&2; exit 1\n")
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"credHelpers": {"reg.example": "unit"}, "credsStore": "broken"}))
    access = node_access("reg.example", _settings(tmp_path, [cfg]))
    assert (access.username, access.password) == ("helper-user", "s3cret")
    assert "credential helper" in access.source
    with pytest.raises(RegistryAuthFailed) as failed:
        node_access("elsewhere.example", _settings(tmp_path, [cfg]))
    assert "elsewhere.example" in failed.value.message


def test_containerd_registry_config(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("pem")
    settings = _settings(tmp_path, [], f'''
version = 2
[plugins."io.containerd.grpc.v1.cri".registry.mirrors."10.0.0.1:5000"]
  endpoint = ["http://10.0.0.1:5000"]
[plugins."io.containerd.grpc.v1.cri".registry.configs."10.0.0.1:5000".auth]
  username = "ctr-user"
  password = "ctr-pass"
[plugins."io.containerd.grpc.v1.cri".registry.configs."secure.example".tls]
  ca_file = "{ca}"
[plugins."io.containerd.grpc.v1.cri".registry.configs."skip.example".tls]
  insecure_skip_verify = true
[plugins."io.containerd.grpc.v1.cri".registry.configs."tok.example".auth]
  auth = "{_auth("<token>", "refresh-me")}"
''')
    plain = node_access("10.0.0.1:5000", settings)
    assert plain.endpoint == "http://10.0.0.1:5000"
    assert (plain.username, plain.password) == ("ctr-user", "ctr-pass")
    assert "registry.configs" in plain.source
    assert node_access("secure.example", settings).verify == str(ca)
    assert node_access("skip.example", settings).verify is False
    token = node_access("tok.example", settings)
    assert token.identity_token == "refresh-me" and token.username is None


def test_certs_dir_and_hosts_toml(tmp_path: Path) -> None:
    host_dir = tmp_path / "certs.d" / "reg.example"
    host_dir.mkdir(parents=True)
    (host_dir / "ca.crt").write_text("pem")
    assert node_access("reg.example", _settings(tmp_path)).verify == str(host_dir / "ca.crt")
    hosts = tmp_path / "hosts"
    (hosts / "h.example").mkdir(parents=True)
    ca = tmp_path / "h-ca.pem"
    ca.write_text("pem")
    (hosts / "h.example" / "hosts.toml").write_text(
        f'server = "https://h.example"\n[host."https://h.example"]\n  ca = "{ca}"\n')
    settings = _settings(tmp_path, [], f'''
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "{hosts}"
''')
    assert node_access("h.example", settings).verify == str(ca)


def test_unreadable_configs_mean_no_credentials(tmp_path: Path) -> None:
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    access = node_access("reg.example", _settings(tmp_path, [bad], "not = [toml"))
    assert not access.has_credentials and access.source == "no credentials"


FAKE_CTR = """
    import json, sys, time
    from pathlib import Path

    here = Path(__file__).parent
    store = json.loads((here / "store.json").read_text())
    args = sys.argv[1:]
    assert args[:6] == ["--address", args[1], "--namespace", "k8s.io", "--timeout", args[5]]
    args = args[6:]
    (here / "calls").open("a").write(" ".join(args) + "\\n")
    if (here / "hang").exists():
        time.sleep(60)
    if args[:2] == ["images", "ls"]:
        print("REF                 TYPE    DIGEST   SIZE     PLATFORMS   LABELS")
        for name, (kind, digest) in sorted(store["images"].items()):
            if args[2:] in ([], ["name==" + name]):
                print(f"{name} {kind} {digest} 1.2 MiB linux/amd64 io.cri-containerd.image=managed")
    elif args == ["content", "ls", "-q"]:
        print("\\n".join(store["blobs"]))
    elif args[:2] == ["content", "get"] and args[2] in store["blobs"]:
        sys.stdout.buffer.write(store["blobs"][args[2]].encode("latin-1"))
    else:
        print("ctr: content digest " + args[-1] + ": not found", file=sys.stderr)
        sys.exit(1)
"""
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def _blob(data: bytes | str) -> tuple[str, str]:
    import hashlib

    raw = data.encode() if isinstance(data, str) else data
    return "sha256:" + hashlib.sha256(raw).hexdigest(), raw.decode("latin-1")


class FakeContainerd:
    """`ctr` reading images and blobs from a JSON file (what the helper sees of containerd)."""

    def __init__(self, tmp_path: Path) -> None:
        from tests.unit.sidecar_support import write_script

        self.dir = tmp_path / "ctr"
        self.dir.mkdir()
        self.ctr = write_script(self.dir / "ctr", FAKE_CTR)
        self.socket = tmp_path / "containerd.sock"
        import socket as sockets
        self._listener = sockets.socket(sockets.AF_UNIX)
        self._listener.bind(str(self.socket))
        self.images: dict[str, list[str]] = {}
        self.blobs: dict[str, str] = {}

    def add(self, data: bytes | str) -> str:
        digest, text = _blob(data)
        self.blobs[digest] = text
        return digest

    def image(self, name: str, layers: list[bytes], config: dict[str, Any], *,
              keep_layers: bool = True, index: bool = False) -> str:
        config_digest = self.add(json.dumps(config))
        descriptors = []
        for layer in layers:
            digest, _ = _blob(layer)
            if keep_layers:
                self.add(layer)
            descriptors.append({"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                "digest": digest, "size": len(layer)})
        manifest = self.add(json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                        "config": {"digest": config_digest},
                                        "layers": descriptors}))
        target, kind = manifest, OCI_MANIFEST
        if index:
            from sidecar.node.containerd import node_platform
            os_name, arch = node_platform()
            target, kind = self.add(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                                "manifests": [
                {"digest": "sha256:" + "0" * 64, "mediaType": OCI_MANIFEST,
                 "platform": {"os": "windows", "architecture": arch}},
                {"digest": manifest, "mediaType": OCI_MANIFEST,
                 "platform": {"os": os_name, "architecture": arch}}]})), OCI_INDEX
        self.images[name] = [kind, target]
        return manifest

    def sync(self) -> None:
        (self.dir / "store.json").write_text(json.dumps({"images": self.images,
                                                         "blobs": self.blobs}))


def test_an_image_from_containerd_through_its_index(tmp_path: Path) -> None:
    from sidecar.ops.images import containerd_image

    fake = FakeContainerd(tmp_path)
    manifest = fake.image("docker.io/lab/app:1", [b"layer one"], {"rootfs": {"diff_ids": ["x"]}},
                          index=True)
    fake.sync()
    config = HelperConfig(checkpoint_dir=tmp_path / "c", ctr_path=str(fake.ctr))
    image = containerd_image(config, str(fake.socket), "docker.io/lab/app:1", tmp_path)
    assert image.diff_ids == ["x"] and image.media_type == OCI_MANIFEST
    assert json.loads(fake.blobs[manifest]) == image.manifest
    layer = image.manifest["layers"][0]["digest"]
    with image.open_blob(layer) as blob:
        assert blob.read() == b"layer one"
    assert not list(tmp_path.glob("blob-*"))  # the checked copy is gone
    with pytest.raises(ImageNotFound):
        containerd_image(config, str(fake.socket), "docker.io/lab/none:1", tmp_path)


def test_a_reference_without_its_layers_is_served_by_another_of_the_same_image(
        tmp_path: Path) -> None:
    from sidecar.ops.images import containerd_image

    fake = FakeContainerd(tmp_path)
    config_body = {"rootfs": {"diff_ids": ["d1"]}}
    fake.image("docker.io/lab/app:1", [b"layer bytes", b"discarded"], config_body,
               keep_layers=False)
    fake.image("docker.io/lab/other:2", [b"unrelated"], {"rootfs": {"diff_ids": ["o"]}})
    # the same image (config) pulled another way: other layer blobs, all present
    complete = fake.image("docker.io/lab/app@sha256:" + "9" * 64, [b"layer bytes, gzip"],
                          config_body)
    fake.sync()
    config = HelperConfig(checkpoint_dir=tmp_path / "c", ctr_path=str(fake.ctr))
    image = containerd_image(config, str(fake.socket), "docker.io/lab/app:1", tmp_path)
    assert image.manifest == json.loads(fake.blobs[complete])
    del fake.images["docker.io/lab/app@sha256:" + "9" * 64]
    fake.sync()
    with pytest.raises(ImageNotFound, match="no longer holds the layer blobs"):
        containerd_image(config, str(fake.socket), "docker.io/lab/app:1", tmp_path)


def test_ctr_is_bounded_in_time_and_its_failures_are_typed(tmp_path: Path) -> None:
    fake = FakeContainerd(tmp_path)
    digest = fake.add(b"x" * 100)
    fake.sync()
    images = ContainerdImages(str(fake.ctr), fake.socket, timeout=1)
    with pytest.raises(ImageNotFound, match="not found"):
        images.read_blob("sha256:" + "1" * 64)
    with pytest.raises(RegistryError, match="larger than 10 bytes"):
        images.read_blob(digest, limit=10)
    assert images.blob_to_file(digest, tmp_path / "copy") == 100
    (fake.dir / "hang").touch()
    started = time.monotonic()
    with pytest.raises(ContainerdUnavailable, match="did not finish in time"):
        images.blob_to_file(digest, tmp_path / "copy2")
    assert time.monotonic() - started < 2 + 1  # ctr's own limit, then ours
    assert not (tmp_path / "copy2").exists()
    with pytest.raises(ContainerdUnavailable):
        images.targets()


def test_an_unreadable_images_row_is_an_error_not_a_guess(tmp_path: Path) -> None:
    fake_ctr = tmp_path / "ctr"
    fake_ctr.write_text("#!/bin/sh\necho 'REF TYPE DIGEST'\necho 'app:1 <none> 12ab'\n")
    fake_ctr.chmod(0o755)
    with pytest.raises(ContainerdUnavailable, match="cannot read"):
        ContainerdImages(str(fake_ctr), tmp_path / "sock").targets("app:1")


def test_added_layers() -> None:
    layers = [{"digest": d} for d in ("l1", "l2", "l3")]
    assert added_layers(["a", "b"], ["a", "b", "c"], layers) == [{"digest": "l3"}]
    assert added_layers(["a"], ["a", "b", "c"], layers) == layers[1:]
    assert added_layers(["a", "b", "c"], ["a", "b", "c"], layers) == []
    for base, image in ((["x"], ["a", "b"]), (["a", "x"], ["a", "b", "c"]), ([], ["a"])):
        with pytest.raises(TargetIncompatible):
            added_layers(base, image, layers[:len(image)])


def test_diff_id_of_plain_gzip_and_unknown_layers(tmp_path: Path) -> None:
    import gzip
    import hashlib
    plain = b"tar bytes" * 1000
    expected = "sha256:" + hashlib.sha256(plain).hexdigest()
    (tmp_path / "l.tar").write_bytes(plain)
    (tmp_path / "l.tgz").write_bytes(gzip.compress(plain))
    limit = 1 << 20
    assert _diff_id(tmp_path / "l.tar", "application/vnd.oci.image.layer.v1.tar",
                    limit) == expected
    assert _diff_id(tmp_path / "l.tgz", "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    limit) == expected
    assert _diff_id(tmp_path / "l.tgz", "application/vnd.oci.image.layer.v1.tar+zstd",
                    limit) is None
    # what a gzip layer expands to is bounded, however well it compresses
    with pytest.raises(ContentTooLarge):
        _diff_id(tmp_path / "l.tgz", "application/vnd.docker.image.rootfs.diff.tar.gzip",
                 len(plain) - 1)
