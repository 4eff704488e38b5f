"""A small client of the OCI distribution API: what the rootfs commit and restore need.

Why not oras-py (the maintained Python OCI client): its 0.2.x `put_upload` reads a whole blob
into memory, its retry decorator retries any failure (a refused password included) five times
with sleeps of up to 83 s, and `upload_manifest` always sends the OCI manifest media type, so a
docker schema2 image (what containerd keeps for docker-archive imports and most pulls) cannot be
extended as itself. This module streams blobs from files in both directions, verifies digests,
answers Basic and Bearer challenges once, and turns every failure into a typed error naming the
registry. Credentials and TLS trust come from sidecar/registry/credentials.py (`docker` package).

What the node's credentials may reach (docs/security.md): a Bearer token service (`realm`) must
be on the registry's own scheme, host and port (any path; Docker Hub's auth.docker.io is the one
exception), else the registry is refused before anything is sent. Redirects are followed by
hand, for GET and HEAD only, at most MAX_REDIRECTS hops, each to https or the registry's own
scheme; from the first hop that leaves the registry's scheme, host and port on, no
Authorization goes with them (blob storage behind a registry gets a presigned URL, not the
node's token). Every body read from a registry is bounded, and what a registry says in an error
body never reaches our messages: the HTTP status, a fixed reason, and the error codes of the
distribution spec it names.
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
from urllib.parse import urljoin, urlsplit

import requests

from sidecar.errors import (
    ContentTooLarge,
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
MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: the most bytes read of each kind of answer
MAX_MANIFEST_BYTES = 4 << 20  # the distribution registry's own limit
MAX_CONFIG_BYTES = 16 << 20  # an image config (a checkpoint's holds its signed manifest)
MAX_TOKEN_BYTES = 1 << 20
MAX_TAGS_BYTES = 16 << 20
MAX_ERROR_BYTES = 64 << 10
#: token services on another host than their registry's that are known to be its own
KNOWN_TOKEN_SERVICES = {"https://registry-1.docker.io:443": {"https://auth.docker.io:443"}}
#: the error codes of the OCI distribution spec: the only words of an error body we repeat
OCI_ERROR_CODES = frozenset({
    "BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "NAME_INVALID",
    "NAME_UNKNOWN", "SIZE_INVALID", "UNAUTHORIZED", "DENIED", "UNSUPPORTED", "TOOMANYREQUESTS",
})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
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


def origin(url: str) -> str:
    """scheme://host:port of a URL, the port always written ("" when it has no host)."""
    try:
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return ""
    if not parts.hostname or port is None:
        return ""
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    return f"{parts.scheme.lower()}://{host}:{port}"


def _printable(text: str, limit: int = 80) -> str:
    """Something a registry sent, fit to quote in a message: a name, never prose."""
    return re.sub(r"[^A-Za-z0-9.:/_\[\]-]", "?", text[:limit])


def oci_error_codes(body: bytes) -> list[str]:
    """The distribution spec's error codes in an error body (nothing else of it)."""
    try:
        errors = json.loads(body).get("errors")
    except (ValueError, AttributeError):
        return []
    found: list[str] = []
    for entry in errors if isinstance(errors, list) else []:
        code = entry.get("code") if isinstance(entry, dict) else None
        if code in OCI_ERROR_CODES and code not in found:
            found.append(code)
    return found[:3]


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

    def _own(self, url: str) -> bool:
        """Whether `url` is on the registry's own scheme, host and port."""
        return origin(url) == origin(self.access.endpoint)

    def _raw(self, method: str, url: str, **kw: Any) -> requests.Response:
        """One HTTP exchange, no redirects followed; the body is streamed (read it bounded,
        and close the response)."""
        try:
            # verify per request: requests lets REQUESTS_CA_BUNDLE override a session's verify
            return self.session.request(method, url, timeout=self.timeout, stream=True,
                                        allow_redirects=False, verify=self.access.verify, **kw)
        except requests.exceptions.SSLError as exc:
            if not self._own(url):
                raise RegistryUnreachable(
                    f"TLS with {_printable(origin(url))}, where registry {self.access.host} "
                    f"redirected, failed ({type(exc).__name__})",
                    registry=self.access.host) from exc
            raise RegistryUnreachable(
                f"TLS with registry {self.access.host} failed (trusting "
                f"{self.access.verify if isinstance(self.access.verify, str) else 'system CAs'}"
                f"): {exc}", registry=self.access.host) from exc
        except requests.RequestException as exc:
            if not self._own(url):
                raise RegistryUnreachable(
                    f"cannot reach {_printable(origin(url))}, where registry "
                    f"{self.access.host} redirected ({type(exc).__name__})",
                    registry=self.access.host) from exc
            raise RegistryUnreachable(
                f"cannot reach registry {self.access.host} at {self.access.endpoint}: {exc}",
                registry=self.access.host) from exc

    def _send(self, method: str, url: str, *, headers: dict[str, str] | None = None,
              auth: tuple[str, str] | None = None, **kw: Any) -> requests.Response:
        """A request, its redirects followed by hand: GET and HEAD only, to https or the
        registry's own scheme, and from the first hop off the registry's origin on without
        the node's credentials."""
        headers = dict(headers or {})
        for _hop in range(MAX_REDIRECTS + 1):
            if not self._own(url):  # never the node's credentials to another host
                headers.pop("Authorization", None)
                auth = None
            response = self._raw(method, url, headers=headers, auth=auth, **kw)
            location = response.headers.get("Location")
            if response.status_code not in REDIRECT_STATUSES or not location or \
                    method not in ("GET", "HEAD"):
                return response
            response.close()
            target = urljoin(url, location)
            scheme = urlsplit(target).scheme.lower()
            allowed = {"https", urlsplit(self.access.endpoint).scheme.lower()}
            if scheme not in allowed or not origin(target):
                raise RegistryError(
                    f"registry {self.access.host} redirected {method} to a {_printable(scheme)}:"
                    f" URL; only {' or '.join(sorted(allowed))} is followed",
                    registry=self.access.host)
            url = target
        raise RegistryError(f"registry {self.access.host} redirected {method} more than "
                            f"{MAX_REDIRECTS} times", registry=self.access.host)

    def _read(self, response: requests.Response, limit: int, what: str) -> bytes:
        """The whole body, at most `limit` bytes (ContentTooLarge beyond); closes it."""
        data = bytearray()
        try:
            for chunk in response.iter_content(64 << 10):
                data += chunk
                if len(data) > limit:
                    raise ContentTooLarge(
                        f"registry {self.access.host} sent more than {limit} bytes for {what}",
                        limit_bytes=limit, registry=self.access.host)
        except requests.RequestException as exc:
            raise RegistryUnreachable(f"registry {self.access.host}: reading {what} failed: "
                                      f"{type(exc).__name__}", registry=self.access.host) from exc
        finally:
            response.close()
        return bytes(data)

    def _discard(self, response: requests.Response) -> None:
        """Done with an answer whose body is not needed: read what little there should be (so
        the connection serves again), else drop the connection."""
        try:
            self._read(response, MAX_ERROR_BYTES, "an answer")
        except (ContentTooLarge, RegistryUnreachable):
            pass

    def _refused(self, response: requests.Response, scope: str = "") -> RegistryAuthFailed:
        self._discard(response)
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

    def _check_realm(self, realm: str) -> None:
        """A token service elsewhere than on the registry's own origin never gets a request:
        it would get the node's credentials for this registry."""
        own = origin(self.access.endpoint)
        theirs = origin(realm)
        if theirs and (theirs == own or theirs in KNOWN_TOKEN_SERVICES.get(own, set())):
            return
        raise RegistryAuthFailed(
            f"registry {self.access.host} names a token service on another host "
            f"({_printable(theirs) or 'an unusable URL'}); the helper sends the node's "
            f"credentials for {self.access.host} only to {own} (docs/security.md)",
            registry=self.access.host)

    def _challenge(self) -> tuple[str, dict[str, str]]:
        """How the registry wants to be authenticated: asked once with GET /v2/ (whose 200
        with credentials says nothing about what they may do in a repository)."""
        if self._scheme is None:
            response = self._send("GET", self._url("/v2/"))
            header = response.headers.get("WWW-Authenticate", "")
            status = response.status_code
            self._discard(response)
            if status == 200:
                self._scheme = ("none", {})
            elif status == 401:
                scheme, params = _challenge(header)
                if scheme == "bearer" and params.get("realm"):
                    self._check_realm(params["realm"])
                self._scheme = (scheme, params)
            else:
                raise RegistryError(f"registry {self.access.host} answered GET /v2/ with HTTP "
                                    f"{status}", registry=self.access.host)
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
                            f"authentication {_printable(scheme, 20)!r}",
                            registry=self.access.host)

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
                named = sorted(_printable(a, 16) for a in granted)[:8]
                raise RegistryAuthFailed(
                    f"registry {self.access.host} grants the node's credentials (from "
                    f"{self.access.source}) {', '.join(named) or 'nothing'} on "
                    f"{repository}, not {', '.join(sorted(missing))}", registry=self.access.host)
        elif scheme == "basic":
            check = self._send("GET", self._url("/v2/"), headers=headers)
            if check.status_code in (401, 403):
                raise self._refused(check)
            self._discard(check)

    def _token(self, params: dict[str, str], scope: str) -> _Token:
        realm = params["realm"]
        self._check_realm(realm)
        query = {"scope": scope, **({"service": params["service"]} if "service" in params else {})}
        auth = None
        if self.access.identity_token:
            # a POST: never redirected, so the refresh token goes to the realm only
            response = self._send("POST", realm, data={
                "grant_type": "refresh_token", "refresh_token": self.access.identity_token,
                "scope": scope, "service": params.get("service", ""), "client_id": "cedana"})
        else:
            if self.access.has_credentials:
                auth = (self.access.username or "", self.access.password or "")
            response = self._send("GET", realm, params=query, auth=auth)
        if response.status_code in (401, 403):
            raise self._refused(response, scope)
        if response.status_code != 200:
            raise self._fail(response, "the token request", service="token service of ")
        try:
            body = json.loads(self._read(response, MAX_TOKEN_BYTES, "a token"))
            token = body.get("token") or body.get("access_token")
            # the distribution spec's default lifetime; used until shortly before it ends
            lifetime = float(body.get("expires_in") or DEFAULT_TOKEN_LIFETIME_S)
        except (ValueError, AttributeError, TypeError):
            token, lifetime = None, 0.0
        if not token or not isinstance(token, str) or lifetime <= 0:
            raise RegistryError(f"token service of registry {self.access.host} gave no "
                                "usable token", registry=self.access.host)
        return _Token(token, time.monotonic() + lifetime - min(10.0, lifetime / 4))

    def _request(self, method: str, path: str, repository: str, actions: str,
                 **kw: Any) -> requests.Response:
        """One request in `repository`'s scope (its body streamed: read it with _read, or
        close it); a Bearer token the registry no longer takes (expired, revoked) is replaced
        once when the request can be sent again. Only the registry's own URLs get the
        Authorization header."""
        scope = f"repository:{repository}:{actions}"
        url = self._url(path) if path.startswith("/") else path
        headers = kw.pop("headers", {})
        auth = self._authorization(scope) if self._own(url) else {}
        response = self._send(method, url, headers={**headers, **auth}, **kw)
        data = kw.get("data")
        seekable = hasattr(data, "seek")
        replayable = data is None or isinstance(data, bytes) or seekable
        if response.status_code == 401 and replayable and auth and \
                self._challenge()[0] == "bearer" and "insufficient_scope" not in \
                response.headers.get("WWW-Authenticate", ""):
            if seekable:
                cast(IO[bytes], data).seek(0)
            self._discard(response)
            response = self._send(method, url, headers={
                **headers, **self._authorization(scope, fresh=True)}, **kw)
        if response.status_code in (401, 403):
            raise self._refused(response, scope)
        return response

    def _fail(self, response: requests.Response, what: str, *, service: str = ""
              ) -> RegistryError:
        """An unexpected answer: its status and the spec's error codes it names, nothing
        else of its body (a registry's words do not become ours)."""
        status = response.status_code
        try:
            codes = oci_error_codes(self._read(response, MAX_ERROR_BYTES, "an error"))
        except (ContentTooLarge, RegistryUnreachable):
            codes = []
        named = f" ({', '.join(codes)})" if codes else ""
        return RegistryError(f"{service}registry {self.access.host}: {what} failed with HTTP "
                             f"{status}{named}", registry=self.access.host)

    def _location(self, response: requests.Response, default: str = "") -> str:
        """Where an upload goes on: the registry's own URL, never another host's."""
        location = urljoin(self._url("/"), response.headers.get("Location", default))
        if not self._own(location):
            raise RegistryError(f"registry {self.access.host} sent an upload location on "
                                f"another host ({_printable(origin(location))}); the helper "
                                "uploads only to the registry itself", registry=self.access.host)
        return location

    # -- API ---------------------------------------------------------------------------------
    def get_manifest(self, ref: ImageReference,
                     accept: tuple[str, ...] = MANIFEST_TYPES) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of the manifest that `ref` names."""
        response = self._request("GET", f"/v2/{ref.repository}/manifests/{ref.reference}",
                                 ref.repository, "pull", headers={"Accept": ", ".join(accept)})
        if response.status_code == 404:
            self._discard(response)
            raise ImageNotFound(f"image {ref} is not in registry {ref.host}", image=str(ref))
        if response.status_code != 200:
            raise self._fail(response, f"GET manifest {ref}")
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        body = self._read(response, MAX_MANIFEST_BYTES, f"the manifest of {ref}")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if ref.digest and ref.digest != digest:
            raise RegistryError(f"registry {ref.host} served a manifest for {ref} whose digest "
                                f"is {digest}", registry=ref.host)
        return body, media_type, digest

    def has_blob(self, repository: str, digest: str) -> bool:
        response = self._request("HEAD", f"/v2/{repository}/blobs/{digest}", repository, "pull")
        if response.status_code in (200, 404):
            self._discard(response)
            return response.status_code == 200
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
        self._discard(start)
        location = self._location(start)
        joiner = "&" if "?" in location else "?"
        done = self._request("PUT", f"{location}{joiner}digest={digest}", repository,
                             "pull,push", data=data,
                             headers={"Content-Type": "application/octet-stream",
                                      "Content-Length": str(size)})
        if done.status_code not in (201, 204):
            raise self._fail(done, f"uploading blob {digest} to {repository}")
        self._discard(done)

    def open_blob(self, repository: str, digest: str, *, max_bytes: int) -> requests.Response:
        """A streamed GET of a blob; the caller reads it (at most `max_bytes`) and checks the
        digest. A length announced beyond `max_bytes` is refused before anything is read."""
        if not _DIGEST.fullmatch(digest):
            raise RegistryError(f"{_printable(digest)!r} is not a sha256 digest; no blob of "
                                f"{self.access.host} is fetched by it", registry=self.access.host)
        response = self._request("GET", f"/v2/{repository}/blobs/{digest}", repository, "pull")
        if response.status_code == 404:
            self._discard(response)
            raise ImageNotFound(f"blob {digest} is not in {self.access.host}/{repository}",
                                image=f"{self.access.host}/{repository}")
        if response.status_code != 200:
            raise self._fail(response, f"GET blob {digest}")
        announced = response.headers.get("Content-Length", "")
        if announced.isdigit() and int(announced) > max_bytes:
            response.close()
            raise ContentTooLarge(
                f"blob {digest} of {self.access.host}/{repository} has {announced} bytes, more "
                f"than the {max_bytes} it may have", limit_bytes=max_bytes,
                registry=self.access.host)
        return response

    def download_blob(self, repository: str, digest: str, dest: Path, *, max_bytes: int) -> int:
        """Stream a blob into `dest`, verifying its digest; returns its size. More than
        `max_bytes` is cut off and refused (ContentTooLarge), and nothing stays at `dest`."""
        response = self.open_blob(repository, digest, max_bytes=max_bytes)
        hasher = hashlib.sha256()
        size = 0
        try:
            with response, open(dest, "wb") as out:
                for chunk in response.iter_content(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise ContentTooLarge(
                            f"blob {digest} of {self.access.host}/{repository} is larger than "
                            f"the {max_bytes} bytes it may have; the download was cut off",
                            limit_bytes=max_bytes, registry=self.access.host)
                    hasher.update(chunk)
                    out.write(chunk)
            if "sha256:" + hasher.hexdigest() != digest:
                raise RegistryError(f"blob {digest} from registry {self.access.host} does not "
                                    "match its digest", registry=self.access.host)
        except requests.RequestException as exc:
            dest.unlink(missing_ok=True)
            raise RegistryUnreachable(f"registry {self.access.host}: downloading blob {digest} "
                                      f"failed: {type(exc).__name__}",
                                      registry=self.access.host) from exc
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        return size

    def get_blob(self, repository: str, digest: str, *, max_bytes: int) -> bytes:
        """A small blob (a config) in memory, at most `max_bytes`, checked against its
        digest."""
        response = self.open_blob(repository, digest, max_bytes=max_bytes)
        body = self._read(response, max_bytes, f"blob {digest}")
        if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
            raise RegistryError(f"blob {digest} from registry {self.access.host} does not "
                                "match its digest", registry=self.access.host)
        return body

    def upload_stream(self, repository: str, chunks: Iterator[bytes]) -> tuple[str, int]:
        """Upload a blob whose size and digest are known only at its end: one streamed PATCH
        (chunked transfer encoding), then the closing PUT with the digest."""
        self.authenticate(repository, "pull,push")
        start = self._request("POST", f"/v2/{repository}/blobs/uploads/", repository,
                              "pull,push", headers={"Content-Length": "0"})
        if start.status_code not in (201, 202) or "Location" not in start.headers:
            raise self._fail(start, f"starting an upload to {repository}")
        self._discard(start)
        hasher = hashlib.sha256()
        size = 0

        def counted() -> Iterator[bytes]:
            nonlocal size
            for chunk in chunks:
                hasher.update(chunk)
                size += len(chunk)
                yield chunk

        location = self._location(start)
        sent = self._request("PATCH", location, repository, "pull,push", data=counted(),
                             headers={"Content-Type": "application/octet-stream"})
        if sent.status_code not in (202, 204):
            raise self._fail(sent, f"streaming a blob to {repository}")
        self._discard(sent)
        digest = "sha256:" + hasher.hexdigest()
        location = self._location(sent, location)
        joiner = "&" if "?" in location else "?"
        done = self._request("PUT", f"{location}{joiner}digest={digest}", repository,
                             "pull,push", headers={"Content-Length": "0"})
        if done.status_code not in (201, 204):
            raise self._fail(done, f"closing the upload of {digest} to {repository}")
        self._discard(done)
        return digest, size

    def tags(self, repository: str) -> list[str]:
        response = self._request("GET", f"/v2/{repository}/tags/list", repository, "pull")
        if response.status_code == 404:
            self._discard(response)
            return []
        if response.status_code != 200:
            raise self._fail(response, f"listing the tags of {repository}")
        try:
            tags = json.loads(self._read(response, MAX_TAGS_BYTES,
                                         f"the tags of {repository}")).get("tags")
        except (ValueError, AttributeError) as exc:
            raise RegistryError(f"registry {self.access.host} listed the tags of {repository} "
                                "in a form that is not the distribution API's",
                                registry=self.access.host) from exc
        return sorted(str(t) for t in tags or [])

    def delete_manifest(self, repository: str, digest: str) -> bool:
        response = self._request("DELETE", f"/v2/{repository}/manifests/{digest}", repository,
                                 "pull,push,delete")
        if response.status_code in (200, 202, 404):
            self._discard(response)
            return response.status_code != 404
        raise self._fail(response, f"deleting {repository}@{digest}")

    def put_manifest(self, ref: ImageReference, body: bytes, media_type: str) -> str:
        response = self._request("PUT", f"/v2/{ref.repository}/manifests/{ref.reference}",
                                 ref.repository, "pull,push", data=body,
                                 headers={"Content-Type": media_type})
        if response.status_code not in (200, 201):
            raise self._fail(response, f"PUT manifest {ref}")
        ours = "sha256:" + hashlib.sha256(body).hexdigest()
        said = response.headers.get("Docker-Content-Digest", "")
        self._discard(response)
        return said if _DIGEST.fullmatch(said) else ours

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
