"""How this node reaches a registry: its address, TLS trust and credentials, found where the
node's own tools keep them.

Credentials come from docker-style config files (the `docker` package resolves `auths`,
`credHelpers` and `credsStore` exactly as the docker CLI does, running the
`docker-credential-*` helper when one is named), then from containerd's CRI registry
configuration (`registry.configs."HOST".auth`). TLS trust comes from containerd's
`registry.configs."HOST".tls`, its `certs.d/HOST/hosts.toml`, and the `certs.d/HOST/*.crt`
directories docker and podman read. A containerd mirror endpoint with `http://` makes the
registry plain HTTP, as it does for containerd.
"""
from __future__ import annotations

import base64
import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docker import auth as docker_auth
from docker.errors import DockerException

# where the node keeps them is the helper's configuration (sidecar/config.py); the names stay
# importable from here
from sidecar.config import (
    DEFAULT_CERTS_DIRS,
    DEFAULT_CONTAINERD_CONFIG,
    DEFAULT_DOCKER_CONFIGS,
    NodeRegistrySettings,
)
from sidecar.errors import RegistryAuthFailed

__all__ = ["DEFAULT_CERTS_DIRS", "DEFAULT_CONTAINERD_CONFIG", "DEFAULT_DOCKER_CONFIGS",
           "NodeRegistrySettings", "RegistryAccess", "node_access"]

log = logging.getLogger(__name__)

CRI_PLUGIN = "io.containerd.grpc.v1.cri"
DOCKER_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io"}


@dataclass(frozen=True)
class RegistryAccess:
    host: str  # as written in image references, e.g. "127.0.0.1:5000"
    endpoint: str  # scheme://host[:port] the requests go to
    verify: bool | str = True  # a CA bundle path, or whether to verify at all
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    identity_token: str | None = field(default=None, repr=False)
    source: str = "no credentials"  # where the credentials came from, for messages

    @property
    def has_credentials(self) -> bool:
        return bool(self.identity_token or (self.username and self.password is not None))


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        log.warning("ignoring unreadable containerd config %s: %s", path, exc)
        return {}


def _cri_registry(containerd: dict[str, Any]) -> dict[str, Any]:
    plugins = containerd.get("plugins") or {}
    cri = plugins.get(CRI_PLUGIN) or plugins.get("cri") or {}
    registry = cri.get("registry") or {}
    return registry if isinstance(registry, dict) else {}


def _decode_auth(value: str) -> tuple[str, str] | None:
    try:
        user, _, password = base64.b64decode(value).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return (user, password) if user else None


def _docker_credentials(host: str, paths: tuple[Path, ...]) -> tuple[dict[str, Any], str] | None:
    names = [host] + (sorted(DOCKER_HUB_ALIASES - {host}) if host in DOCKER_HUB_ALIASES else [])
    for path in paths:
        if not path.is_file():
            continue
        try:
            config = docker_auth.load_config(config_path=str(path))
        except (OSError, ValueError, DockerException) as exc:
            log.warning("ignoring unreadable docker config %s: %s", path, exc)
            continue
        for name in names:
            try:
                entry = docker_auth.resolve_authconfig(config, registry=name)
            except DockerException as exc:
                raise RegistryAuthFailed(
                    f"cannot get the node's credentials for registry {host} from {path}: {exc}",
                    registry=host) from exc
            if entry:
                how = "credential helper" if (config.creds_store or config.cred_helpers) and (
                    "Username" in entry or "Secret" in entry) else "auths"
                return entry, f"{path} ({how})"
    return None


def _from_docker_entry(entry: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    lower = {k.lower(): v for k, v in entry.items()}
    token = lower.get("identitytoken") or None
    user = lower.get("username") or None
    password = lower.get("password") or lower.get("secret")
    if not user and lower.get("auth"):
        decoded = _decode_auth(str(lower["auth"]))
        if decoded:
            user, password = decoded
    if user == "<token>" and password:  # the credential-helper convention for tokens
        return None, None, str(password)
    return user, password, token


def _containerd_credentials(host: str, registry: dict[str, Any]) -> dict[str, Any] | None:
    configs = registry.get("configs") or {}
    entry = (configs.get(host) or {}).get("auth") if isinstance(configs, dict) else None
    return entry if isinstance(entry, dict) and entry else None


def _hosts_toml(host: str, dirs: list[Path]) -> dict[str, Any]:
    for directory in dirs:
        data = _load_toml(directory / host / "hosts.toml")
        if data:
            return data
    return {}


def _ca_file(host: str, settings: NodeRegistrySettings, registry: dict[str, Any],
             hosts: dict[str, Any]) -> str | bool:
    tls = ((registry.get("configs") or {}).get(host) or {}).get("tls") or {}
    if tls.get("insecure_skip_verify"):
        return False
    if tls.get("ca_file") and Path(tls["ca_file"]).is_file():
        return str(tls["ca_file"])
    for section in (hosts.get("host") or {}).values():
        if isinstance(section, dict):
            if section.get("skip_verify"):
                return False
            ca = section.get("ca")
            ca = ca[0] if isinstance(ca, list) and ca else ca
            if isinstance(ca, str) and Path(ca).is_file():
                return ca
    for directory in settings.certs_dirs:
        host_dir = directory / host
        if host_dir.is_dir():
            for candidate in sorted(host_dir.glob("*.crt")):
                return str(candidate)
    return True


def _endpoint(host: str, registry: dict[str, Any], hosts: dict[str, Any]) -> str:
    if host in DOCKER_HUB_ALIASES:
        return "https://registry-1.docker.io"
    mirrors = registry.get("mirrors") or {}
    endpoints = (mirrors.get(host) or {}).get("endpoint") or []
    for endpoint in endpoints:
        if isinstance(endpoint, str) and endpoint.rstrip("/").split("://")[-1] == host:
            return endpoint.rstrip("/")
    server = hosts.get("server")
    if isinstance(server, str) and server.split("://")[-1].rstrip("/") == host:
        return server.rstrip("/")
    return f"https://{host}"


def node_access(host: str, settings: NodeRegistrySettings) -> RegistryAccess:
    """Everything this node's own tools would use to talk to registry `host`."""
    containerd = _load_toml(settings.containerd_config)
    registry = _cri_registry(containerd)
    config_path = registry.get("config_path")
    hosts_dirs = [Path(p) for p in str(config_path).split(":") if p] if config_path else []
    hosts_dirs.append(Path("/etc/containerd/certs.d"))
    hosts = _hosts_toml(host, hosts_dirs)
    endpoint = _endpoint(host, registry, hosts)
    verify = _ca_file(host, settings, registry, hosts)
    found = _docker_credentials(host, settings.docker_configs)
    if found is not None:
        user, password, token = _from_docker_entry(found[0])
        return RegistryAccess(host, endpoint, verify, user, password, token, found[1])
    entry = _containerd_credentials(host, registry)
    if entry is not None:
        user, password, token = _from_docker_entry(entry)
        return RegistryAccess(host, endpoint, verify, user, password, token,
                              f"{settings.containerd_config} (registry.configs)")
    return RegistryAccess(host, endpoint, verify)
