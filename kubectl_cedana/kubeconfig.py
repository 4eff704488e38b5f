"""Read a kubeconfig and connect to its API server without the `kubernetes` package.

Importing the official client costs about 0.26 s, more than half of a small checkpoint's whole
time (issue 19). The kubeconfigs people use almost all take one of a few shapes: a server with
its CA (file or data, or insecure-skip-tls-verify), and a client certificate, a bearer token
(inline or tokenFile), basic auth, or an exec credential plugin (client-go's ExecCredential:
EKS, GKE's gke-gcloud-auth-plugin, AKS's kubelogin, OIDC helpers). Those are read here, with
kubectl's rules (KUBECONFIG's files merged, the first to set a name wins; relative paths from
the file that names them). Anything else, a legacy `auth-provider` or a proxy (`proxy-url`, or
HTTPS_PROXY in the environment), raises Unsupported and kube.py falls back to the official
client, which handles them. Python 3.9-compatible (the krew zipapp).
"""
from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubectl_cedana.errors import ConfigError

IN_CLUSTER_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
IN_CLUSTER_CA = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
IN_CLUSTER_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
EXEC_TIMEOUT_S = 120.0
_PROXY_ENV = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
              "all_proxy")


class Unsupported(Exception):
    """A kubeconfig this reader leaves to the official client (its words say why)."""


@dataclass
class Connection:
    """Where the API server is and how to reach it: what KubeClient needs."""

    host: str
    namespace: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    ssl_context: ssl.SSLContext | None = None  # None: plain http
    server_hostname: str | None = None  # tls-server-name
    source: str = "kubeconfig"


def config_paths(explicit: str | None) -> list[str]:
    """The files to read, as kubectl chooses them: --kubeconfig alone, else KUBECONFIG's
    existing files, else ~/.kube/config (empty when there is none)."""
    if explicit:
        if not os.path.exists(explicit):
            raise ConfigError(f"kubeconfig {explicit} does not exist")
        return [explicit]
    env = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    if env:
        return [p for p in env if os.path.exists(p)]
    default = os.path.expanduser("~/.kube/config")
    return [default] if os.path.exists(default) else []


def _read(path: str) -> dict[str, Any]:
    import yaml  # only here: 20 ms

    try:
        with open(path, encoding="utf-8") as fh:
            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            doc = yaml.load(fh, Loader=loader)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"kubeconfig {path}: {exc}") from exc
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"kubeconfig {path}: not a mapping")
    return doc


@dataclass
class _Named:
    value: dict[str, Any]
    base_dir: str  # the directory of the file that defined it: relative paths start there


def merged(paths: list[str]) -> tuple[str, dict[str, dict[str, _Named]]]:
    """current-context and the clusters, users and contexts of `paths`, merged as kubectl
    merges them: the first file to set current-context or to define a name wins."""
    current = ""
    sections: dict[str, dict[str, _Named]] = {"clusters": {}, "users": {}, "contexts": {}}
    singular = {"clusters": "cluster", "users": "user", "contexts": "context"}
    for path in paths:
        doc = _read(path)
        base = os.path.dirname(os.path.abspath(path))
        if not current and doc.get("current-context"):
            current = str(doc["current-context"])
        for section, key in singular.items():
            for entry in doc.get(section) or []:
                if not isinstance(entry, dict) or not entry.get("name"):
                    continue
                sections[section].setdefault(str(entry["name"]),
                                             _Named(dict(entry.get(key) or {}), base))
    return current, sections


def load(explicit: str | None, context: str | None) -> Connection:
    """The connection the kubeconfig (or, without one, the pod's service account) gives.
    Raises ConfigError for a broken configuration, Unsupported for one left to the official
    client."""
    paths = config_paths(explicit)
    if not paths:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            return in_cluster()
        raise ConfigError("no kubeconfig found", hint="set KUBECONFIG or pass --kubeconfig")
    current, sections = merged(paths)
    name = context or current
    if not name:
        raise ConfigError("kubeconfig has no current-context", hint="pass --context")
    ctx = sections["contexts"].get(name)
    if ctx is None:
        raise ConfigError(f"kubeconfig: context {name!r} not found")
    cluster = sections["clusters"].get(str(ctx.value.get("cluster") or ""))
    if cluster is None:
        raise ConfigError(f"kubeconfig: context {name!r} names cluster "
                          f"{ctx.value.get('cluster')!r}, which is not defined")
    user = sections["users"].get(str(ctx.value.get("user") or ""), _Named({}, ctx.base_dir))
    return connect(cluster, user, namespace=ctx.value.get("namespace") or None)


def _path(named: _Named, value: str) -> str:
    value = os.path.expanduser(value)
    return value if os.path.isabs(value) else os.path.join(named.base_dir, value)


def _pem(named: _Named, data_key: str, file_key: str) -> bytes | None:
    """The PEM bytes a kubeconfig gives inline (base64 `*-data`) or by file."""
    data = named.value.get(data_key)
    if data:
        try:
            return base64.b64decode(str(data), validate=False)
        except ValueError as exc:
            raise ConfigError(f"kubeconfig: {data_key} is not base64: {exc}") from exc
    path = named.value.get(file_key)
    if path:
        try:
            with open(_path(named, str(path)), "rb") as fh:
                return fh.read()
        except OSError as exc:
            raise ConfigError(f"kubeconfig: {file_key} {path}: {exc}") from exc
    return None


def _uses_proxy(server: str) -> bool:
    if not any(os.environ.get(name) for name in _PROXY_ENV):
        return False
    import urllib.request

    host = server.split("://", 1)[-1].split("/", 1)[0]
    bypass: Any = getattr(urllib.request, "proxy_bypass_environment")  # noqa: B009 - untyped
    return not bypass(host)


def connect(cluster: _Named, user: _Named, *, namespace: str | None) -> Connection:
    server = str(cluster.value.get("server") or "").rstrip("/")
    if not server:
        raise ConfigError("kubeconfig: the cluster has no server")
    if cluster.value.get("proxy-url") or _uses_proxy(server):
        raise Unsupported("a proxy")
    if user.value.get("auth-provider"):
        raise Unsupported(f"auth-provider {user.value['auth-provider'].get('name', '')!r}")
    headers: dict[str, str] = {}
    cert = _pem(user, "client-certificate-data", "client-certificate")
    key = _pem(user, "client-key-data", "client-key")
    token = user.value.get("token")
    if not token and user.value.get("tokenFile"):
        try:
            with open(_path(user, str(user.value["tokenFile"])), encoding="utf-8") as fh:
                token = fh.read().strip()
        except OSError as exc:
            raise ConfigError(f"kubeconfig: tokenFile: {exc}") from exc
    if user.value.get("exec"):
        credential = exec_credential(user, server, cluster)
        token = credential.get("token") or token
        if credential.get("clientCertificateData"):
            cert = str(credential["clientCertificateData"]).encode()
            key = str(credential.get("clientKeyData") or "").encode()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    elif user.value.get("username"):
        pair = f"{user.value['username']}:{user.value.get('password') or ''}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    context = None
    if server.startswith("https://"):
        context = tls_context(ca=_pem(cluster, "certificate-authority-data",
                                      "certificate-authority"),
                              insecure=bool(cluster.value.get("insecure-skip-tls-verify")),
                              cert=cert, key=key)
    return Connection(host=server, namespace=namespace, headers=headers, ssl_context=context,
                      server_hostname=cluster.value.get("tls-server-name") or None)


def tls_context(*, ca: bytes | None, insecure: bool, cert: bytes | None,
                key: bytes | None) -> ssl.SSLContext:
    # with a CA of its own, only that CA is trusted (as client-go and kubectl do); without
    # one, the system's
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT) if ca and not insecure \
        else ssl.create_default_context()
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif ca:
        try:
            context.load_verify_locations(cadata=ca.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"kubeconfig: the certificate authority is unusable: {exc}") \
                from exc
    if cert:
        if not key:
            raise ConfigError("kubeconfig: a client certificate without its key")
        load_client_pair(context, cert, key)
    return context


def load_client_pair(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """ssl loads a certificate and key only from files: a private directory, removed as soon
    as they are read (the key never outlives this call on disk)."""
    with tempfile.TemporaryDirectory(prefix="kubectl-cedana-") as tmp:
        cert_path, key_path = os.path.join(tmp, "tls.crt"), os.path.join(tmp, "tls.key")
        for path, data in ((cert_path, cert), (key_path, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        try:
            context.load_cert_chain(cert_path, key_path)
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"kubeconfig: the client certificate or key is unusable: "
                              f"{exc}") from exc


def exec_credential(user: _Named, server: str, cluster: _Named) -> dict[str, Any]:
    """Run the user's exec credential plugin (client-go's protocol) and return its status:
    token, or clientCertificateData and clientKeyData."""
    spec: Mapping[str, Any] = user.value["exec"]
    command = str(spec.get("command") or "")
    if not command:
        raise ConfigError("kubeconfig: exec has no command")
    if os.sep in command and not os.path.isabs(command):
        command = _path(user, command)  # as client-go: relative to the kubeconfig's folder
    api_version = str(spec.get("apiVersion") or "client.authentication.k8s.io/v1")
    # as client-go: stdin is the plugin's when it may ask (a terminal, and not "Never")
    mode = str(spec.get("interactiveMode") or "IfAvailable")
    interactive = mode != "Never" and sys.stdin is not None and sys.stdin.isatty()
    if mode == "Always" and not interactive:
        raise ConfigError(f"kubeconfig: exec plugin {command} needs a terminal "
                          "(interactiveMode: Always)")
    info: dict[str, Any] = {"apiVersion": api_version, "kind": "ExecCredential",
                            "spec": {"interactive": interactive}}
    if spec.get("provideClusterInfo"):
        cluster_info: dict[str, Any] = {"server": server}
        ca = cluster.value.get("certificate-authority-data")
        if ca:
            cluster_info["certificate-authority-data"] = ca
        if cluster.value.get("tls-server-name"):
            cluster_info["tls-server-name"] = cluster.value["tls-server-name"]
        if cluster.value.get("insecure-skip-tls-verify"):
            cluster_info["insecure-skip-tls-verify"] = True
        extensions = (cluster.value.get("extensions") or [])
        for ext in extensions:
            if isinstance(ext, dict) and ext.get("name") == "client.authentication.k8s.io/exec":
                cluster_info["config"] = ext.get("extension")
        info["spec"]["cluster"] = cluster_info
    env = dict(os.environ)
    for item in spec.get("env") or []:
        if isinstance(item, dict) and item.get("name"):
            env[str(item["name"])] = str(item.get("value") or "")
    env["KUBERNETES_EXEC_INFO"] = json.dumps(info)
    argv = [command, *[str(a) for a in spec.get("args") or []]]
    try:
        proc = subprocess.Popen(argv, env=env,
                                stdin=None if interactive else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError as exc:
        hint = str(spec.get("installHint") or "") or None
        raise ConfigError(f"kubeconfig: exec plugin {command}: not found", hint=hint) from exc
    except OSError as exc:
        raise ConfigError(f"kubeconfig: exec plugin {command}: {exc}") from exc
    # what it says on stderr (a login URL, a device code) reaches the user as it comes, as
    # with kubectl; its last line also goes into the error if it fails
    said: list[str] = []
    relay = threading.Thread(target=_relay_stderr, args=(proc, said), daemon=True)
    relay.start()
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        proc.kill()

    timer = threading.Timer(EXEC_TIMEOUT_S, expire)
    timer.start()
    try:
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.wait()
    finally:
        timer.cancel()
        relay.join(5)
    if expired.is_set():
        raise ConfigError(f"kubeconfig: exec plugin {command} gave no credential in "
                          f"{EXEC_TIMEOUT_S:.0f} s")
    if proc.returncode != 0:
        raise ConfigError(f"kubeconfig: exec plugin {command} exited {proc.returncode}"
                          + (f": {said[-1]}" if said else ""))
    try:
        answer = json.loads(out.decode("utf-8"))
        status = dict(answer.get("status") or {})
    except (ValueError, AttributeError, TypeError) as exc:
        raise ConfigError(f"kubeconfig: exec plugin {command} printed no ExecCredential: "
                          f"{exc}") from exc
    if not status.get("token") and not status.get("clientCertificateData"):
        raise ConfigError(f"kubeconfig: exec plugin {command} gave neither a token nor a "
                          "client certificate")
    return status


def _relay_stderr(proc: subprocess.Popen[bytes], said: list[str]) -> None:
    assert proc.stderr is not None
    for raw in proc.stderr:
        line = raw.decode("utf-8", "replace")
        sys.stderr.write(line)
        sys.stderr.flush()
        if line.strip():
            said.append(line.strip())


def in_cluster() -> Connection:
    """The pod's service account, as client-go's in-cluster configuration reads it."""
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if _uses_proxy(host):
        raise Unsupported("a proxy")
    try:
        with open(IN_CLUSTER_TOKEN, encoding="utf-8") as fh:
            token = fh.read().strip()
        with open(IN_CLUSTER_CA, "rb") as fh:
            ca = fh.read()
    except OSError as exc:
        raise ConfigError(f"in-cluster configuration: {exc}") from exc
    namespace = None
    if os.path.exists(IN_CLUSTER_NAMESPACE):
        with open(IN_CLUSTER_NAMESPACE, encoding="utf-8") as fh:
            namespace = fh.read().strip() or None
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    return Connection(host=server, namespace=namespace,
                      headers={"Authorization": f"Bearer {token}"},
                      ssl_context=tls_context(ca=ca, insecure=False, cert=None, key=None),
                      source="in-cluster")
