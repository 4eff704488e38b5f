"""How this node reaches a registry: its address, TLS trust and credentials, found where the
node's own tools keep them.

Credentials come from docker-style config files, the kubelet's own pull credentials among
them (the `docker` package resolves `auths`, `credHelpers` and `credsStore` exactly as the
docker CLI does, running the `docker-credential-*` helper when one is named), then from a
static `Authorization: Basic` header in containerd's `certs.d/HOST/hosts.toml`, then from
containerd 1.x's CRI `registry.configs."HOST".auth` (removed in containerd 2.4). TLS trust comes
from `hosts.toml` (`ca`, `skip_verify`; the directories of the CRI images plugin's
`config_path`, by default /etc/containerd/certs.d and /etc/docker/certs.d, then `_default`),
from the 1.x `registry.configs."HOST".tls`, and from the `certs.d/HOST/*.crt` directories docker
and podman read. The CRI plugin is found under its configuration version 3 ID
(`io.containerd.cri.v1.images`, containerd 2.x) or its version 2 one
(`io.containerd.grpc.v1.cri`). A `server` or mirror endpoint with `http://` makes the registry
plain HTTP, as it does for containerd.
"""
from __future__ import annotations

import base64
import logging
import os
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

# the CRI plugin's registry section: containerd 2.x (config version 3), then 1.x (version 2)
CRI_IMAGES_PLUGINS = ("io.containerd.cri.v1.images", "io.containerd.grpc.v1.cri", "cri")
# where containerd looks for certs.d/HOST/hosts.toml when config_path is not set
DEFAULT_HOSTS_DIRS = (Path("/etc/containerd/certs.d"), Path("/etc/docker/certs.d"))
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
    for plugin_id in CRI_IMAGES_PLUGINS:
        section = plugins.get(plugin_id)
        registry = section.get("registry") if isinstance(section, dict) else None
        if isinstance(registry, dict):
            return registry
    return {}


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


@dataclass(frozen=True)
class HostsFile:
    """certs.d/HOST/hosts.toml: what containerd itself uses for HOST."""

    directory: Path
    data: dict[str, Any]

    def sections(self) -> list[dict[str, Any]]:
        """The `[host."URL"]` sections, then the top level (the `server` settings)."""
        hosts = self.data.get("host") or {}
        if not isinstance(hosts, dict):
            return [self.data]
        return [*(v for v in hosts.values() if isinstance(v, dict)), self.data]

    def path(self, value: str) -> Path:
        """A file named in hosts.toml: relative names are below its directory."""
        return Path(value) if os.path.isabs(value) else self.directory / value


def _hosts_toml(host: str, dirs: list[Path]) -> HostsFile | None:
    for name in (host, "_default"):
        for directory in dirs:
            data = _load_toml(directory / name / "hosts.toml")
            if data:
                return HostsFile(directory / name, data)
    return None


def _hosts_credentials(hosts: HostsFile | None) -> dict[str, Any] | None:
    """A static `Authorization: Basic ...` header of hosts.toml, as a docker-style entry."""
    for section in hosts.sections() if hosts else []:
        headers = section.get("header") or {}
        value = next((v for k, v in headers.items() if k.lower() == "authorization"), None) \
            if isinstance(headers, dict) else None
        value = value[0] if isinstance(value, list) and value else value
        if isinstance(value, str) and value.lower().startswith("basic "):
            return {"auth": value.split(None, 1)[1].strip()}
    return None


def _ca_file(host: str, settings: NodeRegistrySettings, registry: dict[str, Any],
             hosts: HostsFile | None) -> str | bool:
    tls = ((registry.get("configs") or {}).get(host) or {}).get("tls") or {}
    if tls.get("insecure_skip_verify"):
        return False
    if tls.get("ca_file") and Path(tls["ca_file"]).is_file():
        return str(tls["ca_file"])
    for section in hosts.sections() if hosts else []:
        if section.get("skip_verify"):
            return False
        ca = section.get("ca")
        ca = ca[0] if isinstance(ca, list) and ca else ca
        if isinstance(ca, str) and hosts is not None and hosts.path(ca).is_file():
            return str(hosts.path(ca))
    for directory in settings.certs_dirs:
        host_dir = directory / host
        if host_dir.is_dir():
            for candidate in sorted(host_dir.glob("*.crt")):
                return str(candidate)
    return True


def _endpoint(host: str, registry: dict[str, Any], hosts: HostsFile | None) -> str:
    if host in DOCKER_HUB_ALIASES:
        return "https://registry-1.docker.io"
    mirrors = registry.get("mirrors") or {}
    endpoints = (mirrors.get(host) or {}).get("endpoint") or []
    for endpoint in endpoints:
        if isinstance(endpoint, str) and endpoint.rstrip("/").split("://")[-1] == host:
            return endpoint.rstrip("/")
    server = hosts.data.get("server") if hosts else None
    if isinstance(server, str) and server.split("://")[-1].rstrip("/") == host:
        return server.rstrip("/")
    return f"https://{host}"


def node_access(host: str, settings: NodeRegistrySettings) -> RegistryAccess:
    """Everything this node's own tools would use to talk to registry `host`."""
    containerd = _load_toml(settings.containerd_config)
    registry = _cri_registry(containerd)
    config_path = registry.get("config_path")
    hosts_dirs = [Path(p) for p in str(config_path).split(":") if p] if config_path else []
    hosts_dirs += [d for d in DEFAULT_HOSTS_DIRS if d not in hosts_dirs]
    hosts = _hosts_toml(host, hosts_dirs)
    endpoint = _endpoint(host, registry, hosts)
    verify = _ca_file(host, settings, registry, hosts)
    found = _docker_credentials(host, settings.docker_configs)
    if found is not None:
        user, password, token = _from_docker_entry(found[0])
        return RegistryAccess(host, endpoint, verify, user, password, token, found[1])
    header = _hosts_credentials(hosts)
    if header is not None and hosts is not None:
        user, password, token = _from_docker_entry(header)
        return RegistryAccess(host, endpoint, verify, user, password, token,
                              f"{hosts.directory / 'hosts.toml'} (Authorization header)")
    entry = _containerd_credentials(host, registry)
    if entry is not None:
        user, password, token = _from_docker_entry(entry)
        return RegistryAccess(host, endpoint, verify, user, password, token,
                              f"{settings.containerd_config} (registry.configs)")
    return RegistryAccess(host, endpoint, verify)
