"""Image references, the node's registry credentials and TLS trust, containerd listings, and which
layers an image adds over a base."""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from sidecar.errors import InvalidRequest, RegistryAuthFailed, TargetIncompatible
from sidecar.node.containerd import CONFIG_LABEL, ContainerdImages, _complete
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


def test_containerd_content_index_and_completeness(tmp_path: Path) -> None:
    listing = (
        "DIGEST\tSIZE\tAGE\tLABELS\n"
        f"sha256:{'1' * 64}\t422B\tAbout an hour\t{CONFIG_LABEL}=sha256:{'c' * 64},"
        f"containerd.io/gc.ref.content.l.0=sha256:{'2' * 64}\n"
        f"sha256:{'2' * 64}\t5.2MB\t2 days\tcontainerd.io/distribution.source.r=lab/a,lab/b,"
        f"containerd.io/uncompressed=sha256:{'2' * 64}\n"
        f"sha256:{'c' * 64}\t453B\t3 minutes\t-\n")
    fake_ctr = tmp_path / "ctr"
    fake_ctr.write_text(f"#!/bin/sh\ncat <<'EOF'\n{listing}EOF\n")
    fake_ctr.chmod(0o755)
    index = ContainerdImages(str(fake_ctr), tmp_path / "sock").content_index()
    assert index[f"sha256:{'1' * 64}"][CONFIG_LABEL] == f"sha256:{'c' * 64}"
    assert index[f"sha256:{'2' * 64}"]["containerd.io/distribution.source.r"] == "lab/a,lab/b"
    assert index[f"sha256:{'c' * 64}"] == {}
    assert _complete({"layers": [{"digest": f"sha256:{'2' * 64}"}]}, index)
    assert not _complete({"layers": [{"digest": f"sha256:{'9' * 64}"}]}, index)


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
    assert _diff_id(tmp_path / "l.tar", "application/vnd.oci.image.layer.v1.tar") == expected
    assert _diff_id(tmp_path / "l.tgz",
                    "application/vnd.docker.image.rootfs.diff.tar.gzip") == expected
    assert _diff_id(tmp_path / "l.tgz", "application/vnd.oci.image.layer.v1.tar+zstd") is None
