"""containerd 2.x: the registry's TLS and credentials from configuration version 3 and
certs.d/HOST/hosts.toml, the layout that is left once containerd 2.4 drops registry.configs."""
from __future__ import annotations

import base64
import json
from pathlib import Path

from sidecar.registry.credentials import NodeRegistrySettings, node_access


def _v3(tmp_path: Path, certs: Path, docker: list[Path] | None = None) -> NodeRegistrySettings:
    toml = tmp_path / "config.toml"
    toml.write_text(f"""
version = 3
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "{certs}"
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
""")
    return NodeRegistrySettings(tuple(docker or []), toml, (tmp_path / "no-certs",))


def _hosts(certs: Path, host: str, body: str) -> Path:
    directory = certs / host
    directory.mkdir(parents=True)
    (directory / "hosts.toml").write_text(body)
    return directory


def test_version_3_config_path_gives_ca_and_endpoint(tmp_path: Path) -> None:
    certs = tmp_path / "certs.d"
    directory = _hosts(certs, "reg.example:5000", """
server = "https://reg.example:5000"
[host."https://reg.example:5000"]
  capabilities = ["pull", "resolve", "push"]
  ca = "lab-ca.crt"
""")
    (directory / "lab-ca.crt").write_text("pem")
    access = node_access("reg.example:5000", _v3(tmp_path, certs))
    # a relative `ca` is below the host's directory, as containerd reads it
    assert access.verify == str(directory / "lab-ca.crt")
    assert access.endpoint == "https://reg.example:5000"
    assert not access.has_credentials


def test_plain_http_server_and_skip_verify(tmp_path: Path) -> None:
    certs = tmp_path / "certs.d"
    _hosts(certs, "plain.example", 'server = "http://plain.example"\n')
    _hosts(certs, "selfsigned.example",
           'server = "https://selfsigned.example"\n'
           '[host."https://selfsigned.example"]\n  skip_verify = true\n')
    assert node_access("plain.example", _v3(tmp_path, certs)).endpoint == "http://plain.example"
    assert node_access("selfsigned.example", _v3(tmp_path, certs)).verify is False


def test_basic_authorization_header_in_hosts_toml_is_a_credential(tmp_path: Path) -> None:
    certs = tmp_path / "certs.d"
    token = base64.b64encode(b"robot:pa:ss").decode()
    directory = _hosts(certs, "reg.example", f"""
[host."https://reg.example"]
  [host."https://reg.example".header]
    authorization = "Basic {token}"
""")
    access = node_access("reg.example", _v3(tmp_path, certs))
    assert (access.username, access.password) == ("robot", "pa:ss")
    assert str(directory / "hosts.toml") in access.source


def test_kubelet_credentials_win_over_hosts_toml(tmp_path: Path) -> None:
    certs = tmp_path / "certs.d"
    _hosts(certs, "reg.example", '[host."https://reg.example".header]\n'
                                 f'  Authorization = "Basic {base64.b64encode(b"h:h").decode()}"\n')
    kubelet = tmp_path / "kubelet" / "config.json"
    kubelet.parent.mkdir()
    auth = base64.b64encode(b"kubelet-user:k").decode()
    kubelet.write_text(json.dumps({"auths": {"reg.example": {"auth": auth}}}))
    access = node_access("reg.example", _v3(tmp_path, certs, [kubelet]))
    assert (access.username, access.password) == ("kubelet-user", "k")
    assert str(kubelet) in access.source


def test_default_directory_applies_to_hosts_without_their_own(tmp_path: Path) -> None:
    certs = tmp_path / "certs.d"
    _hosts(certs, "_default", '[host."https://any"]\n  skip_verify = true\n')
    _hosts(certs, "own.example", 'server = "https://own.example"\n')
    assert node_access("any.example", _v3(tmp_path, certs)).verify is False
    assert node_access("own.example", _v3(tmp_path, certs)).verify is True


def test_version_2_section_is_still_read(tmp_path: Path) -> None:
    certs = tmp_path / "certs.d"
    directory = _hosts(certs, "reg.example",
                       '[host."https://reg.example"]\n  ca = "/nonexistent"\n')
    (directory / "ca.crt").write_text("pem")
    toml = tmp_path / "v2.toml"
    toml.write_text(f"""
version = 2
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "{certs}"
[plugins."io.containerd.grpc.v1.cri".registry.configs."reg.example".auth]
  username = "old"
  password = "style"
""")
    access = node_access("reg.example", NodeRegistrySettings((), toml, (certs,)))
    assert (access.username, access.password) == ("old", "style")
    # the CA named in hosts.toml does not exist: the certs.d directory's *.crt is used
    assert access.verify == str(directory / "ca.crt")
