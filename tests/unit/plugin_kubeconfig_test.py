"""kubectl_cedana/kubeconfig.py: the kubeconfig read without the official client (issue 19),
by kubectl's rules; and end to end, a plugin command through it against a fake API server."""
from __future__ import annotations

import base64
import json
import os
import ssl
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubectl_cedana import kubeconfig
from kubectl_cedana.errors import ConfigError
from tests.unit.plugin_fakeapi import FakeApiServer, FakeCluster, make_pki, make_pod, run_cli
from tests.unit.plugin_fakehelpers import FakeHelpers


def write(path: Path, *, current: str = "", clusters: dict[str, Any] | None = None,
          users: dict[str, Any] | None = None,
          contexts: dict[str, Any] | None = None) -> Path:
    doc: dict[str, Any] = {"apiVersion": "v1", "kind": "Config"}
    if current:
        doc["current-context"] = current
    doc["clusters"] = [{"name": k, "cluster": v} for k, v in (clusters or {}).items()]
    doc["users"] = [{"name": k, "user": v} for k, v in (users or {}).items()]
    doc["contexts"] = [{"name": k, "context": v} for k, v in (contexts or {}).items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                 "all_proxy", "NO_PROXY", "no_proxy", "KUBECONFIG"):
        monkeypatch.delenv(name, raising=False)


def test_kubeconfig_files_merge_as_kubectl_merges_them(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The first file to set current-context or define a name wins; later files add names."""
    first = write(tmp_path / "a" / "config", current="one",
                  clusters={"c": {"server": "http://first:1"}},
                  users={"u": {"token": "first-token"}},
                  contexts={"one": {"cluster": "c", "user": "u", "namespace": "ns1"}})
    second = write(tmp_path / "b" / "config", current="two",
                   clusters={"c": {"server": "http://second:2"},
                             "d": {"server": "http://second-d:3"}},
                   users={"u": {"token": "second-token"}, "v": {"token": "v-token"}},
                   contexts={"two": {"cluster": "d", "user": "v"}})
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(first), str(tmp_path / "missing"),
                                                      str(second)]))
    conn = kubeconfig.load(None, None)
    assert (conn.host, conn.namespace) == ("http://first:1", "ns1")
    assert conn.headers == {"Authorization": "Bearer first-token"}
    other = kubeconfig.load(None, "two")  # a context only the second file has
    assert (other.host, other.namespace) == ("http://second-d:3", None)
    assert other.headers == {"Authorization": "Bearer v-token"}
    with pytest.raises(ConfigError, match="context 'three' not found"):
        kubeconfig.load(None, "three")


def test_relative_paths_start_at_the_file_that_names_them(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    folder = tmp_path / "conf"
    (folder / "certs").mkdir(parents=True)
    for name, src in (("ca.crt", pki.ca_crt), ("me.crt", pki.client_crt),
                      ("me.key", pki.client_key)):
        (folder / "certs" / name).write_bytes(Path(src).read_bytes())
    (folder / "token").write_text("from-a-file\n")
    config = write(folder / "config", current="x",
                   clusters={"c": {"server": "https://127.0.0.1:1",
                                   "certificate-authority": "certs/ca.crt"}},
                   users={"u": {"client-certificate": "certs/me.crt",
                                "client-key": "certs/me.key", "tokenFile": "token"}},
                   contexts={"x": {"cluster": "c", "user": "u"}})
    conn = kubeconfig.load(str(config), None)
    assert conn.headers == {"Authorization": "Bearer from-a-file"}
    assert conn.ssl_context is not None
    assert conn.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert len(conn.ssl_context.get_ca_certs()) == 1  # the file's CA, not the system's
    # and the client key never stays on disk: nothing of ours is left in the temp folder
    assert not [p for p in Path(os.environ.get("TMPDIR", "/tmp")).glob("kubectl-cedana-*")
                if p.is_dir() and p.stat().st_uid == os.getuid()
                and (p / "tls.key").exists()]


def test_broken_configurations_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        kubeconfig.load(str(tmp_path / "nope"), None)
    bad_ca = write(tmp_path / "ca", current="x",
                   clusters={"c": {"server": "https://h:1",
                                   "certificate-authority-data":
                                       base64.b64encode(b"not a pem").decode()}},
                   contexts={"x": {"cluster": "c", "user": "u"}})
    with pytest.raises(ConfigError, match="certificate authority is unusable"):
        kubeconfig.load(str(bad_ca), None)
    no_cluster = write(tmp_path / "nc", current="x", contexts={"x": {"cluster": "gone"}})
    with pytest.raises(ConfigError, match="names cluster 'gone', which is not defined"):
        kubeconfig.load(str(no_cluster), None)
    no_current = write(tmp_path / "none", clusters={"c": {"server": "http://h:1"}})
    with pytest.raises(ConfigError, match="no current-context"):
        kubeconfig.load(str(no_current), None)


def test_insecure_and_basic_auth(tmp_path: Path) -> None:
    config = write(tmp_path / "k", current="x",
                   clusters={"c": {"server": "https://h:1", "insecure-skip-tls-verify": True,
                                   "tls-server-name": "api.example"}},
                   users={"u": {"username": "ann", "password": "p:w"}},
                   contexts={"x": {"cluster": "c", "user": "u"}})
    conn = kubeconfig.load(str(config), None)
    assert conn.ssl_context is not None and conn.ssl_context.verify_mode == ssl.CERT_NONE
    assert conn.server_hostname == "api.example"
    assert conn.headers == {"Authorization": "Basic " + base64.b64encode(b"ann:p:w").decode()}


def _exec_plugin(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "bin" / "cred-plugin"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(f"#!{sys.executable}\n{body}")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_an_exec_plugin_gives_the_token_with_client_gos_protocol(tmp_path: Path) -> None:
    seen = tmp_path / "seen.json"
    _exec_plugin(tmp_path, f"""import json, os, sys
open({str(seen)!r}, "w").write(json.dumps({{"info": json.loads(os.environ["KUBERNETES_EXEC_INFO"]),
                                          "env": os.environ.get("CLUSTER_ID"),
                                          "args": sys.argv[1:]}}))
print(json.dumps({{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {{"token": "exec-token"}}}}))
""")
    config = write(tmp_path / "config", current="x",
                   clusters={"c": {"server": "http://h:1"}},
                   users={"u": {"exec": {"apiVersion": "client.authentication.k8s.io/v1",
                                         "command": "./bin/cred-plugin",  # relative: the file's
                                         "args": ["token", "--x"],
                                         "env": [{"name": "CLUSTER_ID", "value": "c-42"}],
                                         "provideClusterInfo": True,
                                         "interactiveMode": "Never"}}},
                   contexts={"x": {"cluster": "c", "user": "u"}})
    conn = kubeconfig.load(str(config), None)
    assert conn.headers == {"Authorization": "Bearer exec-token"}
    got = json.loads(seen.read_text())
    assert got["args"] == ["token", "--x"] and got["env"] == "c-42"
    assert got["info"]["kind"] == "ExecCredential"
    assert got["info"]["apiVersion"] == "client.authentication.k8s.io/v1"
    assert got["info"]["spec"]["cluster"]["server"] == "http://h:1"


def test_a_failing_or_missing_exec_plugin_says_so(tmp_path: Path) -> None:
    _exec_plugin(tmp_path, "import sys\nsys.stderr.write('token expired, run login\\n')\n"
                           "sys.exit(3)\n")
    failing = write(tmp_path / "config", current="x", clusters={"c": {"server": "http://h:1"}},
                    users={"u": {"exec": {"command": str(tmp_path / "bin" / "cred-plugin")}}},
                    contexts={"x": {"cluster": "c", "user": "u"}})
    with pytest.raises(ConfigError, match="exited 3: token expired, run login"):
        kubeconfig.load(str(failing), None)
    missing = write(tmp_path / "config2", current="x", clusters={"c": {"server": "http://h:1"}},
                    users={"u": {"exec": {"command": "no-such-cred-plugin",
                                          "installHint": "install it with brew"}}},
                    contexts={"x": {"cluster": "c", "user": "u"}})
    with pytest.raises(ConfigError, match="not found") as caught:
        kubeconfig.load(str(missing), None)
    assert caught.value.hint == "install it with brew"


@pytest.mark.parametrize("user, env, why", [
    ({"auth-provider": {"name": "oidc", "config": {}}}, {}, "auth-provider 'oidc'"),
    ({"token": "t"}, {"HTTPS_PROXY": "http://proxy:3128"}, "a proxy"),
])
def test_what_is_left_to_the_official_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             user: dict[str, Any], env: dict[str, str],
                                             why: str) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = write(tmp_path / "k", current="x", clusters={"c": {"server": "https://api:6443"}},
                   users={"u": user}, contexts={"x": {"cluster": "c", "user": "u"}})
    with pytest.raises(kubeconfig.Unsupported, match=why):
        kubeconfig.load(str(config), None)


def test_no_proxy_keeps_the_direct_reader(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    monkeypatch.setenv("NO_PROXY", "api,10.0.0.0/8")
    config = write(tmp_path / "k", current="x", clusters={"c": {"server": "https://api:6443",
                                                               "insecure-skip-tls-verify": True}},
                   users={"u": {"token": "t"}}, contexts={"x": {"cluster": "c", "user": "u"}})
    assert kubeconfig.load(str(config), None).host == "https://api:6443"


def test_in_cluster_service_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("sa-token\n")
    (sa / "ca.crt").write_bytes(Path(pki.ca_crt).read_bytes())
    (sa / "namespace").write_text("team-a\n")
    monkeypatch.setattr(kubeconfig, "IN_CLUSTER_TOKEN", str(sa / "token"))
    monkeypatch.setattr(kubeconfig, "IN_CLUSTER_CA", str(sa / "ca.crt"))
    monkeypatch.setattr(kubeconfig, "IN_CLUSTER_NAMESPACE", str(sa / "namespace"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.kube/config
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    conn = kubeconfig.load(None, None)
    assert (conn.host, conn.namespace, conn.source) == ("https://[fd00::1]:443", "team-a",
                                                        "in-cluster")
    assert conn.headers == {"Authorization": "Bearer sa-token"}


def test_a_command_through_an_exec_plugin_and_tls_reaches_the_api_server(
        tmp_path: Path) -> None:
    """End to end: the client certificate an exec plugin prints is the one the API server
    sees, over TLS verified with the kubeconfig's CA."""
    pki = make_pki(tmp_path)
    status = {"clientCertificateData": Path(pki.client_crt).read_text(),
              "clientKeyData": Path(pki.client_key).read_text()}
    _exec_plugin(tmp_path, f'import json\nprint(json.dumps({{"kind": "ExecCredential", '
                           f'"apiVersion": "client.authentication.k8s.io/v1", '
                           f'"status": {json.dumps(status)}}}))\n')
    fake = FakeCluster()
    fake.add_helper("node1")
    fake.add_pod(make_pod("counter"))
    FakeHelpers(fake)
    with FakeApiServer(fake, tls=pki) as server:
        config = write(tmp_path / "kc", current="x",
                       clusters={"c": {"server": server.url,
                                       "certificate-authority-data": base64.b64encode(
                                           Path(pki.ca_crt).read_bytes()).decode()}},
                       users={"u": {"exec": {"command": str(tmp_path / "bin" / "cred-plugin"),
                                             "apiVersion": "client.authentication.k8s.io/v1"}}},
                       contexts={"x": {"cluster": "c", "user": "u"}})
        result = run_cli(config, "checkpoint", "counter", "-o", "json")
    assert result.exit_code == 0, result.stderr
    subjects = [dict(x[0] for x in (r.peer_cert or {})["subject"]) for r in fake.requests]
    assert subjects and all(s["commonName"] == "alice" for s in subjects)
    assert json.loads(result.stdout)["status"]["phase"] == "Succeeded"


def test_an_exec_plugins_messages_reach_the_user_and_a_silent_one_is_given_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """What the plugin writes on stderr (a login URL, a device code) is shown as it comes, as
    kubectl shows it; a plugin that never answers is stopped after EXEC_TIMEOUT_S."""
    _exec_plugin(tmp_path, "import json, sys\nsys.stderr.write('open https://login/x\\n')\n"
                           "print(json.dumps({'status': {'token': 't'}}))\n")
    config = write(tmp_path / "config", current="x", clusters={"c": {"server": "http://h:1"}},
                   users={"u": {"exec": {"command": str(tmp_path / "bin" / "cred-plugin")}}},
                   contexts={"x": {"cluster": "c", "user": "u"}})
    assert kubeconfig.load(str(config), None).headers == {"Authorization": "Bearer t"}
    assert "open https://login/x" in capsys.readouterr().err
    _exec_plugin(tmp_path, "import time\ntime.sleep(60)\n")
    monkeypatch.setattr(kubeconfig, "EXEC_TIMEOUT_S", 0.5)
    with pytest.raises(ConfigError, match="gave no credential in"):
        kubeconfig.load(str(config), None)


def test_an_always_interactive_plugin_without_a_terminal_is_refused(tmp_path: Path) -> None:
    config = write(tmp_path / "config", current="x", clusters={"c": {"server": "http://h:1"}},
                   users={"u": {"exec": {"command": "whatever",
                                         "interactiveMode": "Always"}}},
                   contexts={"x": {"cluster": "c", "user": "u"}})
    with pytest.raises(ConfigError, match="needs a terminal"):
        kubeconfig.load(str(config), None)
