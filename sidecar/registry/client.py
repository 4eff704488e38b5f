"""A small client of the OCI distribution API: what the rootfs commit and restore need.

Why not oras-py (the maintained Python OCI client): its 0.2.x `put_upload` reads a whole blob
into memory, its retry decorator retries any failure (a refused password included) five times
with sleeps of up to 83 s, and `upload_manifest` always sends the OCI manifest media type, so a
docker schema2 image (what containerd keeps for docker-archive imports and most pulls) cannot be
extended as itself. This module streams blobs from files in both directions, verifies digests,
answers Basic and Bearer challenges once, and turns every failure into a typed error naming the
registry. Credentials and TLS trust come from sidecar/registry/credentials.py (`docker` package).
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast
from urllib.parse import urljoin

import requests

from sidecar.errors import (
    ImageNotFound,
    InvalidRequest,
    RegistryAuthFailed,
    RegistryError,
    RegistryUnreachable,
)
from sidecar.registry.credentials import RegistryAccess

MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
CHUNK = 1 << 20
DEFAULT_TOKEN_LIFETIME_S = 60.0
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_REF = re.compile(
    r"^(?:(?P<host>[a-zA-Z0-9.-]+(?::[0-9]+)?|\[[0-9a-fA-F:]+\](?::[0-9]+)?)/)?"
    r"(?P<repo>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


@dataclass(frozen=True)
class ImageReference:
    host: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, ref: str) -> ImageReference:
        """docker-style reference: [host[:port]/]repo[:tag][@sha256:...], docker.io default."""
        text = ref.strip()
        match = _REF.match(text)
        if not match:
            raise InvalidRequest(f"{ref!r} is not a valid image reference "
                                 "(expected [registry/]repository[:tag][@sha256:digest])")
        host = match.group("host")
        repo = match.group("repo")
        first = text.split("/", 1)[0]
        if host and "." not in host and ":" not in host and host != "localhost":
            # "cedana/helper" : the first part is a Docker Hub namespace, not a host
            repo, host = f"{host}/{repo}", None
        if host is None or first != host:
            host = "docker.io"
        if not _REPO.match(repo):
            raise InvalidRequest(f"{ref!r} is not a valid image reference (repository names "
                                 "are lowercase)")
        if host == "docker.io" and "/" not in repo:
            repo = f"library/{repo}"
        tag = match.group("tag")
        digest = match.group("digest")
        if tag is None and digest is None:
            tag = "latest"
        return cls(host, repo, tag, digest)

    @property
    def reference(self) -> str:
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        text = f"{self.host}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return scheme.lower(), params


def granted_actions(token: str, repository: str) -> set[str] | None:
    """The actions a registry token grants on `repository`, when it says so: the `access`
    claim of a JWT (docker distribution's token servers); None for opaque tokens."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("access"), list):
        return None
    return {str(action) for entry in payload["access"] if isinstance(entry, dict)
            and entry.get("type") == "repository" and entry.get("name") == repository
            for action in entry.get("actions") or []}


@dataclass
class _Token:
    value: str
    expires: float  # time.monotonic() after which it is not used any more


class RegistryClient:
    """Talks to one registry with the node's access settings.

    Authorization is per request and per scope: with a Bearer registry each scope
    (`repository:NAME:pull` or `...:pull,push`) has its own token, fetched when first needed
    and again shortly before it expires, so a token for pulling is never sent to push, and an
    upload longer than a token's life still closes with a valid one. Use it in a `with` block
    (or call close()): its connections are pooled."""

    def __init__(self, access: RegistryAccess, *, timeout: float = 120.0) -> None:
        self.access = access
        self.timeout = timeout
        self.session = requests.Session()
        self._scheme: tuple[str, dict[str, str]] | None = None
        self._tokens: dict[str, _Token] = {}
        self._lock = threading.Lock()

    # -- plumbing --------------------------------------------------------------------------
    def _url(self, path: str) -> str:
        return f"{self.access.endpoint}{path}"

    def _raw(self, method: str, url: str, **kw: Any) -> requests.Response:
        try:
            # verify per request: requests lets REQUESTS_CA_BUNDLE override a session's verify
            return self.session.request(method, url, timeout=self.timeout,
                                        allow_redirects=True, verify=self.access.verify, **kw)
        except requests.exceptions.SSLError as exc:
            raise RegistryUnreachable(
                f"TLS with registry {self.access.host} failed (trusting "
                f"{self.access.verify if isinstance(self.access.verify, str) else 'system CAs'}"
                f"): {exc}", registry=self.access.host) from exc
        except requests.RequestException as exc:
            raise RegistryUnreachable(
                f"cannot reach registry {self.access.host} at {self.access.endpoint}: {exc}",
                registry=self.access.host) from exc

    def _refused(self, response: requests.Response, scope: str = "") -> RegistryAuthFailed:
        if self.access.has_credentials:
            why = (f"refused the node's credentials (user {self.access.username or '<token>'} "
                   f"from {self.access.source})")
        else:
            why = ("requires credentials and the node has none for it (looked in the docker "
                   "and kubelet credential files and containerd's hosts.toml and registry "
                   "configuration)")
        wanted = f" for {scope}" if scope else ""
        return RegistryAuthFailed(f"registry {self.access.host} {why}{wanted}: HTTP "
                                  f"{response.status_code}", registry=self.access.host)

    def _challenge(self) -> tuple[str, dict[str, str]]:
        """How the registry wants to be authenticated: asked once with GET /v2/ (whose 200
        with credentials says nothing about what they may do in a repository)."""
        if self._scheme is None:
            response = self._raw("GET", self._url("/v2/"))
            if response.status_code == 200:
                self._scheme = ("none", {})
            elif response.status_code == 401:
                self._scheme = _challenge(response.headers.get("WWW-Authenticate", ""))
            else:
                raise RegistryError(f"registry {self.access.host} answered GET /v2/ with HTTP "
                                    f"{response.status_code}", registry=self.access.host)
        return self._scheme

    def _authorization(self, scope: str, *, fresh: bool = False) -> dict[str, str]:
        """The Authorization header for requests in `scope`."""
        scheme, params = self._challenge()
        if scheme == "none":
            return {}
        if scheme == "basic":
            if not self.access.has_credentials or self.access.identity_token:
                raise RegistryAuthFailed(
                    f"registry {self.access.host} asks for a user and password and the node has "
                    "none for it", registry=self.access.host)
            pair = f"{self.access.username or ''}:{self.access.password or ''}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        if scheme == "bearer" and params.get("realm"):
            with self._lock:
                token = None if fresh else self._cached(scope)
                if token is None:
                    token = self._tokens[scope] = self._token(params, scope)
            return {"Authorization": f"Bearer {token.value}"}
        raise RegistryError(f"registry {self.access.host} asks for unsupported "
                            f"authentication {scheme!r}", registry=self.access.host)

    def _cached(self, scope: str) -> _Token | None:
        """A token still valid for `scope`: its own, or one for more actions on the same
        repository (pushing includes pulling)."""
        kind, _, rest = scope.partition(":")
        repository, _, actions = rest.rpartition(":")
        now = time.monotonic()
        for held, token in self._tokens.items():
            held_kind, _, held_rest = held.partition(":")
            held_repository, _, held_actions = held_rest.rpartition(":")
            if (held_kind, held_repository) == (kind, repository) and now < token.expires and \
                    set(actions.split(",")) <= set(held_actions.split(",")):
                return token
        return None

    def authenticate(self, repository: str, actions: str = "pull") -> None:
        """Fail early, before any streamed request: credentials the registry refuses, or a
        token that does not grant `actions` on `repository`."""
        scope = f"repository:{repository}:{actions}"
        headers = self._authorization(scope)
        scheme, _params = self._challenge()
        if scheme == "bearer":
            granted = granted_actions(headers["Authorization"].split(" ", 1)[1], repository)
            missing = set(actions.split(",")) - (granted if granted is not None else set())
            if granted is not None and missing:
                raise RegistryAuthFailed(
                    f"registry {self.access.host} grants the node's credentials (from "
                    f"{self.access.source}) {', '.join(sorted(granted)) or 'nothing'} on "
                    f"{repository}, not {', '.join(sorted(missing))}", registry=self.access.host)
        elif scheme == "basic":
            check = self._raw("GET", self._url("/v2/"), headers=headers)
            if check.status_code in (401, 403):
                raise self._refused(check)

    def _token(self, params: dict[str, str], scope: str) -> _Token:
        query = {"scope": scope, **({"service": params["service"]} if "service" in params else {})}
        auth = None
        if self.access.identity_token:
            response = self._raw("POST", params["realm"], data={
                "grant_type": "refresh_token", "refresh_token": self.access.identity_token,
                "scope": scope, "service": params.get("service", ""), "client_id": "cedana"})
        else:
            if self.access.has_credentials:
                auth = (self.access.username or "", self.access.password or "")
            response = self._raw("GET", params["realm"], params=query, auth=auth)
        if response.status_code in (401, 403):
            raise self._refused(response, scope)
        if response.status_code != 200:
            raise RegistryError(f"token service of registry {self.access.host} answered HTTP "
                                f"{response.status_code}", registry=self.access.host)
        body = response.json()
        token = body.get("token") or body.get("access_token")
        if not token:
            raise RegistryError(f"token service of registry {self.access.host} gave no token",
                                registry=self.access.host)
        # the distribution spec's default lifetime; used until shortly before it ends
        lifetime = float(body.get("expires_in") or DEFAULT_TOKEN_LIFETIME_S)
        return _Token(str(token), time.monotonic() + lifetime - min(10.0, lifetime / 4))

    def _request(self, method: str, path: str, repository: str, actions: str,
                 **kw: Any) -> requests.Response:
        """One request in `repository`'s scope; a Bearer token the registry no longer takes
        (expired, revoked) is replaced once when the request can be sent again."""
        scope = f"repository:{repository}:{actions}"
        url = self._url(path) if path.startswith("/") else path
        headers = kw.pop("headers", {})
        response = self._raw(method, url, headers={**headers, **self._authorization(scope)}, **kw)
        data = kw.get("data")
        seekable = hasattr(data, "seek")
        replayable = data is None or isinstance(data, bytes) or seekable
        if response.status_code == 401 and replayable and \
                self._challenge()[0] == "bearer" and "insufficient_scope" not in \
                response.headers.get("WWW-Authenticate", ""):
            if seekable:
                cast(IO[bytes], data).seek(0)
            response.close()
            response = self._raw(method, url, headers={
                **headers, **self._authorization(scope, fresh=True)}, **kw)
        if response.status_code in (401, 403):
            response.close()
            raise self._refused(response, scope)
        return response

    def _fail(self, response: requests.Response, what: str) -> RegistryError:
        detail = response.text[:300].strip()
        return RegistryError(f"registry {self.access.host}: {what} failed with HTTP "
                             f"{response.status_code}: {detail}", registry=self.access.host)

    # -- API ---------------------------------------------------------------------------------
    def get_manifest(self, ref: ImageReference,
                     accept: tuple[str, ...] = MANIFEST_TYPES) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of the manifest that `ref` names."""
        response = self._request("GET", f"/v2/{ref.repository}/manifests/{ref.reference}",
                                 ref.repository, "pull", headers={"Accept": ", ".join(accept)})
        if response.status_code == 404:
            raise ImageNotFound(f"image {ref} is not in registry {ref.host}", image=str(ref))
        if response.status_code != 200:
            raise self._fail(response, f"GET manifest {ref}")
        body = response.content
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if ref.digest and ref.digest != digest:
            raise RegistryError(f"registry {ref.host} served a manifest for {ref} whose digest "
                                f"is {digest}", registry=ref.host)
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        return body, media_type, digest

    def has_blob(self, repository: str, digest: str) -> bool:
        response = self._request("HEAD", f"/v2/{repository}/blobs/{digest}", repository, "pull")
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise self._fail(response, f"HEAD blob {digest}")

    def upload_blob(self, repository: str, digest: str, size: int, data: IO[bytes] | bytes,
                    ) -> None:
        """Upload one blob (streamed from `data`) unless the repository already has it."""
        self.authenticate(repository, "pull,push")
        if self.has_blob(repository, digest):
            return
        start = self._request("POST", f"/v2/{repository}/blobs/uploads/", repository,
                              "pull,push", headers={"Content-Length": "0"})
        if start.status_code not in (201, 202) or "Location" not in start.headers:
            raise self._fail(start, f"starting the upload of {digest} to {repository}")
        location = urljoin(self._url("/"), start.headers["Location"])
        joiner = "&" if "?" in location else "?"
        done = self._request("PUT", f"{location}{joiner}digest={digest}", repository,
                             "pull,push", data=data,
                             headers={"Content-Type": "application/octet-stream",
                                      "Content-Length": str(size)})
        if done.status_code not in (201, 204):
            raise self._fail(done, f"uploading blob {digest} to {repository}")

    def download_blob(self, repository: str, digest: str, dest: Path) -> int:
        """Stream a blob into `dest`, verifying its digest; returns its size."""
        response = self._request("GET", f"/v2/{repository}/blobs/{digest}", repository, "pull",
                                 stream=True)
        if response.status_code == 404:
            raise ImageNotFound(f"blob {digest} is not in {self.access.host}/{repository}",
                                image=f"{self.access.host}/{repository}")
        if response.status_code != 200:
            raise self._fail(response, f"GET blob {digest}")
        hasher = hashlib.sha256()
        size = 0
        with response, open(dest, "wb") as out:
            for chunk in response.iter_content(CHUNK):
                hasher.update(chunk)
                out.write(chunk)
                size += len(chunk)
        if "sha256:" + hasher.hexdigest() != digest:
            dest.unlink(missing_ok=True)
            raise RegistryError(f"blob {digest} from registry {self.access.host} does not match "
                                "its digest", registry=self.access.host)
        return size

    def upload_stream(self, repository: str, chunks: Iterator[bytes]) -> tuple[str, int]:
        """Upload a blob whose size and digest are known only at its end: one streamed PATCH
        (chunked transfer encoding), then the closing PUT with the digest."""
        self.authenticate(repository, "pull,push")
        start = self._request("POST", f"/v2/{repository}/blobs/uploads/", repository,
                              "pull,push", headers={"Content-Length": "0"})
        if start.status_code not in (201, 202) or "Location" not in start.headers:
            raise self._fail(start, f"starting an upload to {repository}")
        hasher = hashlib.sha256()
        size = 0

        def counted() -> Iterator[bytes]:
            nonlocal size
            for chunk in chunks:
                hasher.update(chunk)
                size += len(chunk)
                yield chunk

        location = urljoin(self._url("/"), start.headers["Location"])
        sent = self._request("PATCH", location, repository, "pull,push", data=counted(),
                             headers={"Content-Type": "application/octet-stream"})
        if sent.status_code not in (202, 204):
            raise self._fail(sent, f"streaming a blob to {repository}")
        digest = "sha256:" + hasher.hexdigest()
        location = urljoin(self._url("/"), sent.headers.get("Location", location))
        joiner = "&" if "?" in location else "?"
        done = self._request("PUT", f"{location}{joiner}digest={digest}", repository,
                             "pull,push", headers={"Content-Length": "0"})
        if done.status_code not in (201, 204):
            raise self._fail(done, f"closing the upload of {digest} to {repository}")
        return digest, size

    def open_blob(self, repository: str, digest: str) -> requests.Response:
        """A streamed GET of a blob; the caller reads it and checks the digest."""
        response = self._request("GET", f"/v2/{repository}/blobs/{digest}", repository, "pull",
                                 stream=True)
        if response.status_code == 404:
            response.close()
            raise ImageNotFound(f"blob {digest} is not in {self.access.host}/{repository}",
                                image=f"{self.access.host}/{repository}")
        if response.status_code != 200:
            response.close()
            raise self._fail(response, f"GET blob {digest}")
        return response

    def tags(self, repository: str) -> list[str]:
        response = self._request("GET", f"/v2/{repository}/tags/list", repository, "pull")
        if response.status_code == 404:
            return []
        if response.status_code != 200:
            raise self._fail(response, f"listing the tags of {repository}")
        return sorted(response.json().get("tags") or [])

    def delete_manifest(self, repository: str, digest: str) -> bool:
        response = self._request("DELETE", f"/v2/{repository}/manifests/{digest}", repository,
                                 "pull,push,delete")
        if response.status_code in (200, 202):
            return True
        if response.status_code == 404:
            return False
        raise self._fail(response, f"deleting {repository}@{digest}")

    def put_manifest(self, ref: ImageReference, body: bytes, media_type: str) -> str:
        response = self._request("PUT", f"/v2/{ref.repository}/manifests/{ref.reference}",
                                 ref.repository, "pull,push", data=body,
                                 headers={"Content-Type": media_type})
        if response.status_code not in (200, 201):
            raise self._fail(response, f"PUT manifest {ref}")
        return response.headers.get("Docker-Content-Digest") or (
            "sha256:" + hashlib.sha256(body).hexdigest())

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
